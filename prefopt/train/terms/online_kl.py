"""HyPO's on-policy reverse-KL term over ``samples`` batches (fresh, unlabelled policy samples)."""
from __future__ import annotations

from prefopt.losses.reductions import masked_sum
from prefopt.losses.rl import online_reverse_kl_loss
from prefopt.models.prefix import grouped_response_logps, supports_packing
from prefopt.models.value import response_forward
from prefopt.train.algorithms.base import StepLoss
from prefopt.train.recipe import LossTerm
from prefopt.types import SampleBatch


class OnlineKLTerm(LossTerm):
    """E_{x~D, y~π}[log π(y|x) - log π_ref(y|x)] by the score-function estimator with a leave-one-out
    baseline over the k samples of each prompt (:func:`prefopt.losses.rl.online_reverse_kl_loss`).

    Units: samples; weight it by λ in the recipe. Logs ``hypo/online_kl`` (nats per sequence)."""

    kind = "samples"

    def __init__(self, *, pad_id: int, name: str = "online_kl", prefix_sharing: bool = True,
                 padding_free: bool = True):
        self.pad_id, self.name = pad_id, name
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free

    def loss(self, model, batch: SampleBatch) -> StepLoss:
        if (self.prefix_sharing or self.padding_free) and supports_packing(model):
            out = grouped_response_logps(model, batch.prompt_ids, batch.response_ids, batch.mask, self.pad_id,
                                         prefix_sharing=self.prefix_sharing, padding_free=self.padding_free)
        else:
            out = response_forward(model, batch.prompt_ids, batch.response_ids, batch.mask, self.pad_id)
        mask = batch.mask.to(out["logps"].device)
        seq = masked_sum(out["logps"], mask, dim=-1)
        ref = masked_sum(batch.ref_logps.to(seq.device), mask, dim=-1)
        res = online_reverse_kl_loss(seq, ref, batch.group.to(seq.device))
        tokens = int(mask.sum()) + sum(len(p) for p in batch.prompt_ids)
        return StepLoss(res.losses.sum(), {"hypo/online_kl": float(res.metrics["online_kl"])}, tokens)
