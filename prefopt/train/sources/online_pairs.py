"""Online sources of labelled data: fresh pairs every step (online DPO) and rounds of sampled
datasets (iterative DPO, RAFT).

- :class:`OnlinePairSource`: two samples per prompt from the current policy, ordered by the reward
  (higher wins) or a pairwise judge; reference log-probs attached by a no-grad pass.
- :class:`RoundsSource`: rounds of {sample n per prompt for ``round_prompts`` prompts → a dataset
  (``make_rows``) → ``steps_per_round`` steps of batches from it}.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.errors import StopTraining, TrainingError
from prefopt.models.lora import reference_pass
from prefopt.rollout.scorers import Judge
from prefopt.seeding import ONLINE_PREF_ROUND, derive_seed
from prefopt.train.recipe import Source
from prefopt.train.sampler import EpochSampler
from prefopt.train.sources.experience import Experience, Throughput, mean
from prefopt.types import PreferenceBatch, Sampled


def response_ids(sampled: Sampled, row: int) -> list[int]:
    r = sampled.rollout
    return r.response_ids[row][r.response_mask[row]].tolist()


def split_even(items: list, parts: int) -> list[list]:
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def sample_metrics(sampled: Sampled, rewards: list[float] | None, components: dict | None) -> dict[str, float]:
    mask = sampled.rollout.response_mask
    m = {"rollout/response_length": float(mask.sum(-1).float().mean()),
         "rollout/truncated_frac": float(sampled.rollout.truncated.float().mean()),
         "rollout/samples": float(len(sampled.responses))}
    if rewards is not None:
        m["reward"] = mean(rewards)
        m.update({f"reward/{k}": mean(v) for k, v in (components or {}).items()})
    return m


def _judge_prompts(sampled: Sampled, prompts: list[int]) -> list[Any]:
    raw = sampled.raw_prompts or sampled.prompts
    return [raw[p] for p in prompts]


class OnlinePairSource(Source):
    """Two fresh samples per prompt → a pair labelled by the reward or the judge (``pairs`` batches).

    ``pair_logps(model, batch)`` gives the reference's summed log-probs for each batch."""

    kinds = ("pairs",)

    def __init__(self, experience: Experience, *, pair_logps: Callable, reference=None, judge: Judge | None = None,
                 prompts_per_step: int = 16, max_resample: int = 4):
        self.exp, self.pair_logps, self.reference, self.judge = experience, pair_logps, reference, judge
        self.pad_id = experience.pad_id
        self.prompts_per_step, self.max_resample = prompts_per_step, max_resample
        self.counts: dict[str, float] = {}
        self.metrics: dict[str, float] = {}
        self.steps_done = 0
        self.throughput = Throughput()

    def _count(self, key: str, value: float) -> None:
        self.counts[key] = self.counts.get(key, 0) + value

    def label(self, sampled: Sampled) -> tuple[list[tuple[int, int]], dict]:
        """(chosen row, rejected row) per prompt whose two samples can be ordered."""
        n_prompts = len(sampled.prompts)
        pairs, m = [], {}
        rewards = comps = None
        if self.exp.reward is not None:
            out = self.exp.score(sampled)
            rewards, comps = out.total, out.components
        if self.judge is not None:
            probs, failed = self.judge(_judge_prompts(sampled, list(range(n_prompts))),
                                       [sampled.responses[2 * p] for p in range(n_prompts)],
                                       [sampled.responses[2 * p + 1] for p in range(n_prompts)])
            self._count("judge/errors", failed)
            for p, prob in enumerate(probs):
                a, b = 2 * p, 2 * p + 1
                if math.isnan(prob) or prob == 0.5 or sampled.responses[a] == sampled.responses[b]:
                    continue
                pairs.append((a, b) if prob > 0.5 else (b, a))
            m["judge/confidence"] = mean([max(p, 1 - p) for p in probs if not math.isnan(p)])
        else:
            for p in range(n_prompts):
                a, b = 2 * p, 2 * p + 1
                if rewards[a] != rewards[b]:
                    pairs.append((a, b) if rewards[a] > rewards[b] else (b, a))
        m.update(sample_metrics(sampled, rewards, comps))
        if rewards is not None and pairs:
            m["rewards/gold_margin"] = mean([rewards[c] - rewards[r] for c, r in pairs])
        m["pairs/ties_frac"] = 1.0 - len(pairs) / max(1, n_prompts)
        return pairs, m

    def draw_pairs(self, model, n_prompts: int) -> list[EncodedPair]:
        """Labelled pairs from ``n_prompts`` fresh prompts (resampled when none can be ordered)."""
        for attempt in range(self.max_resample + 1):
            sampled = self.exp.sample(model, self.exp.next_prompts(n_prompts), 2)
            pairs, m = self.label(sampled)
            if pairs:
                break
            self._count("rollout/skipped_batches", 1)
        else:
            message = (f"{self.max_resample + 1} rollout batches in a row had no orderable pair (both samples of "
                       "every prompt scored the same)")
            if self.steps_done:  # converged on this reward: finish cleanly
                raise StopTraining(message)
            raise TrainingError(message + "; raise rollout.temperature or check the reward / judge")
        self.steps_done += 1
        self.metrics = m
        return [EncodedPair(sampled.rollout.prompt_ids[c], response_ids(sampled, c), response_ids(sampled, r), i)
                for i, (c, r) in enumerate(pairs)]

    def with_reference(self, batch: PreferenceBatch) -> PreferenceBatch:
        if self.reference is not None:
            with torch.no_grad(), reference_pass(self.reference) as reference:
                reference.eval()
                rc, rr, _, _ = self.pair_logps(reference, batch)
            batch.ref_chosen_logps, batch.ref_rejected_logps = rc, rr
        return batch

    def next_batches(self, model, num_micro: int) -> list[dict]:
        rows = self.draw_pairs(model, self.prompts_per_step)
        batches = [{"pairs": self.with_reference(collate_pairs(part, self.pad_id))}
                   for part in split_even(rows, num_micro)]
        self.throughput.start()
        return batches

    def step_metrics(self) -> dict[str, float]:
        m = {**self.metrics, **self.exp.pop_metrics(), **self.counts}
        m.update(self.throughput.metrics())
        return m

    def state_dict(self) -> dict:
        return {"experience": self.exp.state_dict(), "counts": dict(self.counts), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])
        self.counts = dict(state["counts"])
        self.steps_done = int(state.get("steps_done", 0))


class RoundsSource(Source):
    """Rounds of {sample ``num_generations`` per prompt for ``round_prompts`` prompts → rows via
    ``make_rows(model, sampled, rewards, counts)`` → ``steps_per_round`` steps of ``batch_size`` rows}.

    ``collate(rows)`` makes a batch of ``kind``; ``to_plain`` / ``from_plain`` convert a row to and
    from a plain tree (lists, numbers) for checkpoints."""

    def __init__(self, experience: Experience, *, kind: str, make_rows: Callable, collate: Callable,
                 to_plain: Callable, from_plain: Callable, num_generations: int, round_prompts: int,
                 steps_per_round: int, batch_size: int, seed: int = 0):
        self.exp, self.k, self.kind, self.kinds = experience, num_generations, kind, (kind,)
        self.make_rows, self.collate, self.to_plain, self.from_plain = make_rows, collate, to_plain, from_plain
        self.round_prompts, self.steps_per_round, self.batch_size = round_prompts, steps_per_round, batch_size
        self.seed = seed
        self.round, self.round_step = 0, 0
        self.rows: list | None = None
        self.sampler: EpochSampler | None = None
        self.round_metrics: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.throughput = Throughput()

    def _new_round(self, model) -> None:
        sampled = self.exp.sample(model, self.exp.next_prompts(self.round_prompts), self.k)
        out = self.exp.score(sampled) if self.exp.reward is not None else None  # a judge may label alone
        rows = self.make_rows(model, sampled, out.total if out else None, self.counts)
        if not rows:
            raise TrainingError(f"round {self.round + 1}: no usable samples (every sample of every prompt got the "
                                "same reward or preference); raise rollout.temperature or online.num_generations")
        self.round += 1
        self.round_step = 0
        self.rows = rows
        self.sampler = _round_sampler(len(rows), derive_seed(self.seed, ONLINE_PREF_ROUND, self.round))
        self.round_metrics = {**sample_metrics(sampled, out.total if out else None, out.components if out else None),
                              "round": float(self.round),
                              "round/rows": float(len(rows))}

    def next_batches(self, model, num_micro: int) -> list[dict]:
        if self.rows is None or self.round_step >= self.steps_per_round:
            self._new_round(model)
        self.round_step += 1
        batches = [{self.kind: self.collate([self.rows[i] for i in self.sampler.take(self.batch_size)])}
                   for _ in range(num_micro)]
        self.throughput.start()
        return batches

    def step_metrics(self) -> dict[str, float]:
        m = {**self.round_metrics, **self.exp.pop_metrics(), **self.counts}
        self.round_metrics = {k: v for k, v in self.round_metrics.items() if k in ("round", "round/rows")}
        m.update(self.throughput.metrics())
        return m

    def state_dict(self) -> dict:
        return {"experience": self.exp.state_dict(), "round": self.round, "round_step": self.round_step,
                "rows": None if self.rows is None else [self.to_plain(r) for r in self.rows],
                "sampler": self.sampler.state_dict() if self.sampler else None, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])
        self.round, self.round_step = int(state["round"]), int(state["round_step"])
        self.rows = None if state["rows"] is None else [self.from_plain(r) for r in state["rows"]]
        self.counts = dict(state["counts"])
        self.sampler = None
        if self.rows is not None:
            self.sampler = _round_sampler(len(self.rows), derive_seed(self.seed, ONLINE_PREF_ROUND, self.round))
            self.sampler.load_state_dict(state["sampler"])


def _round_sampler(n: int, seed: int) -> EpochSampler:
    """A round's rows come from this rank's own prompts: its order is not sharded again."""
    return EpochSampler(n, seed, shuffle=True, rank=0, world_size=1)
