"""Supervised fine-tuning with a completion-only loss (prompt tokens carry no loss): a dataset
source of SFT rows × :class:`~prefopt.train.terms.preference.SFTTerm`."""
from __future__ import annotations

import torch

from prefopt.data.tokenize import Encoded, collate_sequences
from prefopt.train.recipe import Part, Recipe
from prefopt.train.sources.offline import DatasetSource
from prefopt.train.terms.preference import SFTTerm
from prefopt.types import SequenceBatch


class SFT(Recipe):
    """Token-level mean NLL of response tokens over the whole optimizer step."""

    name = "sft"

    def __init__(self, train: list[Encoded], eval: list[Encoded], *, pad_id: int, batch_size: int,
                 seed: int = 0, shuffle: bool = True, padding_free: bool = True):
        self.pad_id, self.batch_size = pad_id, batch_size
        self.train_rows, self.eval_rows = train, eval
        self.term = SFTTerm(pad_id=pad_id, padding_free=padding_free)
        self.source = DatasetSource(train, self._collate, kind="sequences", batch_size=batch_size, seed=seed,
                                    shuffle=shuffle)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=self._eval)

    def _collate(self, rows: list[Encoded]) -> SequenceBatch:
        return collate_sequences([(r.prompt_ids, r.response_ids) for r in rows], self.pad_id)

    @torch.no_grad()
    def _eval(self, model) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.eval_rows), self.batch_size):
            batch = self._collate(self.eval_rows[start:start + self.batch_size])
            logps = self.term.response_logps(model, batch)
            total += float(-logps.sum())
            count += logps.numel()
        return {"loss": total / max(1, count)}
