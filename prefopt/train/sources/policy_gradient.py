"""The policy-gradient experience source: prompts → k samples each → rewards → log-probs, values,
KL and advantages → a rollout buffer served as ``epochs × minibatches`` optimizer steps.

How rollouts are drawn is a hook (:class:`Draw`): plain prompts by default, or dataset resets
(:class:`prefopt.train.sources.reset.DatasetReset`), whose forced prefix is part of the prompt
so it carries no policy-gradient loss and no KL penalty.
"""
from __future__ import annotations

import torch

from prefopt.dist import current
from prefopt.errors import StopTraining, TrainingError
from prefopt.losses.reductions import masked_mean, masked_sum
from prefopt.losses.rl import (SEQUENCE_ESTIMATORS, AdaptiveKLController, explained_variance,
                               get_advantage_estimator, is_all_equal_group, kl_estimate, whiten)
from prefopt.models.rollout_logps import batched_logps
from prefopt.rollout.ops import cat_rollouts, select_rows
from prefopt.rollout.scorers import RewardOutput
from prefopt.seeding import PPO_MINIBATCHES, derive_seed
from prefopt.train.pg_settings import PGSettings
from prefopt.train.recipe import Source
from prefopt.train.sources.experience import Experience, Throughput, mean
from prefopt.types import PGBatch, Sampled


class Draw:
    """Draws k samples for n prompts and scores them: the plain (no reset) rollout."""

    def __init__(self, experience: Experience):
        self.exp = experience

    def __call__(self, model, n_prompts: int, k: int) -> tuple[Sampled, RewardOutput]:
        sampled = self.exp.sample(model, self.exp.next_prompts(n_prompts), k)
        return sampled, self.exp.score(sampled)

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class RolloutSource(Source):
    """Policy-gradient experience (rloo, grpo, dr_grpo, dapo, remax, reinforce_pp, ppo; drpo).

    One rollout batch (``prompts_per_step`` prompts × k samples) serves ``epochs × minibatches``
    optimizer steps; each step's mini-batch is split into the loop's micro-batches.
    ``prompts_per_step`` may be changed between steps (a mixture does, per its schedule).
    """

    kinds = ("rollout",)

    def __init__(self, settings: PGSettings, experience: Experience, *, reference=None, seed: int = 0,
                 prefix_sharing: bool = True, padding_free: bool = True, draw: Draw | None = None):
        self.s, self.exp = settings, experience
        self.prompts_per_step = settings.prompts_per_step
        self.perf = {"prefix_sharing": prefix_sharing, "padding_free": padding_free}
        self.reference = reference if settings.kl_coef > 0 else None
        self.seed = seed
        self.draw = draw or Draw(experience)
        self.kl_ctl = (AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
                       if settings.kl_target is not None else None)
        self.kl_coef = settings.kl_coef
        self.buffer: PGBatch | None = None
        self.schedule: list[torch.Tensor] = []  # remaining mini-batches (row indices) of the buffer
        self.rollouts = 0
        self.buffer_metrics: dict[str, float] = {}
        self.step_counts: dict[str, float] = {}
        self.throughput = Throughput()

    # ---------------------------------------------------------------- batches
    def next_batches(self, model, num_micro: int) -> list[dict]:
        fresh = False
        if not self.schedule:
            self._new_buffer(model)
            fresh = True
        rows = self.schedule.pop(0)
        self.buffer_metrics["rollout/fresh"] = float(fresh)
        micro = [{"rollout": self.buffer.rows(part)} for part in torch.tensor_split(rows, min(num_micro, len(rows)))]
        self.throughput.start()
        return micro

    def _count(self, key: str, value: float) -> None:
        self.step_counts[key] = self.step_counts.get(key, 0) + value

    def _new_buffer(self, model) -> None:
        error, kept = None, []
        try:
            kept = self._draw_kept(model)
        except Exception as exc:  # the buffer's global statistics below are collectives: agree first
            error = exc
        current().check_all(error)
        self._build(model, kept)

    def _draw_kept(self, model) -> list:
        s = self.s
        skipped, dropped, groups_kept = 0, 0, 0
        kept: list[tuple[Sampled, RewardOutput, torch.Tensor | None]] = []
        for attempt in range(s.max_resample + 1):
            sampled, scores = self.draw(model, self.prompts_per_step, s.num_generations)
            rewards = torch.tensor(scores.total, dtype=torch.float32)
            baseline = self._greedy_baseline(model, sampled) if s.estimator == "remax" else None
            if s.dynamic_sampling:
                informative = ~is_all_equal_group(rewards, sampled.group)
                n_groups = int(torch.unique(sampled.group).numel())
                useful = int(torch.unique(sampled.group[informative]).numel())
                dropped += n_groups - useful
                if useful:
                    kept.append(_subset(sampled, scores, informative, baseline))
                    groups_kept += useful
                if groups_kept >= self.prompts_per_step:
                    break
                continue
            if self._all_zero(rewards, sampled.group, baseline):
                skipped += 1
                continue
            kept.append((sampled, scores, baseline))
            break
        self._count("rollout/skipped_batches", skipped)
        if s.dynamic_sampling:
            self._count("rollout/dropped_groups", dropped)
        if not kept:
            message = (f"{s.max_resample + 1} rollout batches in a row had only zero advantages (every sample of "
                       "a prompt got the same reward), so there is nothing to learn from")
            if self.rollouts:  # the policy has converged on this reward: finish (evaluate, save) cleanly
                raise StopTraining(message + f" after {self.rollouts} rollout batches")
            raise TrainingError(message + "; raise rollout.temperature or online.num_generations, or check the "
                                "reward (online.reward)")
        return kept

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

    # ---------------------------------------------------------------- the buffer
    @torch.no_grad()
    def _build(self, model, kept) -> None:
        """Log-probs, values, KL and advantages of the kept samples → the buffer and its schedule."""
        s = self.s
        rollout = cat_rollouts([k[0].rollout for k in kept], self.exp.pad_id)
        R = torch.tensor([x for k in kept for x in k[1].total], dtype=torch.float32)
        baseline = torch.cat([k[2] for k in kept]) if s.estimator == "remax" else None
        mask = rollout.response_mask
        old_logps, old_values, ref_logps, kl_tok, m = self._logps(model, rollout)
        beta = self.kl_coef if s.kl_in_reward else 0.0
        last = (mask.sum(-1) - 1).clamp(min=0)
        token_rewards = -beta * kl_tok
        token_rewards[torch.arange(len(R)), last] += R
        seq_rewards = R - beta * kl_tok.sum(-1) if s.estimator in SEQUENCE_ESTIMATORS else R
        rt = current()
        total = rt.all_reduce if rt.distributed else None  # batch-wide statistics are global-batch ones
        adv, returns = get_advantage_estimator(s.estimator)(
            rewards=seq_rewards, token_rewards=token_rewards, mask=mask, group=rollout.group, values=old_values,
            baseline=baseline, gamma=s.gamma, lam=s.lam, normalize_std=s.normalize_std, total=total)
        if s.whiten_advantages:
            adv = whiten(adv, mask, total=total)
        if returns is not None:
            m["value/explained_variance"] = float(explained_variance(old_values, returns, mask))
            m["value/mean"] = float(masked_mean(old_values, mask))
            m["value/returns_mean"] = float(masked_mean(returns, mask))
        self.buffer = PGBatch(rollout.prompt_ids, rollout.response_ids, mask, old_logps, adv,
                              ref_logps if not s.kl_in_reward else None, returns, old_values)
        m.update(self._rollout_metrics(rollout, R, adv, token_rewards, kept))
        self.buffer_metrics = m
        if self.kl_ctl is not None and "kl" in m:  # the controller follows the KL of the global batch
            m["kl"] = rt.weighted_mean(m["kl"], len(R))
            n = int(rt.all_reduce(torch.tensor([len(R)], dtype=torch.float64)).item())
            self.kl_coef = self.kl_ctl.update(m["kl"], n)
        self._schedule(len(R))

    def _logps(self, model, rollout):
        """(old log-probs, old values or None, reference log-probs or None, per-token KL, metrics)."""
        s, bs, mask = self.s, self.exp.sampling.batch_size, rollout.response_mask
        old_values = None
        if s.value_head:
            old_logps, old_values = batched_logps(model, rollout, self.exp.pad_id, bs, values=True)
        elif s.recompute_logprobs:
            old_logps = batched_logps(model, rollout, self.exp.pad_id, bs, **self.perf)
        else:
            old_logps = rollout.logprobs
        m: dict[str, float] = {}
        if s.recompute_logprobs or s.value_head:
            m["rollout/logprob_mismatch"] = float(masked_mean((old_logps - rollout.logprobs).abs(), mask))
        ref_logps, kl_tok = None, torch.zeros_like(old_logps)
        if self.reference is not None:
            ref_logps = batched_logps(self.reference, rollout, self.exp.pad_id, bs, **self.perf)
            m["kl"] = float(masked_sum(old_logps - ref_logps, mask, dim=-1).mean())
            if s.kl_in_reward:
                kl_tok = torch.where(mask, kl_estimate(old_logps, ref_logps, s.kl_estimator), 0.0)
        return old_logps, old_values, ref_logps, kl_tok, m

    def _rollout_metrics(self, rollout, R, adv, token_rewards, kept) -> dict[str, float]:
        s, mask = self.s, rollout.response_mask
        lengths = mask.sum(-1).float()
        m = {"reward": float(R.mean()), "reward/std": float(R.std()) if len(R) > 1 else 0.0,
             "adv/mean": float(masked_mean(adv, mask)),
             "adv/std": float(masked_mean((adv - masked_mean(adv, mask)) ** 2, mask).sqrt()),
             "rollout/response_length": float(lengths.mean()),
             "rollout/truncated_frac": float(rollout.truncated.float().mean()),
             "rollout/samples": float(len(R)), "kl/coef": float(self.kl_coef)}
        if s.estimator in ("rloo", "grpo"):  # groups whose samples all scored the same carry no signal
            equal = is_all_equal_group(R, rollout.group)
            first = torch.ones_like(equal)
            first[1:] = rollout.group[1:] != rollout.group[:-1]
            m["rollout/all_equal_groups_frac"] = float(equal[first].float().mean())
        if s.kl_in_reward and self.reference is not None:
            m["reward/with_kl"] = float(token_rewards.sum(-1).mean())
        components: dict[str, list[float]] = {}
        for k in kept:
            for name, v in k[1].components.items():
                components.setdefault(name, []).extend(v)
        m.update({f"reward/{k}": mean(v) for k, v in components.items()})
        if "reward/greedy_baseline" in self.buffer_metrics:
            m["reward/greedy_baseline"] = self.buffer_metrics["reward/greedy_baseline"]
        m.update(self.draw.metrics())
        return m

    def _schedule(self, n: int) -> None:
        """epochs × minibatches, shuffled per epoch (deterministic)."""
        s = self.s
        self.rollouts += 1
        gen = torch.Generator().manual_seed(derive_seed(self.seed, PPO_MINIBATCHES, self.rollouts))
        self.schedule = []
        for epoch in range(s.epochs):
            order = torch.randperm(n, generator=gen) if (s.epochs > 1 or s.minibatches > 1) else torch.arange(n)
            self.schedule.extend(p for p in torch.tensor_split(order, s.minibatches) if len(p))

    # ---------------------------------------------------------------- metrics and state
    def step_metrics(self) -> dict[str, float]:
        m = dict(self.buffer_metrics)
        m.update(self.exp.pop_metrics())
        m.update(self.step_counts)
        m.update(self.throughput.metrics())
        return m

    def state_dict(self) -> dict:
        state = {"experience": self.exp.state_dict(), "rollouts": self.rollouts, "kl_coef": self.kl_coef,
                 "step_counts": dict(self.step_counts), "schedule": list(self.schedule),
                 "buffer": self.buffer.to_state() if self.buffer is not None else None,
                 "buffer_metrics": dict(self.buffer_metrics), "draw": self.draw.state_dict(),
                 "prompts_per_step": self.prompts_per_step}
        if self.kl_ctl is not None:
            state["kl_ctl"] = self.kl_ctl.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])
        self.rollouts, self.kl_coef = int(state["rollouts"]), float(state["kl_coef"])
        self.step_counts = dict(state["step_counts"])
        self.buffer = PGBatch.from_state(state["buffer"]) if state["buffer"] is not None else None
        self.schedule = list(state["schedule"])
        self.buffer_metrics = dict(state["buffer_metrics"])
        self.draw.load_state_dict(state.get("draw", {}))
        self.prompts_per_step = int(state.get("prompts_per_step", self.prompts_per_step))
        if self.kl_ctl is not None and "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])


def _subset(sampled: Sampled, scores: RewardOutput, keep: torch.Tensor, baseline):
    rows = keep.nonzero().squeeze(-1)
    idx = rows.tolist()
    raw = sampled.row_raw_prompts
    sub = Sampled(select_rows(sampled.rollout, rows), sampled.prompts, [sampled.row_prompts[i] for i in idx],
                  [sampled.responses[i] for i in idx], sampled.seconds, sampled.indices, sampled.raw_prompts,
                  None if raw is None else [raw[i] for i in idx])
    sc = RewardOutput([scores.total[i] for i in idx], {k: [v[i] for i in idx] for k, v in scores.components.items()},
                      scores.errors)
    return sub, sc, None if baseline is None else baseline[rows]
