"""Offline sources: a fixed dataset of rows (pairs, unpaired feedback, SFT rows) in a seeded,
resumable epoch order; ``collate`` turns a list of rows into one batch of kind ``kind``."""
from __future__ import annotations

from typing import Any, Callable

from prefopt.train.recipe import Source
from prefopt.train.sampler import EpochSampler


class DatasetSource(Source):
    """``batch_size`` rows per micro-batch, epoch after epoch; the sampler position is its state.

    ``take(model, n)`` draws exactly ``n`` rows as one batch (a mixture sizes its offline share so)."""

    def __init__(self, rows: list, collate: Callable[[list], Any], *, kind: str, batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        self.rows, self.collate, self.kind, self.kinds = rows, collate, kind, (kind,)
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(rows), seed, shuffle)

    def take(self, n: int) -> Any:
        return self.collate([self.rows[i] for i in self.sampler.take(n)])

    def next_batches(self, model, num_micro: int) -> list[dict]:
        return [{self.kind: self.take(self.batch_size)} for _ in range(num_micro)]

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
