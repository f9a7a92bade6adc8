"""Online RL on the single loop: each algorithm is an experience source plus a loss.

:class:`Experience` turns prompts into scored samples of the *current* policy (the loop hands the
model to ``next_batches``, so sampling sees every update). :class:`PolicyGradient` is the
policy-gradient family; its members differ only in settings (:data:`ALGORITHM_DEFAULTS`):

- ``rloo``: leave-one-out baseline over the k samples of a prompt, KL in the reward;
- ``grpo``: group-normalized advantages, clipped ratio, β·KL(k3) as a loss term;
  ``dr_grpo``: no std normalization, constant-length token sum; ``dapo``: clip-higher,
  token-level mean, dynamic sampling (groups whose samples all scored the same are dropped);
- ``remax``: the reward of the prompt's greedy response is the baseline;
- ``reinforce_pp``: returns-to-go of per-token rewards whitened over the whole batch;
- ``ppo``: value head, GAE, clipped policy and value losses, adaptive KL, several epochs.

Every step logs reward (and each component), advantage mean/std, KL, entropy, clip fraction,
approx KL, value loss and explained variance (PPO), response length, truncated fraction,
generation and learner tokens/s.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from prefopt.errors import ConfigError, StopTraining, TrainingError
from prefopt.losses.reductions import aggregate_loss, masked_mean, masked_sum, step_normalizer
from prefopt.losses.rl import (AdaptiveKLController, explained_variance, gae, group_index, grpo_advantages,
                               is_all_equal_group, kl_estimate, ppo_policy_loss, reinforce_pp_advantages,
                               remax_advantages, rloo_advantages, value_loss, whiten)
from prefopt.models.lora import reference_pass
from prefopt.models.prefix import grouped_response_logps, supports_packing
from prefopt.models.value import get_value_head, response_forward
from prefopt.rollout.engine import SamplingConfig, generate
from prefopt.rollout.scorers import RewardOutput, WeightedReward
from prefopt.rollout.text import decode_responses, encode_prompts
from prefopt.train.algorithms.base import Algorithm, StepLoss
from prefopt.train.sampler import EpochSampler
from prefopt.train.state_io import fields_of
from prefopt.types import Rollout

# --------------------------------------------------------------------------------------- settings

ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "rloo": dict(estimator="rloo", num_generations=4, kl_coef=0.05, kl_in_reward=True),
    "grpo": dict(estimator="grpo", num_generations=4, kl_coef=0.04, kl_in_reward=False,
                 loss_aggregation="seq_mean_token_mean"),
    "dr_grpo": dict(estimator="grpo", num_generations=4, kl_coef=0.0, kl_in_reward=False,
                    loss_aggregation="seq_mean_token_sum", normalize_std=False),
    "dapo": dict(estimator="grpo", num_generations=4, kl_coef=0.0, kl_in_reward=False, clip_high=0.28,
                 dynamic_sampling=True),
    "remax": dict(estimator="remax", num_generations=1, kl_coef=0.05, kl_in_reward=True),
    "reinforce_pp": dict(estimator="reinforce_pp", num_generations=4, kl_coef=0.05, kl_in_reward=True),
    "ppo": dict(estimator="gae", num_generations=1, kl_coef=0.05, kl_in_reward=True, whiten_advantages=True,
                recompute_logprobs=True, value_head=True),
}
PG_ALGORITHMS = tuple(ALGORITHM_DEFAULTS)


def learner_throughput(learn: dict) -> dict[str, float]:
    """``learner/tokens_per_s`` from a {"tokens", "t0"} record started when the step's batches were made."""
    dt = time.perf_counter() - learn["t0"]
    return {"learner/tokens_per_s": learn["tokens"] / dt} if dt > 0 and learn["tokens"] else {}


@dataclass
class PGSettings:
    """Every knob of :class:`PolicyGradient`, resolved (no ``None``)."""

    estimator: str = "rloo"
    num_generations: int = 4
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_in_reward: bool = True
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_aggregation: str = "token_mean"
    normalize_std: bool = True
    dynamic_sampling: bool = False
    max_resample: int = 4
    whiten_advantages: bool = False
    recompute_logprobs: bool = False
    value_head: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    vf_clip: float | None = 0.2
    prompts_per_step: int = 16
    epochs: int = 1
    minibatches: int = 1


def resolve_settings(name: str, online) -> PGSettings:
    """Merge an ``OnlineConfig`` over the defaults of algorithm ``name``; check combinations."""
    if name not in ALGORITHM_DEFAULTS:
        raise ConfigError(f"algo.name: '{name}' is not a policy-gradient algorithm ({', '.join(PG_ALGORITHMS)})")
    d = dict(ALGORITHM_DEFAULTS[name])
    for key in ("num_generations", "kl_coef", "kl_in_reward", "loss_aggregation", "normalize_std",
                "dynamic_sampling", "whiten_advantages", "recompute_logprobs", "clip_high"):
        value = getattr(online, key)
        if value is not None:
            d[key] = value
    d.setdefault("clip_high", online.clip_low)
    kl_in_reward = d.get("kl_in_reward", True)
    estimator = online.kl_estimator or ("k1" if kl_in_reward else "k3")
    s = PGSettings(
        estimator=d["estimator"], num_generations=int(d["num_generations"]), kl_coef=float(d["kl_coef"]),
        kl_estimator=estimator, kl_in_reward=bool(kl_in_reward), kl_target=online.kl_target,
        kl_horizon=online.kl_horizon, clip_low=online.clip_low, clip_high=float(d["clip_high"]),
        loss_aggregation=d.get("loss_aggregation", "token_mean"), normalize_std=d.get("normalize_std", True),
        dynamic_sampling=d.get("dynamic_sampling", False), max_resample=online.max_resample,
        whiten_advantages=d.get("whiten_advantages", d["estimator"] in ("gae",)),
        recompute_logprobs=d.get("recompute_logprobs", False), value_head=d.get("value_head", False),
        gamma=online.gamma, lam=online.lam, vf_coef=online.vf_coef, vf_clip=online.vf_clip,
        prompts_per_step=online.prompts_per_step, epochs=online.epochs, minibatches=online.minibatches)
    if s.estimator in ("rloo", "grpo") and s.num_generations < 2:
        raise ConfigError(f"online.num_generations: {name} compares the samples of a prompt, it needs >= 2 "
                          f"(got {s.num_generations})")
    if s.dynamic_sampling and s.estimator not in ("rloo", "grpo"):
        raise ConfigError(f"online.dynamic_sampling: only for group estimators (rloo, grpo family), not {name}")
    if s.kl_target is not None and s.kl_coef <= 0:
        raise ConfigError("online.kl_target: the adaptive KL controller needs online.kl_coef > 0 to start from")
    if s.minibatches > s.prompts_per_step * s.num_generations:
        raise ConfigError(f"online.minibatches ({s.minibatches}) exceeds the rollout batch "
                          f"({s.prompts_per_step} prompts x {s.num_generations} samples)")
    return s


# --------------------------------------------------------------------------------------- experience


@dataclass
class Sampled:
    """Responses of the current policy to some prompts, with their texts and cost."""

    rollout: Rollout
    prompts: list[str]  # P prompt texts
    row_prompts: list[str]  # N prompt texts (row i answers row_prompts[i])
    responses: list[str]  # N response texts
    seconds: float
    indices: list[int] = dataclasses.field(default_factory=list)  # P positions in the prompt pool

    @property
    def group(self) -> torch.Tensor:
        return self.rollout.group


def _pad_cols(x: torch.Tensor, L: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, L - x.shape[1]), value=value) if x.shape[1] < L else x


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts row-wise (responses re-padded, group ids offset to stay distinct)."""
    if len(parts) == 1:
        return parts[0]
    L = max(p.response_ids.shape[1] for p in parts)
    groups, offset = [], 0
    for p in parts:
        groups.append(p.group + offset)
        offset += int(p.group.max()) + 1 if len(p) else 0
    return Rollout(
        prompt_ids=[ids for p in parts for ids in p.prompt_ids],
        response_ids=torch.cat([_pad_cols(p.response_ids, L, pad_id) for p in parts]),
        response_mask=torch.cat([_pad_cols(p.response_mask, L, False) for p in parts]),
        logprobs=torch.cat([_pad_cols(p.logprobs, L, 0.0) for p in parts]),
        group=torch.cat(groups), truncated=torch.cat([p.truncated for p in parts]))


def select_rows(r: Rollout, rows: torch.Tensor) -> Rollout:
    idx = rows.tolist()
    return Rollout([r.prompt_ids[i] for i in idx], r.response_ids[rows], r.response_mask[rows],
                   r.logprobs[rows], r.group[rows], r.truncated[rows])


def model_context(model) -> int | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Experience:
    """Prompt pool → samples of the current policy → rewards, plus the shared evaluation.

    Prompts are encoded once; a prompt longer than ``max_prompt_length`` keeps its last tokens
    and is counted (``data/prompts_truncated``), an empty one is dropped and counted.
    """

    def __init__(self, prompts: list[str], eval_prompts: list[str], tokenizer, sampling: SamplingConfig,
                 reward: WeightedReward | None, *, max_prompt_length: int, seed: int = 0, task=None,
                 eval_num_samples: int = 2, eval_greedy: bool = False, reference=None):
        self.tokenizer, self.sampling, self.reward = tokenizer, sampling, reward
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.seed, self.task, self.reference = seed, task, reference
        self.eval_num_samples, self.eval_greedy = eval_num_samples, eval_greedy
        self.prompts, self.prompt_ids, self.stats = self._encode(prompts, max_prompt_length, "data")
        if not self.prompts:
            raise ConfigError("online training needs at least one non-empty prompt")
        self.eval_prompts, self.eval_ids, eval_stats = self._encode(eval_prompts, max_prompt_length, "data/eval")
        self.stats.update(eval_stats)
        self.sampler = EpochSampler(len(self.prompts), seed, shuffle=True)
        self.calls = 0  # sampling calls so far: seeds every call differently, deterministically
        self.metrics: dict[str, float] = {}

    def _encode(self, prompts: list[str], max_len: int, prefix: str):
        ids, truncated = encode_prompts(self.tokenizer, prompts, max_len)
        keep = [i for i, x in enumerate(ids) if x]
        stats = {f"{prefix}/prompts": float(len(keep)), f"{prefix}/prompts_truncated": float(truncated),
                 f"{prefix}/prompts_empty_dropped": float(len(ids) - len(keep))}
        return [prompts[i] for i in keep], [ids[i] for i in keep], stats

    # ---------------------------------------------------------------- sampling and scoring
    def next_prompts(self, n: int) -> list[int]:
        return self.sampler.take(n)

    def sample(self, model, indices: list[int], k: int, *, greedy: bool = False,
               eval_split: bool = False) -> Sampled:
        texts = self.eval_prompts if eval_split else self.prompts
        ids = self.eval_ids if eval_split else self.prompt_ids
        cfg = dataclasses.replace(self.sampling, num_samples=k, **({"temperature": 0.0} if greedy else {}))
        if eval_split:
            seeds = [self.seed * 7919 + 104729 + i for i in indices]  # same samples every evaluation
        else:
            self.calls += 1
            seeds = [(self.seed * 1_000_003 + self.calls) * 100_003 + j for j in range(len(indices))]
        t0 = time.perf_counter()
        rollout = generate(model, [ids[i] for i in indices], cfg, pad_token_id=self.pad_id,
                           eos_token_id=self.eos_id, tokenizer=self.tokenizer, seeds=seeds)
        seconds = time.perf_counter() - t0
        prompts = [texts[i] for i in indices]
        sampled = Sampled(rollout, prompts, [prompts[g] for g in rollout.group.tolist()],
                          decode_responses(self.tokenizer, rollout), seconds, list(indices))
        if not eval_split:
            self._count("rollout/gen_seconds", seconds)
            self._count("rollout/gen_tokens", float(rollout.response_mask.sum()))
        return sampled

    def score(self, sampled: Sampled) -> RewardOutput:
        if self.reward is None:
            raise ConfigError("this algorithm needs a reward (online.reward) to score samples")
        out = self.reward(sampled.row_prompts, sampled.responses, sampled.group.tolist())
        self._count("reward/errors", float(out.errors))
        return out

    def _count(self, key: str, value: float) -> None:
        self.metrics[key] = self.metrics.get(key, 0.0) + value

    def pop_metrics(self) -> dict[str, float]:
        m, self.metrics = self.metrics, {}
        if m.get("rollout/gen_seconds", 0) > 0:
            m["rollout/gen_tokens_per_s"] = m["rollout/gen_tokens"] / m["rollout/gen_seconds"]
        return m

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Held-out prompts: mean reward and components, gold objectives of the lab task, KL to the
        reference (nats per sequence, Monte-Carlo over the samples; only when sampling is untempered,
        i.e. temperature 1 without top-k/top-p), length; with ``eval_greedy`` the same for greedy
        responses under ``greedy/``."""
        if not self.eval_prompts:
            return {}
        idx = list(range(len(self.eval_prompts)))
        out = self._eval_samples(model, self.sample(model, idx, self.eval_num_samples, eval_split=True), "")
        if self.eval_greedy:
            out.update(self._eval_samples(model, self.sample(model, idx, 1, greedy=True, eval_split=True),
                                          "greedy/", kl=False))
        model.train()
        return out

    def _eval_samples(self, model, s: Sampled, prefix: str, kl: bool = True) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.reward is not None:
            r = self.reward(s.row_prompts, s.responses, s.group.tolist())
            out[prefix + "reward"] = _mean(r.total)
            out.update({f"{prefix}reward/{k}": _mean(v) for k, v in r.components.items()})
        if self.task is not None:
            gold = self.task.gold(s.row_prompts, s.responses)
            out.update({f"{prefix}gold/{k}": _mean(v) for k, v in gold.items()})
            out.update(_pass_at_k(gold, s.group, self.task.pass_fail, prefix))
        mask = s.rollout.response_mask
        out[prefix + "response_length"] = float(mask.sum(-1).float().mean())
        untempered = self.sampling.temperature == 1.0 and self.sampling.top_k == 0 and self.sampling.top_p == 1.0
        if kl and self.reference is not None and untempered:  # samples of π itself: unbiased Monte-Carlo KL
            ref = batched_logps(self.reference, s.rollout, self.pad_id, self.sampling.batch_size)
            pol = s.rollout.logprobs
            out[prefix + "kl_to_ref"] = float(masked_sum(pol - ref, mask, dim=-1).mean())
        return out

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.calls = int(state["calls"])


def _pass_at_k(gold: dict[str, list[float]], group: torch.Tensor, names, prefix: str) -> dict[str, float]:
    """``gold/<name>/pass@k`` for the pass/fail (0/1) objectives ``names``: the share of prompts with
    at least one of their k samples scoring 1 (only when there are k > 1 samples per prompt)."""
    if not len(group) or not names:
        return {}
    index, sizes = group_index(group)
    k = int(sizes.max())
    if k < 2:
        return {}
    out = {}
    for name in names:
        v = torch.tensor(gold[name], dtype=torch.float32)
        best = torch.zeros(int(index.max()) + 1).scatter_reduce(0, index, v, "amax", include_self=False)
        out[f"{prefix}gold/{name}/pass@{k}"] = float(best.mean())
    return out


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


@torch.no_grad()
def batched_logps(model, rollout: Rollout, pad_id: int, batch_size: int = 64, values: bool = False, *,
                  prefix_sharing: bool = True, padding_free: bool = True):
    """Teacher-forced per-token log-probs (N, L) of a rollout (and values (N, L) when asked).

    ``model`` may be a reference (a LoRA-disabled one included). Without values, the rows of a
    prompt share one copy of it and rows are packed (``perf.*``, exact), as in the training pass.
    """
    logps, vals = [], []
    with reference_pass(model) as net:
        was_training = net.training
        net.eval()
        packed = not values and (prefix_sharing or padding_free) and supports_packing(net)
        try:
            for s in range(0, len(rollout), batch_size):
                e = min(len(rollout), s + batch_size)
                args = (net, rollout.prompt_ids[s:e], rollout.response_ids[s:e], rollout.response_mask[s:e], pad_id)
                if packed:
                    out = grouped_response_logps(*args, prefix_sharing=prefix_sharing, padding_free=padding_free)
                else:
                    out = response_forward(*args, values=values)
                logps.append(out["logps"].float().cpu())
                if values:
                    vals.append(out["values"].float().cpu())
        finally:
            net.train(was_training)
    return (torch.cat(logps), torch.cat(vals)) if values else torch.cat(logps)


# --------------------------------------------------------------------------------------- policy gradient


@dataclass
class PGBatch:
    """One micro-batch of experience, in rollout layout (B rows, L response positions)."""

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L) bool
    old_logps: torch.Tensor  # (B, L) behaviour log-probs
    advantages: torch.Tensor  # (B, L)
    ref_logps: torch.Tensor | None = None  # (B, L), when KL is a loss term
    returns: torch.Tensor | None = None  # (B, L), PPO
    old_values: torch.Tensor | None = None  # (B, L), PPO

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    def rows(self, idx: torch.Tensor) -> "PGBatch":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        L = max(1, int(self.mask[idx].sum(-1).max())) if len(idx) else 1
        cut = lambda t: None if t is None else t[:, :L]  # noqa: E731
        return PGBatch([self.prompt_ids[i] for i in idx.tolist()], cut(pick(self.response_ids)),
                       cut(pick(self.mask)), cut(pick(self.old_logps)), cut(pick(self.advantages)),
                       cut(pick(self.ref_logps)), cut(pick(self.returns)), cut(pick(self.old_values)))


class PolicyGradient(Algorithm):
    """The policy-gradient family (rloo, grpo, dr_grpo, dapo, remax, reinforce_pp, ppo).

    One rollout batch (``prompts_per_step`` prompts × k samples) serves ``epochs × minibatches``
    optimizer steps; each step's mini-batch is split into the loop's ``grad_accum`` micro-batches.
    Per-token loss: clipped surrogate on the advantages (+ β·KL when KL is a loss term, + vf_coef ·
    clipped value loss for PPO), reduced with ``loss_aggregation`` over the whole step.
    """

    def __init__(self, name: str, settings: PGSettings, experience: Experience, *, reference=None,
                 max_new_tokens: int, seed: int = 0, prefix_sharing: bool = True, padding_free: bool = True):
        self.name, self.s, self.exp = name, settings, experience
        # perf.*: the k samples of a prompt share one copy of it in the training forward, rows packed
        # without padding (exact; prefopt.models.prefix.grouped_response_logps)
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free
        self.reference = reference if settings.kl_coef > 0 else None
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.kl_ctl = (AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
                       if settings.kl_target is not None else None)
        self.kl_coef = settings.kl_coef
        self.buffer: PGBatch | None = None
        self.schedule: list[torch.Tensor] = []  # remaining mini-batches (row indices) of the buffer
        self.rollouts = 0
        self.buffer_metrics: dict[str, float] = {}
        self.step_counts: dict[str, float] = {}
        self._learn = {"tokens": 0, "t0": 0.0}
        self._value_head = None

    @property
    def _perf(self) -> dict:
        return {"prefix_sharing": self.prefix_sharing, "padding_free": self.padding_free}

    # ---------------------------------------------------------------- experience
    def next_batches(self, model, num_micro: int) -> list[PGBatch]:
        fresh = False
        if not self.schedule:
            self._new_buffer(model)
            fresh = True
        rows = self.schedule.pop(0)
        self.buffer_metrics["rollout/fresh"] = float(fresh)
        micro = [self.buffer.rows(part) for part in torch.tensor_split(rows, min(num_micro, len(rows)))]
        self._learn = {"tokens": 0, "t0": time.perf_counter()}
        return micro

    def _new_buffer(self, model) -> None:
        s = self.s
        skipped, dropped = 0, 0
        kept: list[tuple[Sampled, RewardOutput, torch.Tensor | None]] = []
        groups_kept = 0
        for attempt in range(s.max_resample + 1):
            sampled = self.exp.sample(model, self.exp.next_prompts(s.prompts_per_step), s.num_generations)
            scores = self.exp.score(sampled)
            rewards = torch.tensor(scores.total, dtype=torch.float32)
            baseline = self._greedy_baseline(model, sampled) if s.estimator == "remax" else None
            if s.dynamic_sampling:
                informative = ~is_all_equal_group(rewards, sampled.group)
                n_groups = int(torch.unique(sampled.group).numel())
                useful = int(torch.unique(sampled.group[informative]).numel())
                dropped += n_groups - useful
                if useful:
                    kept.append(self._subset(sampled, scores, informative, baseline))
                    groups_kept += useful
                if groups_kept >= s.prompts_per_step:
                    break
                continue
            if self._all_zero(rewards, sampled.group, baseline):
                skipped += 1
                continue
            kept.append((sampled, scores, baseline))
            break
        self.step_counts["rollout/skipped_batches"] = self.step_counts.get("rollout/skipped_batches", 0) + skipped
        if s.dynamic_sampling:
            self.step_counts["rollout/dropped_groups"] = self.step_counts.get("rollout/dropped_groups", 0) + dropped
        if not kept:
            message = (f"{s.max_resample + 1} rollout batches in a row had only zero advantages (every sample of "
                       "a prompt got the same reward), so there is nothing to learn from")
            if self.rollouts:  # the policy has converged on this reward: finish (evaluate, save) cleanly
                raise StopTraining(message + f" after {self.rollouts} rollout batches")
            raise TrainingError(message + "; raise rollout.temperature or online.num_generations, or check the "
                                "reward (online.reward)")
        self._build(model, kept)

    def _subset(self, sampled: Sampled, scores: RewardOutput, keep: torch.Tensor, baseline):
        rows = keep.nonzero().squeeze(-1)
        idx = rows.tolist()
        sub = Sampled(select_rows(sampled.rollout, rows), sampled.prompts, [sampled.row_prompts[i] for i in idx],
                      [sampled.responses[i] for i in idx], sampled.seconds, sampled.indices)
        sc = RewardOutput([scores.total[i] for i in idx], {k: [v[i] for i in idx] for k, v in scores.components.items()},
                          scores.errors)
        return sub, sc, None if baseline is None else baseline[rows]

    def _all_zero(self, rewards: torch.Tensor, group: torch.Tensor, baseline) -> bool:
        """True when the reward carries no signal for this estimator (KL terms aside)."""
        e = self.s.estimator
        if e in ("rloo", "grpo"):
            return bool(is_all_equal_group(rewards, group).all())
        if e == "remax":
            return bool((rewards == baseline).all())
        if e == "reinforce_pp":  # global whitening: no signal when every reward is equal and there is no KL
            return bool((rewards == rewards[0]).all()) and not (self.kl_coef > 0 and self.s.kl_in_reward)
        return False  # ppo: the critic's error is signal too

    def _greedy_baseline(self, model, sampled: Sampled) -> torch.Tensor:
        """ReMax: reward of each prompt's greedy response, per row."""
        greedy = self.exp.sample(model, sampled.indices, 1, greedy=True)
        r = torch.tensor(self.exp.score(greedy).total, dtype=torch.float32)
        self.buffer_metrics["reward/greedy_baseline"] = float(r.mean())
        return r[sampled.group]

    @torch.no_grad()
    def _build(self, model, kept) -> None:
        """Log-probs, values, KL and advantages of the kept samples → the buffer and its schedule."""
        s = self.s
        rollout = cat_rollouts([k[0].rollout for k in kept], self.exp.pad_id)
        totals = [x for k in kept for x in k[1].total]
        components: dict[str, list[float]] = {}
        for k in kept:
            for name, v in k[1].components.items():
                components.setdefault(name, []).extend(v)
        baseline = torch.cat([k[2] for k in kept]) if s.estimator == "remax" else None
        mask = rollout.response_mask
        R = torch.tensor(totals, dtype=torch.float32)
        bs = self.exp.sampling.batch_size
        old_values = None
        if s.value_head:
            old_logps, old_values = batched_logps(model, rollout, self.exp.pad_id, bs, values=True)
        elif s.recompute_logprobs:
            old_logps = batched_logps(model, rollout, self.exp.pad_id, bs, **self._perf)
        else:
            old_logps = rollout.logprobs
        m: dict[str, float] = {}
        if s.recompute_logprobs or s.value_head:
            m["rollout/logprob_mismatch"] = float(masked_mean((old_logps - rollout.logprobs).abs(), mask))
        ref_logps, kl_tok = None, torch.zeros_like(old_logps)
        if self.reference is not None:
            ref_logps = batched_logps(self.reference, rollout, self.exp.pad_id, bs, **self._perf)
            seq_kl = masked_sum(old_logps - ref_logps, mask, dim=-1)
            m["kl"] = float(seq_kl.mean())
            if s.kl_in_reward:
                kl_tok = torch.where(mask, kl_estimate(old_logps, ref_logps, s.kl_estimator), 0.0)
        beta = self.kl_coef if s.kl_in_reward else 0.0
        last = (mask.sum(-1) - 1).clamp(min=0)
        token_rewards = -beta * kl_tok
        token_rewards[torch.arange(len(R)), last] += R
        returns = None
        if s.estimator in ("rloo", "grpo", "remax"):
            R_eff = R - beta * kl_tok.sum(-1)
            if s.estimator == "rloo":
                adv = rloo_advantages(R_eff, rollout.group)
            elif s.estimator == "grpo":
                adv = grpo_advantages(R_eff, rollout.group, normalize_std=s.normalize_std)
            else:
                adv = remax_advantages(R_eff, baseline)
            adv = torch.where(mask, adv.unsqueeze(-1).expand_as(old_logps), 0.0)
            if s.whiten_advantages:
                adv = whiten(adv, mask)
        elif s.estimator == "reinforce_pp":
            adv = reinforce_pp_advantages(token_rewards, mask, s.gamma)
        else:  # gae
            adv, returns = gae(token_rewards, old_values, mask, s.gamma, s.lam)
            if s.whiten_advantages:
                adv = whiten(adv, mask)
            m["value/explained_variance"] = float(explained_variance(old_values, returns, mask))
            m["value/mean"] = float(masked_mean(old_values, mask))
            m["value/returns_mean"] = float(masked_mean(returns, mask))
        self.buffer = PGBatch(rollout.prompt_ids, rollout.response_ids, mask, old_logps, adv,
                              ref_logps if not s.kl_in_reward else None, returns, old_values)
        # metrics of this rollout batch
        lengths = mask.sum(-1).float()
        m.update({"reward": float(R.mean()), "reward/std": float(R.std()) if len(R) > 1 else 0.0,
                  "adv/mean": float(masked_mean(adv, mask)),
                  "adv/std": float(masked_mean((adv - masked_mean(adv, mask)) ** 2, mask).sqrt()),
                  "rollout/response_length": float(lengths.mean()),
                  "rollout/truncated_frac": float(rollout.truncated.float().mean()),
                  "rollout/samples": float(len(R)), "kl/coef": float(self.kl_coef)})
        if s.estimator in ("rloo", "grpo"):  # groups whose samples all scored the same carry no signal
            equal = is_all_equal_group(R, rollout.group)
            first = torch.ones_like(equal)
            first[1:] = rollout.group[1:] != rollout.group[:-1]
            m["rollout/all_equal_groups_frac"] = float(equal[first].float().mean())
        if s.kl_in_reward and self.reference is not None:
            m["reward/with_kl"] = float(token_rewards.sum(-1).mean())
        m.update({f"reward/{k}": _mean(v) for k, v in components.items()})
        if "reward/greedy_baseline" in self.buffer_metrics:
            m["reward/greedy_baseline"] = self.buffer_metrics["reward/greedy_baseline"]
        self.buffer_metrics = m
        if self.kl_ctl is not None and "kl" in m:
            self.kl_coef = self.kl_ctl.update(m["kl"], len(R))
        # schedule: epochs × minibatches, shuffled per epoch (deterministic)
        self.rollouts += 1
        n = len(R)
        gen = torch.Generator().manual_seed(self.seed * 7_368_787 + self.rollouts)
        self.schedule = []
        for epoch in range(s.epochs):
            order = torch.randperm(n, generator=gen) if (s.epochs > 1 or s.minibatches > 1) else torch.arange(n)
            self.schedule.extend(p for p in torch.tensor_split(order, s.minibatches) if len(p))

    # ---------------------------------------------------------------- loss
    def units(self, batch: PGBatch) -> float:
        return float(step_normalizer(batch.mask, self.s.loss_aggregation, max_len=self.max_new_tokens))

    def compute_loss(self, model, batch: PGBatch) -> StepLoss:
        s = self.s
        if not s.value_head and (self.prefix_sharing or self.padding_free) and supports_packing(model):
            out = grouped_response_logps(model, batch.prompt_ids, batch.response_ids, batch.mask, self.exp.pad_id,
                                         entropy=True, prefix_sharing=self.prefix_sharing,
                                         padding_free=self.padding_free)
        else:
            out = response_forward(model, batch.prompt_ids, batch.response_ids, batch.mask, self.exp.pad_id,
                                   values=s.value_head, entropy=True)
        device = out["logps"].device
        mask = batch.mask.to(device)
        logp = out["logps"]
        pg = ppo_policy_loss(logp, batch.old_logps.to(device), batch.advantages.to(device), mask,
                             s.clip_low, s.clip_high)
        tok_loss = pg.losses
        metrics = {"clipfrac": float(pg.metrics["clipfrac"]), "approx_kl": float(pg.metrics["approx_kl"]),
                   "entropy": float(masked_mean(out["entropy"], mask)),
                   "policy/loss": float(masked_mean(pg.losses.detach(), mask))}
        if batch.ref_logps is not None and self.kl_coef > 0:
            kl = torch.where(mask, kl_estimate(logp, batch.ref_logps.to(device), s.kl_estimator), 0.0)
            tok_loss = tok_loss + self.kl_coef * kl
            metrics["kl_loss"] = float(masked_mean(kl.detach(), mask))
        if s.value_head:
            vl = value_loss(out["values"], batch.old_values.to(device), batch.returns.to(device), mask, s.vf_clip)
            tok_loss = tok_loss + s.vf_coef * vl.losses
            metrics["value/loss"] = float(masked_mean(vl.losses.detach(), mask))
            metrics["value/clipfrac"] = float(vl.metrics["vf_clipfrac"])
        loss = aggregate_loss(tok_loss, mask, s.loss_aggregation, normalizer=1.0)
        tokens = int(mask.sum()) + sum(len(p) for p in batch.prompt_ids)
        self._learn["tokens"] += tokens
        return StepLoss(loss, metrics, tokens)

    def step_metrics(self) -> dict[str, float]:
        m = dict(self.buffer_metrics)
        m.update(self.exp.pop_metrics())
        m.update(self.step_counts)
        m.update(learner_throughput(self._learn))
        return m

    def evaluate(self, model) -> dict[str, float]:
        return self.exp.evaluate(model)

    # ---------------------------------------------------------------- state
    def attach(self, model) -> None:
        """Remember the policy's value head (PPO) so it is checkpointed with the algorithm."""
        self._value_head = get_value_head(model)

    def state_dict(self) -> dict:
        state = {"experience": self.exp.state_dict(), "rollouts": self.rollouts, "kl_coef": self.kl_coef,
                 "step_counts": dict(self.step_counts), "schedule": list(self.schedule),
                 "buffer": None if self.buffer is None else fields_of(self.buffer),
                 "buffer_metrics": dict(self.buffer_metrics)}
        if self.kl_ctl is not None:
            state["kl_ctl"] = self.kl_ctl.state_dict()
        if self._value_head is not None:
            # references, not copies: the loop snapshots this every step (a separate critic is a whole model)
            state["value_head"] = self._value_head.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])
        self.rollouts, self.kl_coef = int(state["rollouts"]), float(state["kl_coef"])
        self.step_counts = dict(state["step_counts"])
        self.buffer = None if state["buffer"] is None else PGBatch(**state["buffer"])
        self.schedule = list(state["schedule"])
        self.buffer_metrics = dict(state["buffer_metrics"])
        if self.kl_ctl is not None and "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
        if self._value_head is not None and "value_head" in state:
            self._value_head.load_state_dict(state["value_head"])
