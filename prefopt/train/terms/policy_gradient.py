"""The policy-gradient loss term: clipped surrogate on the buffer's advantages, + β·KL when KL is
a loss term, + vf_coef · clipped value loss (PPO), reduced per ``loss_aggregation``."""
from __future__ import annotations

import torch

from prefopt.losses.reductions import aggregate_loss, masked_mean, step_normalizer
from prefopt.losses.rl import kl_estimate, ppo_policy_loss, value_loss
from prefopt.models.prefix import grouped_response_logps, supports_packing
from prefopt.models.value import response_forward
from prefopt.train.algorithms.base import StepLoss
from prefopt.train.pg_settings import PGSettings
from prefopt.train.recipe import LossTerm
from prefopt.types import PGBatch


class PolicyGradientTerm(LossTerm):
    """Per-token PPO-clip loss over ``rollout`` batches; units per ``loss_aggregation``.

    ``kl_coef`` is read from ``source`` each call (an adaptive controller may move it)."""

    kind = "rollout"

    def __init__(self, settings: PGSettings, source, *, pad_id: int, max_new_tokens: int, name: str = "pg",
                 prefix_sharing: bool = True, padding_free: bool = True):
        self.s, self.source, self.pad_id, self.name = settings, source, pad_id, name
        self.max_new_tokens = max_new_tokens
        # perf.*: the k samples of a prompt share one copy of it, rows packed without padding (exact)
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free

    def units(self, batch: PGBatch) -> float:
        return float(step_normalizer(batch.mask, self.s.loss_aggregation, max_len=self.max_new_tokens))

    def _forward(self, model, batch: PGBatch) -> dict:
        if not self.s.value_head and (self.prefix_sharing or self.padding_free) and supports_packing(model):
            return grouped_response_logps(model, batch.prompt_ids, batch.response_ids, batch.mask, self.pad_id,
                                          entropy=True, prefix_sharing=self.prefix_sharing,
                                          padding_free=self.padding_free)
        return response_forward(model, batch.prompt_ids, batch.response_ids, batch.mask, self.pad_id,
                                values=self.s.value_head, entropy=True)

    def loss(self, model, batch: PGBatch) -> StepLoss:
        s = self.s
        out = self._forward(model, batch)
        device = out["logps"].device
        mask = batch.mask.to(device)
        logp = out["logps"]
        pg = ppo_policy_loss(logp, batch.old_logps.to(device), batch.advantages.to(device), mask,
                             s.clip_low, s.clip_high)
        tok_loss = pg.losses
        metrics = {"clipfrac": float(pg.metrics["clipfrac"]), "approx_kl": float(pg.metrics["approx_kl"]),
                   "entropy": float(masked_mean(out["entropy"], mask)),
                   "policy/loss": float(masked_mean(pg.losses.detach(), mask))}
        kl_coef = self.source.kl_coef
        if batch.ref_logps is not None and kl_coef > 0:
            kl = torch.where(mask, kl_estimate(logp, batch.ref_logps.to(device), s.kl_estimator), 0.0)
            tok_loss = tok_loss + kl_coef * kl
            metrics["kl_loss"] = float(masked_mean(kl.detach(), mask))
        if s.value_head:
            vl = value_loss(out["values"], batch.old_values.to(device), batch.returns.to(device), mask, s.vf_clip)
            tok_loss = tok_loss + s.vf_coef * vl.losses
            metrics["value/loss"] = float(masked_mean(vl.losses.detach(), mask))
            metrics["value/clipfrac"] = float(vl.metrics["vf_clipfrac"])
        loss = aggregate_loss(tok_loss, mask, s.loss_aggregation, normalizer=1.0)
        tokens = int(mask.sum()) + sum(len(p) for p in batch.prompt_ids)
        self.source.throughput.add(tokens)
        return StepLoss(loss, metrics, tokens)
