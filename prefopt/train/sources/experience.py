"""Prompt pool → samples of the *current* policy → rewards: what every online source draws on.

:class:`Experience` encodes prompts once, samples with derived seeds (resumable: the sampler
position and the number of sampling calls are its state), scores with the reward, and counts
generation cost. Rewards, judges and gold functions receive each prompt as given in the data
(``raw_prompts``: a string or a list of {role, content} messages), not the rendered text.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from prefopt.dist import current
from prefopt.errors import ConfigError
from prefopt.rollout.engine import SamplingConfig, generate
from prefopt.rollout.scorers import RewardOutput, WeightedReward
from prefopt.rollout.text import decode_responses, encode_prompts
from prefopt.seeding import ROLLOUT_CALL, ROLLOUT_EVAL, ROLLOUT_PROMPT, derive_seed
from prefopt.train.sampler import EpochSampler
from prefopt.types import Sampled


class Throughput:
    """Learner tokens/s of one step: started when a step's batches are made, fed by the loss."""

    def __init__(self):
        self.tokens, self.t0 = 0, 0.0

    def start(self) -> None:
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def metrics(self) -> dict[str, float]:
        dt = time.perf_counter() - self.t0
        return {"learner/tokens_per_s": self.tokens / dt} if dt > 0 and self.tokens else {}


class Experience:
    """Prompt pool → samples of the current policy → rewards.

    Prompts are encoded once; a prompt longer than ``max_prompt_length`` keeps its last tokens
    and is counted (``data/prompts_truncated``), an empty one is dropped and counted.
    ``raw_prompts`` / ``raw_eval_prompts``: the prompts as given (default: the texts), row by row.
    ``rollout_weights``: a :class:`prefopt.rollout.weights.LowPrecisionCopy` of the policy; sampling
    from the policy then samples from the copy, refreshed first.
    Evaluation lives in :mod:`prefopt.eval.online`; ``eval_*`` settings are kept here for it.
    """

    def __init__(self, prompts: list[str], eval_prompts: list[str], tokenizer, sampling: SamplingConfig,
                 reward: WeightedReward | None, *, max_prompt_length: int, seed: int = 0, task=None,
                 eval_num_samples: int = 2, eval_greedy: bool = False, reference=None,
                 raw_prompts: list[Any] | None = None, raw_eval_prompts: list[Any] | None = None,
                 rollout_weights=None):
        self.tokenizer, self.sampling, self.reward = tokenizer, sampling, reward
        self.rollout_weights = rollout_weights  # a LowPrecisionCopy of the policy to sample with (rollout.dtype)
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.seed, self.task, self.reference = seed, task, reference
        self.eval_num_samples, self.eval_greedy = eval_num_samples, eval_greedy
        self.prompts, self.prompt_ids, self.raw_prompts, self.stats = self._encode(
            prompts, raw_prompts, max_prompt_length, "data")
        if not self.prompts:
            raise ConfigError("online training needs at least one non-empty prompt")
        self.eval_prompts, self.eval_ids, self.raw_eval_prompts, eval_stats = self._encode(
            eval_prompts, raw_eval_prompts, max_prompt_length, "data/eval")
        self.stats.update(eval_stats)
        self.sampler = EpochSampler(len(self.prompts), seed, shuffle=True)
        self.calls = 0  # sampling calls so far: seeds every call differently, deterministically
        self.metrics: dict[str, float] = {}

    def _encode(self, prompts: list[str], raw: list[Any] | None, max_len: int, prefix: str):
        if raw is not None and len(raw) != len(prompts):
            raise ValueError(f"raw prompts: {len(raw)} given for {len(prompts)} prompts")
        raw = list(prompts) if raw is None else list(raw)
        ids, truncated = encode_prompts(self.tokenizer, prompts, max_len)
        keep = [i for i, x in enumerate(ids) if x]
        stats = {f"{prefix}/prompts": float(len(keep)), f"{prefix}/prompts_truncated": float(truncated),
                 f"{prefix}/prompts_empty_dropped": float(len(ids) - len(keep))}
        return [prompts[i] for i in keep], [ids[i] for i in keep], [raw[i] for i in keep], stats

    # ---------------------------------------------------------------- sampling and scoring
    def next_prompts(self, n: int) -> list[int]:
        return self.sampler.take(n)

    def _seeds(self, indices: list[int], eval_split: bool) -> list[int]:
        if eval_split:
            return [derive_seed(self.seed, ROLLOUT_EVAL, i) for i in indices]  # same samples every evaluation
        self.calls += 1
        # Keyed by the prompt's GLOBAL position in the call (every rank draws its share of one global
        # stream), so ranks sample differently and N ranks sample what 1 process does with N x the prompts.
        first = self.sampler.offset(len(indices))
        call = derive_seed(self.seed, ROLLOUT_CALL, self.calls)
        return [derive_seed(call, ROLLOUT_PROMPT, first + j) for j in range(len(indices))]

    def sample(self, model, indices: list[int], k: int, *, greedy: bool = False, eval_split: bool = False,
               prompt_ids: list[list[int]] | None = None) -> Sampled:
        """k samples for each prompt of ``indices``. ``prompt_ids`` overrides the encoded prompts
        (e.g. prompt + a forced prefix of an offline response, for dataset resets)."""
        texts = self.eval_prompts if eval_split else self.prompts
        raw = self.raw_eval_prompts if eval_split else self.raw_prompts
        ids = self.eval_ids if eval_split else self.prompt_ids
        cfg = dataclasses.replace(self.sampling, num_samples=k, **({"temperature": 0.0} if greedy else {}))
        seeds = self._seeds(indices, eval_split)
        t0 = time.perf_counter()
        if self.rollout_weights is not None and self.rollout_weights.serves(model):
            model = self.rollout_weights.refreshed()
        engine = current().generator or generate  # e.g. Ray rollout workers
        rollout = engine(model, prompt_ids if prompt_ids is not None else [ids[i] for i in indices], cfg,
                           pad_token_id=self.pad_id, eos_token_id=self.eos_id, tokenizer=self.tokenizer, seeds=seeds)
        seconds = time.perf_counter() - t0
        prompts, raws = [texts[i] for i in indices], [raw[i] for i in indices]
        groups = rollout.group.tolist()
        sampled = Sampled(rollout, prompts, [prompts[g] for g in groups], decode_responses(self.tokenizer, rollout),
                          seconds, list(indices), raws, [raws[g] for g in groups])
        if not eval_split:
            self._count("rollout/gen_seconds", seconds)
            self._count("rollout/gen_tokens", float(rollout.response_mask.sum()))
        return sampled

    def score(self, sampled: Sampled, responses: list[str] | None = None) -> RewardOutput:
        """Rewards of the samples (``responses`` overrides the decoded texts, e.g. prefix + completion)."""
        if self.reward is None:
            raise ConfigError("this algorithm needs a reward (online.reward) to score samples")
        out = self.reward(sampled.row_raw_prompts, sampled.responses if responses is None else responses,
                          sampled.group.tolist())
        self._count("reward/errors", float(out.errors))
        return out

    def _count(self, key: str, value: float) -> None:
        self.metrics[key] = self.metrics.get(key, 0.0) + value

    def pop_metrics(self) -> dict[str, float]:
        m, self.metrics = self.metrics, {}
        if m.get("rollout/gen_seconds", 0) > 0:
            m["rollout/gen_tokens_per_s"] = m["rollout/gen_tokens"] / m["rollout/gen_seconds"]
        return m

    def evaluate(self, model) -> dict[str, float]:
        from prefopt.eval.online import evaluate_experience  # eval/ sits below train/ in the layers
        return evaluate_experience(self, model)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.calls = int(state["calls"])


def mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
