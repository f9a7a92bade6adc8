"""KTO on unpaired binary feedback (prompt, completion, desirable?).

Per step: B examples → policy log-probs (with grad) and reference log-probs of each completion,
plus policy/reference log-probs of B *mismatched* (prompt_i, completion_j) pairs whose mean
log-ratio is the detached KL baseline z0 (``prefopt.losses.kto``). The mismatched partner of
each example is fixed when the data is encoded, so its reference log-probs can be precomputed.
"""
from __future__ import annotations

import torch

from prefopt.data.prepare import EncodedFeedback, collate_feedback
from prefopt.losses.kto import kto
from prefopt.models.logprobs import sequence_logps
from prefopt.models.lora import reference_pass
from prefopt.train.algorithms.base import DatasetAlgorithm, StepLoss
from prefopt.types import FeedbackBatch


class KTO(DatasetAlgorithm):
    name = "kto"

    def __init__(self, train: list[EncodedFeedback], eval: list[EncodedFeedback], *, beta: float,
                 pad_id: int, batch_size: int, reference: torch.nn.Module | None, ref_store=None,
                 desirable_weight: float = 1.0, undesirable_weight: float = 1.0, seed: int = 0,
                 shuffle: bool = True):
        if reference is None and ref_store is None:
            raise ValueError("kto needs a reference (algo.reference: copy, lora or precomputed)")
        if batch_size < 2:
            raise ValueError("kto needs batch_size >= 2 (the KL baseline uses mismatched pairs)")
        super().__init__(train, eval, pad_id=pad_id, batch_size=batch_size, seed=seed, shuffle=shuffle)
        self.beta = beta
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.reference, self.ref_store = reference, ref_store

    def _collate(self, rows: list[EncodedFeedback]) -> FeedbackBatch:
        ref = self.ref_store.lookup([r.index for r in rows]) if self.ref_store is not None else None
        return collate_feedback(rows, self.pad_id, ref)

    @torch.no_grad()
    def reference_logps(self, batch: FeedbackBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.ref_logps is not None:
            return batch.ref_logps, batch.ref_kl_logps
        with reference_pass(self.reference) as ref:
            return sequence_logps(ref, batch.sequences)[0], sequence_logps(ref, batch.kl_sequences)[0]

    def _loss(self, model, batch: FeedbackBatch):
        policy, _ = sequence_logps(model, batch.sequences)
        with torch.no_grad():  # z0 is detached in the loss: no graph needed
            kl_policy, _ = sequence_logps(model, batch.kl_sequences)
        ref, kl_ref = self.reference_logps(batch)
        return kto(policy, ref, batch.labels, kl_policy, kl_ref, beta=self.beta,
                   desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight)

    def compute_loss(self, model, batch: FeedbackBatch) -> StepLoss:
        out = self._loss(model, batch)
        weights = batch.sequences.weights if batch.sequences.weights is not None else torch.ones(len(batch))
        loss = (out.losses * weights).sum()
        metrics = {k: float(v) for k, v in out.metrics.items()}
        metrics["kto/desirable_fraction"] = float(batch.labels.float().mean())
        tokens = int(batch.sequences.attention_mask.sum() + batch.kl_sequences.attention_mask.sum())
        return StepLoss(loss, metrics, tokens)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        if len(self.eval_rows) < 2:
            return {}
        model.eval()
        total, n = 0.0, 0
        sums = {"rewards/desirable": [0.0, 0], "rewards/undesirable": [0.0, 0], "kl": [0.0, 0]}
        for start in range(0, len(self.eval_rows), self.batch_size):
            rows = self.eval_rows[start:start + self.batch_size]
            if len(rows) < 2:
                continue
            batch = self._collate(rows)
            out = self._loss(model, batch)
            total += float(out.losses.sum())
            n += len(rows)
            counts = {"rewards/desirable": int(batch.labels.sum()),
                      "rewards/undesirable": int((~batch.labels).sum()), "kl": len(rows)}
            for k, v in out.metrics.items():
                if k in sums:
                    sums[k][0] += float(v) * counts[k]
                    sums[k][1] += counts[k]
        result = {"loss": total / max(1, n)}
        result.update({k: s / c for k, (s, c) in sums.items() if c})
        return result
