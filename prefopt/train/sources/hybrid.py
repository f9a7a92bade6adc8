"""Sources of the hybrid offline+online family.

- :class:`FreshSampleSource` (``samples``): k fresh, unlabelled policy samples for each of a few
  prompts, with reference log-probs (HyPO's online reverse-KL term).
- :class:`MixtureSource`: an online source plus an offline one, a fraction ρ(t) of each step's
  examples drawn offline (``mix/offline_frac`` logged every step).
- :class:`DatasetReset`: a rollout draw for :class:`~prefopt.train.sources.policy_gradient.RolloutSource`
  that, with probability ``reset_prob``, starts from the prompt plus the first L tokens of an
  offline response, L ~ Uniform{1, ..., |y|-1} (DR-PO). The prefix becomes part of the prompt, so
  it carries no policy-gradient loss and no KL penalty; the reward scores prefix + completion.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from prefopt.errors import ConfigError
from prefopt.models.rollout_logps import batched_logps
from prefopt.rollout.scorers import RewardOutput
from prefopt.seeding import RESET_DRAW, derive_seed
from prefopt.train.recipe import Several, Source
from prefopt.train.sources.experience import Experience
from prefopt.train.sources.offline import DatasetSource
from prefopt.types import SampleBatch, Sampled


class FreshSampleSource(Source):
    """``prompts_per_step`` prompts × ``k`` samples of the current policy, no reward; micro-batches keep
    each prompt's samples together (the leave-one-out baseline needs them)."""

    kinds = ("samples",)

    def __init__(self, experience: Experience, *, reference, k: int, prompts_per_step: int,
                 prefix_sharing: bool = True, padding_free: bool = True):
        if reference is None:
            raise ConfigError("algo.reference: the online KL term needs a reference policy (copy, or lora with "
                              "lora.enabled)")
        self.exp, self.reference, self.k, self.prompts_per_step = experience, reference, k, prompts_per_step
        self.perf = dict(prefix_sharing=prefix_sharing, padding_free=padding_free)

    def next_batches(self, model, num_micro: int) -> list[dict]:
        sampled = self.exp.sample(model, self.exp.next_prompts(self.prompts_per_step), self.k)
        r = sampled.rollout
        ref = batched_logps(self.reference, r, self.exp.pad_id, self.exp.sampling.batch_size, **self.perf)
        out = []
        for prompts in torch.tensor_split(torch.arange(len(sampled.prompts)), min(num_micro, len(sampled.prompts))):
            rows = torch.isin(r.group, prompts).nonzero().squeeze(-1)
            out.append({"samples": SampleBatch([r.prompt_ids[i] for i in rows.tolist()], r.response_ids[rows],
                                               r.response_mask[rows], r.group[rows], ref[rows])})
        return out

    def step_metrics(self) -> dict[str, float]:
        return {f"hypo/{k}": v for k, v in self.exp.pop_metrics().items()}

    def state_dict(self) -> dict:
        return {"experience": self.exp.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])


class MixtureSource(Source):
    """Per step t: ρ = ``ratio(t)``; ``round(ρ·budget)`` examples from ``offline``, the rest of the
    ``budget`` as online prompts (``online.prompts_per_step`` is set each step; at ρ = 1 the online
    source is not called). Both kinds reach the micro-batches; a kind both sources make is given as
    :class:`~prefopt.train.recipe.Several` batches, so one term normalizes over both."""

    def __init__(self, online: Source, offline: DatasetSource, *, ratio: Callable[[int], float], budget: int):
        if not offline.rows:
            raise ConfigError("mix.path: the offline source of the mixture is empty")
        self.online, self.offline, self.ratio, self.budget = online, offline, ratio, budget
        self.kinds = tuple(dict.fromkeys(online.kinds + offline.kinds))
        self.step = 0
        self.metrics: dict[str, float] = {}

    def next_batches(self, model, num_micro: int) -> list[dict]:
        rho = float(self.ratio(self.step))
        n_off = int(round(rho * self.budget))
        self.step += 1
        online: list[dict] = []
        if self.budget - n_off > 0:
            self.online.prompts_per_step = self.budget - n_off
            online = self.online.next_batches(model, num_micro)
        rows = self.offline.sampler.take(n_off) if n_off else []
        parts = [p.tolist() for p in torch.tensor_split(torch.tensor(rows, dtype=torch.long), num_micro)] if rows else []
        out = [dict(b) for b in online] or [{} for _ in range(max(1, len([p for p in parts if p])))]
        for i, part in enumerate(p for p in parts if p):
            while len(out) <= i:
                out.append({})
            batch = self.offline.collate([self.offline.rows[j] for j in part])
            kind = self.offline.kind
            out[i][kind] = Several([out[i][kind], batch]) if kind in out[i] else batch
        self.metrics = {"mix/offline_frac": n_off / self.budget if self.budget else 0.0, "mix/rho": rho,
                        "mix/offline_examples": float(n_off)}
        return out

    def step_metrics(self) -> dict[str, float]:
        return {**self.online.step_metrics(), **self.metrics}

    def state_dict(self) -> dict:
        return {"online": self.online.state_dict(), "offline": self.offline.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.offline.load_state_dict(state["offline"])
        self.step = int(state["step"])


def reset_lengths(lengths: list[int], reset_prob: float, generator: torch.Generator) -> list[int]:
    """L_i per response: 0 (no reset) with probability 1 - reset_prob or when |y_i| < 2, else
    L_i ~ Uniform{1, ..., |y_i| - 1}. One uniform draw per response for the reset, one for L."""
    out = []
    for n in lengths:
        coin, pick = torch.rand(2, generator=generator).tolist()
        out.append(1 + int(pick * (n - 1)) if n >= 2 and coin < reset_prob else 0)
    return out


class DatasetReset:
    """A rollout draw (see :class:`~prefopt.train.sources.policy_gradient.Draw`) with dataset resets.

    ``responses[i]``: token ids of the offline response of prompt i of the experience's pool.
    ``max_prompt_tokens`` caps prompt + prefix (the model's room before generation)."""

    def __init__(self, experience: Experience, responses: list[list[int]], *, reset_prob: float, seed: int,
                 max_prompt_tokens: int):
        if len(responses) != len(experience.prompts):
            raise ConfigError(f"reset: {len(responses)} offline responses for {len(experience.prompts)} prompts")
        if not any(len(r) >= 2 for r in responses):
            raise ConfigError("data.path: dataset resets need rows with a response of >= 2 tokens "
                              "(a 'chosen' or 'completion' column); none has one")
        self.exp, self.responses, self.reset_prob = experience, responses, reset_prob
        self.seed, self.calls, self.max_prompt_tokens = seed, 0, max_prompt_tokens
        self.last: dict[str, float] = {}

    def __call__(self, model, n_prompts: int, k: int) -> tuple[Sampled, RewardOutput]:
        indices = self.exp.next_prompts(n_prompts)
        self.calls += 1
        gen = torch.Generator().manual_seed(derive_seed(self.seed, RESET_DRAW, self.calls))  # resumable: (seed, calls)
        skip = self.exp.sampler.offset(len(indices))  # draws of the ranks before this one (2 per response)
        if skip:
            torch.rand(2 * skip, generator=gen)
        prompts = [self.exp.prompt_ids[i] for i in indices]
        rooms = [max(0, self.max_prompt_tokens - len(p)) for p in prompts]
        lengths = reset_lengths([min(len(self.responses[i]), room + 1) for i, room in zip(indices, rooms)],
                                self.reset_prob, gen)
        prefixes = [self.responses[i][:L] for i, L in zip(indices, lengths)]
        sampled = self.exp.sample(model, indices, k, prompt_ids=[p + x for p, x in zip(prompts, prefixes)])
        r = sampled.rollout
        full = [self.exp.tokenizer.decode(prefixes[g] + r.response_ids[row][r.response_mask[row]].tolist(),
                                          skip_special_tokens=True) for row, g in enumerate(r.group.tolist())]
        self.last = {"reset/frac": sum(L > 0 for L in lengths) / max(1, len(lengths)),
                     "reset/prefix_tokens": sum(lengths) / max(1, len(lengths))}
        return sampled, self.exp.score(sampled, responses=full)

    def metrics(self) -> dict[str, float]:
        return dict(self.last)

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state.get("calls", 0))


def response_pool(rows: list[dict], column: str) -> tuple[list[Any], list[str]]:
    """(prompts, responses) of offline rows for resets: ``column`` 'chosen' / 'completion' / 'auto'.
    An empty response is kept: its prompt is never reset (a prefix needs >= 2 response tokens)."""
    prompts, responses = [], []
    for i, row in enumerate(rows):
        col = column if column != "auto" else ("completion" if "completion" in row else "chosen")
        value = row.get(col)
        if not isinstance(value, str):
            raise ConfigError(f"reset.column: row {i} has no '{col}' response to reset from "
                              f"(present: {', '.join(sorted(row))})")
        prompts.append(row["prompt"])
        responses.append(value)
    return prompts, responses
