"""Supervised fine-tuning with a completion-only loss (prompt tokens carry no loss)."""
from __future__ import annotations

import torch

from prefopt.data.batching import pack_sequences
from prefopt.data.tokenize import Encoded, collate_sequences
from prefopt.models.logprobs import token_logps
from prefopt.models.prefix import layout_token_logps, packed_layout
from prefopt.train.algorithms.base import DatasetAlgorithm, StepLoss
from prefopt.types import SequenceBatch


class SFT(DatasetAlgorithm):
    """Token-level mean NLL of response tokens over the whole optimizer step."""

    name = "sft"

    def __init__(self, train: list[Encoded], eval: list[Encoded], *, pad_id: int, batch_size: int,
                 seed: int = 0, shuffle: bool = True, padding_free: bool = True):
        super().__init__(train, eval, pad_id=pad_id, batch_size=batch_size, seed=seed, shuffle=shuffle)
        self.padding_free = padding_free  # perf.padding_free: rows packed without padding (exact)

    def _collate(self, rows: list[Encoded]) -> SequenceBatch:
        return collate_sequences([(r.prompt_ids, r.response_ids) for r in rows], self.pad_id)

    def units(self, batch: SequenceBatch) -> float:
        # Units are response tokens, so the step's loss is the mean NLL per response token.
        return float(batch.loss_mask[:, 1:].sum())

    def _response_logps(self, model, batch: SequenceBatch) -> torch.Tensor:
        """Log-probs of every response token of the batch, flattened (packed when possible)."""
        if self.padding_free:
            layout = packed_layout(model, lambda cost: pack_sequences(batch, self.pad_id, attention_cost=cost))
            if layout is not None:
                return layout_token_logps(model, layout)
        logps, mask = token_logps(model, batch)
        return logps[mask]

    def compute_loss(self, model, batch: SequenceBatch) -> StepLoss:
        logps = self._response_logps(model, batch)
        nll = -logps.sum()
        n = max(1, logps.numel())
        return StepLoss(nll, {"sft/nll": float(nll.detach()) / n}, int(batch.attention_mask.sum()))

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.eval_rows), self.batch_size):
            batch = self._collate(self.eval_rows[start:start + self.batch_size])
            logps = self._response_logps(model, batch)
            total += float(-logps.sum())
            count += logps.numel()
        return {"loss": total / max(1, count)}
