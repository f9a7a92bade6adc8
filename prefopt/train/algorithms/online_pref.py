"""Online and iterative preference optimization on the single loop.

- ``online_dpo``: every step, two samples per prompt from the current policy, labelled by the
  reward (higher wins) or a pairwise judge, trained with any pairwise loss against the initial
  policy as reference.
- ``iterative_dpo``: rounds of {sample n per prompt → best vs worst by the reward → train the
  pairwise loss for ``steps_per_round`` steps → reference := the policy at the end of the round}.
  The reference log-probs of a round's pairs are computed once, by the policy at the round's
  start, so no reference copy is kept.
- ``raft``: the same rounds with SFT on each prompt's best sample (reward-ranked fine-tuning).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs, collate_sequences
from prefopt.errors import StopTraining, TrainingError
from prefopt.models.logprobs import token_logps
from prefopt.models.lora import reference_pass
from prefopt.rollout.scorers import Judge
from prefopt.train.algorithms.base import Algorithm, StepLoss
from prefopt.train.algorithms.online import Experience, Sampled, _mean, learner_throughput
from prefopt.train.algorithms.preference import pair_logps
from prefopt.train.sampler import EpochSampler
from prefopt.train.state_io import fields_of
from prefopt.types import PreferenceBatch, SequenceBatch


def _response(sampled: Sampled, row: int) -> list[int]:
    r = sampled.rollout
    return r.response_ids[row][r.response_mask[row]].tolist()


def _split(items: list, parts: int) -> list[list]:
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def _sample_metrics(sampled: Sampled, rewards: list[float] | None, components: dict | None) -> dict[str, float]:
    mask = sampled.rollout.response_mask
    m = {"rollout/response_length": float(mask.sum(-1).float().mean()),
         "rollout/truncated_frac": float(sampled.rollout.truncated.float().mean()),
         "rollout/samples": float(len(sampled.responses))}
    if rewards is not None:
        m["reward"] = _mean(rewards)
        m.update({f"reward/{k}": _mean(v) for k, v in (components or {}).items()})
    return m


class _PairwiseLossMixin:
    """Pairwise-loss forward shared by online and iterative DPO."""

    loss_fn: Callable
    beta: float
    hparams: dict
    pad_id: int
    # perf.*: the pair's prompt computed once, pairs packed without padding (exact, see pair_logps)
    prefix_sharing: bool = True
    padding_free: bool = True

    def _pair_logps(self, model, batch: PreferenceBatch):
        return pair_logps(model, batch, self.pad_id, prefix_sharing=self.prefix_sharing,
                          padding_free=self.padding_free)

    def _pair_loss(self, model, batch: PreferenceBatch, ref_chosen, ref_rejected) -> StepLoss:
        pc, pr, lc, lr = self._pair_logps(model, batch)
        out = self.loss_fn(pc, pr, ref_chosen, ref_rejected, beta=self.beta, chosen_lengths=lc,
                           rejected_lengths=lr, **self.hparams)
        tokens = int(batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum())
        return StepLoss(out.losses.sum(), {k: float(v) for k, v in out.metrics.items()}, tokens)


class OnlineDPO(_PairwiseLossMixin, Algorithm):
    """Two fresh samples per prompt → a pair labelled by the reward or the judge → pairwise loss."""

    name = "online_dpo"

    def __init__(self, experience: Experience, *, loss_fn: Callable, beta: float, hparams: dict,
                 reference=None, judge: Judge | None = None, prompts_per_step: int = 16, max_resample: int = 4,
                 prefix_sharing: bool = True, padding_free: bool = True):
        if reference is None and not getattr(loss_fn, "reference_free", False):
            raise ValueError("this loss needs a reference model")
        self.exp, self.loss_fn, self.beta, self.hparams = experience, loss_fn, beta, hparams
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free
        self.reference, self.judge = reference, judge
        self.pad_id = experience.pad_id
        self.prompts_per_step, self.max_resample = prompts_per_step, max_resample
        self.counts: dict[str, float] = {}
        self.metrics: dict[str, float] = {}
        self.steps_done = 0
        self._learn = {"tokens": 0, "t0": 0.0}

    def _label(self, sampled: Sampled) -> tuple[list[tuple[int, int]], dict]:
        """(chosen row, rejected row) per prompt whose two samples can be ordered."""
        n_prompts = len(sampled.prompts)
        pairs, m = [], {}
        rewards = comps = None
        if self.exp.reward is not None:
            out = self.exp.score(sampled)
            rewards, comps = out.total, out.components
        if self.judge is not None:
            probs, failed = self.judge([sampled.prompts[p] for p in range(n_prompts)],
                                       [sampled.responses[2 * p] for p in range(n_prompts)],
                                       [sampled.responses[2 * p + 1] for p in range(n_prompts)])
            self.counts["judge/errors"] = self.counts.get("judge/errors", 0) + failed
            for p, prob in enumerate(probs):
                a, b = 2 * p, 2 * p + 1
                if math.isnan(prob) or prob == 0.5 or sampled.responses[a] == sampled.responses[b]:
                    continue
                pairs.append((a, b) if prob > 0.5 else (b, a))
            m["judge/confidence"] = _mean([max(p, 1 - p) for p in probs if not math.isnan(p)])
        else:
            for p in range(n_prompts):
                a, b = 2 * p, 2 * p + 1
                if rewards[a] == rewards[b]:
                    continue
                pairs.append((a, b) if rewards[a] > rewards[b] else (b, a))
        m.update(_sample_metrics(sampled, rewards, comps))
        if rewards is not None and pairs:
            m["rewards/gold_margin"] = _mean([rewards[c] - rewards[r] for c, r in pairs])
        m["pairs/ties_frac"] = 1.0 - len(pairs) / max(1, n_prompts)
        return pairs, m

    def next_batches(self, model, num_micro: int) -> list[PreferenceBatch]:
        for attempt in range(self.max_resample + 1):
            sampled = self.exp.sample(model, self.exp.next_prompts(self.prompts_per_step), 2)
            pairs, m = self._label(sampled)
            if pairs:
                break
            self.counts["rollout/skipped_batches"] = self.counts.get("rollout/skipped_batches", 0) + 1
        else:
            message = (f"{self.max_resample + 1} rollout batches in a row had no orderable pair (both samples of "
                       "every prompt scored the same)")
            if self.steps_done:  # converged on this reward: finish cleanly
                raise StopTraining(message)
            raise TrainingError(message + "; raise rollout.temperature or check the reward / judge")
        self.steps_done += 1
        self.metrics = m
        rows = [EncodedPair(sampled.rollout.prompt_ids[c], _response(sampled, c), _response(sampled, r), i)
                for i, (c, r) in enumerate(pairs)]
        batches = []
        for part in _split(rows, num_micro):
            batch = collate_pairs(part, self.pad_id)
            if self.reference is not None:
                with torch.no_grad(), reference_pass(self.reference) as reference:
                    reference.eval()
                    rc, rr, _, _ = self._pair_logps(reference, batch)
                batch.ref_chosen_logps, batch.ref_rejected_logps = rc, rr
            batches.append(batch)
        self._learn = {"tokens": 0, "t0": time.perf_counter()}
        return batches

    def compute_loss(self, model, batch: PreferenceBatch) -> StepLoss:
        out = self._pair_loss(model, batch, batch.ref_chosen_logps, batch.ref_rejected_logps)
        self._learn["tokens"] += out.tokens
        return out

    def step_metrics(self) -> dict[str, float]:
        m = {**self.metrics, **self.exp.pop_metrics(), **self.counts}
        m.update(learner_throughput(self._learn))
        return m

    def evaluate(self, model) -> dict[str, float]:
        return self.exp.evaluate(model)

    def state_dict(self) -> dict:
        return {"experience": self.exp.state_dict(), "counts": dict(self.counts), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])
        self.counts = dict(state["counts"])
        self.steps_done = int(state.get("steps_done", 0))


class _Rounds(Algorithm):
    """Rounds of {sample ``num_generations`` per prompt for ``round_prompts`` prompts → a dataset →
    ``steps_per_round`` optimizer steps on it}. Subclasses make the dataset and the loss."""

    def __init__(self, experience: Experience, *, num_generations: int, round_prompts: int, steps_per_round: int,
                 batch_size: int, seed: int = 0):
        self.exp, self.k = experience, num_generations
        self.round_prompts, self.steps_per_round, self.batch_size = round_prompts, steps_per_round, batch_size
        self.pad_id, self.seed = experience.pad_id, seed
        self.round, self.round_step = 0, 0
        self.rows: list | None = None
        self.sampler: EpochSampler | None = None
        self.round_metrics: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self._learn = {"tokens": 0, "t0": 0.0}

    def _make_rows(self, model, sampled: Sampled, rewards: list[float]) -> list:
        raise NotImplementedError

    def _new_round(self, model) -> None:
        sampled = self.exp.sample(model, self.exp.next_prompts(self.round_prompts), self.k)
        out = self.exp.score(sampled)
        rows = self._make_rows(model, sampled, out.total)
        if not rows:
            raise TrainingError(f"round {self.round + 1}: no usable samples (every sample of every prompt got the "
                                "same reward); raise rollout.temperature or online.num_generations")
        self.round += 1
        self.round_step = 0
        self.rows = rows
        self.sampler = EpochSampler(len(rows), self.seed * 1009 + self.round, shuffle=True)
        self.round_metrics = {**_sample_metrics(sampled, out.total, out.components), "round": float(self.round),
                              "round/rows": float(len(rows))}

    def next_batches(self, model, num_micro: int) -> list:
        if self.rows is None or self.round_step >= self.steps_per_round:
            self._new_round(model)
        self.round_step += 1
        batches = [self._collate([self.rows[i] for i in self.sampler.take(self.batch_size)]) for _ in range(num_micro)]
        self._learn = {"tokens": 0, "t0": time.perf_counter()}
        return batches

    def _collate(self, rows: list):
        raise NotImplementedError

    def _row_state(self, row):
        """A row as a plain tree for the checkpoint (rows made of lists and numbers are already)."""
        return row

    def _row_from_state(self, saved):
        return saved

    def step_metrics(self) -> dict[str, float]:
        m = {**self.round_metrics, **self.exp.pop_metrics(), **self.counts}
        self.round_metrics = {k: v for k, v in self.round_metrics.items() if k in ("round", "round/rows")}
        m.update(learner_throughput(self._learn))
        return m

    def evaluate(self, model) -> dict[str, float]:
        return self.exp.evaluate(model)

    def state_dict(self) -> dict:
        return {"experience": self.exp.state_dict(), "round": self.round, "round_step": self.round_step,
                "rows": None if self.rows is None else [self._row_state(r) for r in self.rows],
                "sampler": self.sampler.state_dict() if self.sampler else None,
                "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])
        self.round, self.round_step = int(state["round"]), int(state["round_step"])
        self.rows = None if state["rows"] is None else [self._row_from_state(r) for r in state["rows"]]
        self.counts = dict(state["counts"])
        self.sampler = None
        if self.rows is not None:
            self.sampler = EpochSampler(len(self.rows), self.seed * 1009 + self.round, shuffle=True)
            self.sampler.load_state_dict(state["sampler"])


def _best_worst(rewards: list[float], k: int) -> list[tuple[int, int, int]]:
    """(prompt, best row, worst row) for every prompt whose k samples do not all tie."""
    out = []
    for p in range(len(rewards) // k):
        rows = list(range(p * k, p * k + k))
        best = max(rows, key=lambda i: rewards[i])
        worst = min(rows, key=lambda i: rewards[i])
        if rewards[best] > rewards[worst]:
            out.append((p, best, worst))
    return out


class IterativeDPO(_PairwiseLossMixin, _Rounds):
    """Iterative DPO: best vs worst of n samples per prompt, reference := policy at the round's start."""

    name = "iterative_dpo"

    def __init__(self, experience: Experience, *, loss_fn: Callable, beta: float, hparams: dict,
                 judge: Judge | None = None, prefix_sharing: bool = True, padding_free: bool = True, **kw):
        super().__init__(experience, **kw)
        self.loss_fn, self.beta, self.hparams, self.judge = loss_fn, beta, hparams, judge
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free
        self.reference_free = getattr(loss_fn, "reference_free", False)

    def _make_rows(self, model, sampled: Sampled, rewards: list[float]) -> list[tuple[EncodedPair, float, float]]:
        chosen_rejected = _best_worst(rewards, self.k)
        if self.judge is not None:  # the judge decides which of the two extremes wins
            probs, failed = self.judge([sampled.prompts[p] for p, _, _ in chosen_rejected],
                                       [sampled.responses[b] for _, b, _ in chosen_rejected],
                                       [sampled.responses[w] for _, _, w in chosen_rejected])
            self.counts["judge/errors"] = self.counts.get("judge/errors", 0) + failed
            chosen_rejected = [(p, b, w) if prob > 0.5 else (p, w, b)
                               for (p, b, w), prob in zip(chosen_rejected, probs) if not math.isnan(prob) and prob != 0.5]
        pairs = [EncodedPair(sampled.rollout.prompt_ids[b], _response(sampled, b), _response(sampled, w), i)
                 for i, (_, b, w) in enumerate(chosen_rejected)]
        refs = [(0.0, 0.0)] * len(pairs)
        if pairs and not self.reference_free:  # reference := the policy now (the previous round's result)
            refs = []
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for part in _split(pairs, math.ceil(len(pairs) / max(1, self.batch_size))):
                    c, r, _, _ = self._pair_logps(model, collate_pairs(part, self.pad_id))
                    refs.extend(zip(c.tolist(), r.tolist()))
            model.train(was_training)
        gaps = [rewards[b] - rewards[w] for _, b, w in chosen_rejected]
        self.counts["round/reward_margin"] = _mean(gaps) if gaps else 0.0
        return [(pair, rc, rr) for pair, (rc, rr) in zip(pairs, refs)]

    def _row_state(self, row: tuple[EncodedPair, float, float]) -> tuple:
        return (fields_of(row[0]), row[1], row[2])

    def _row_from_state(self, saved) -> tuple[EncodedPair, float, float]:
        return (EncodedPair(**saved[0]), saved[1], saved[2])

    def _collate(self, rows: list[tuple[EncodedPair, float, float]]) -> PreferenceBatch:
        refs = None
        if not self.reference_free:
            refs = (torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]))
        return collate_pairs([r[0] for r in rows], self.pad_id, refs)

    def compute_loss(self, model, batch: PreferenceBatch) -> StepLoss:
        out = self._pair_loss(model, batch, batch.ref_chosen_logps, batch.ref_rejected_logps)
        self._learn["tokens"] += out.tokens
        return out


class RAFT(_Rounds):
    """Reward-ranked fine-tuning: SFT (token-mean NLL) on each prompt's best of n samples.

    Prompts whose samples all got the same reward are skipped (and counted): they say nothing
    about which response is better."""

    name = "raft"

    def _make_rows(self, model, sampled: Sampled, rewards: list[float]) -> list[tuple[list[int], list[int]]]:
        rows, tied = [], 0
        for p in range(len(rewards) // self.k):
            group = range(p * self.k, p * self.k + self.k)
            best = max(group, key=lambda i: rewards[i])
            if all(rewards[i] == rewards[best] for i in group):
                tied += 1  # no ranking: with a pass/fail reward, "best" could be a wrong answer
                continue
            rows.append((sampled.rollout.prompt_ids[best], _response(sampled, best)))
        self.counts["round/tied_prompts_dropped"] = float(tied)
        self.counts["round/best_reward"] = _mean(
            [max(rewards[p * self.k:(p + 1) * self.k]) for p in range(len(rewards) // self.k)])
        return rows

    def _collate(self, rows) -> SequenceBatch:
        return collate_sequences(rows, self.pad_id)

    def units(self, batch: SequenceBatch) -> float:
        return float(batch.loss_mask[:, 1:].sum())

    def compute_loss(self, model, batch: SequenceBatch) -> StepLoss:
        logps, mask = token_logps(model, batch)
        nll = -logps.sum()
        tokens = int(batch.attention_mask.sum())
        self._learn["tokens"] += tokens
        return StepLoss(nll, {"sft/nll": float(nll.detach()) / max(1, int(mask.sum()))}, tokens)
