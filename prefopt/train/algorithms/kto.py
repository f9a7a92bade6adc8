"""KTO on unpaired binary feedback (prompt, completion, desirable?).

Per step: B examples → policy log-probs (with grad) and reference log-probs of each completion,
plus policy/reference log-probs of B *mismatched* (prompt_i, completion_j) pairs whose mean
log-ratio is the detached KL baseline z0 (``prefopt.losses.kto``). The mismatched partner of
each example is fixed when the data is encoded, so its reference log-probs can be precomputed.
"""
from __future__ import annotations

import torch

from prefopt.data.prepare import EncodedFeedback, collate_feedback
from prefopt.errors import ConfigError
from prefopt.train.recipe import Part, Recipe
from prefopt.train.sources.offline import DatasetSource
from prefopt.train.terms.preference import KTOTerm
from prefopt.types import FeedbackBatch


class KTO(Recipe):
    """A dataset source of unpaired feedback × :class:`~prefopt.train.terms.preference.KTOTerm`."""

    name = "kto"

    def __init__(self, train: list[EncodedFeedback], eval: list[EncodedFeedback], *, beta: float,
                 pad_id: int, batch_size: int, reference: torch.nn.Module | None, ref_store=None,
                 desirable_weight: float = 1.0, undesirable_weight: float = 1.0, seed: int = 0,
                 shuffle: bool = True):
        if batch_size < 2:
            raise ConfigError("train.batch_size: kto needs >= 2 (the KL baseline uses mismatched pairs)")
        self.term = KTOTerm(beta=beta, reference=reference, desirable_weight=desirable_weight,
                            undesirable_weight=undesirable_weight, has_store=ref_store is not None)
        self.ref_store, self.pad_id, self.batch_size = ref_store, pad_id, batch_size
        self.train_rows, self.eval_rows = train, eval
        self.source = DatasetSource(train, self._collate, kind="feedback", batch_size=batch_size, seed=seed,
                                    shuffle=shuffle)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=self._eval)

    def _collate(self, rows: list[EncodedFeedback]) -> FeedbackBatch:
        ref = self.ref_store.lookup([r.index for r in rows]) if self.ref_store is not None else None
        return collate_feedback(rows, self.pad_id, ref)

    def reference_logps(self, batch: FeedbackBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.term.reference_logps(batch)

    def _loss(self, model, batch: FeedbackBatch):
        return self.term.outputs(model, batch)

    @torch.no_grad()
    def _eval(self, model) -> dict[str, float]:
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
