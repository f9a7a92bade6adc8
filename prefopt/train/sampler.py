"""Deterministic, resumable epoch-shuffled index stream, sharded over data-parallel ranks."""
from __future__ import annotations

import torch

from prefopt.seeding import DATA_ORDER, derive_seed


class EpochSampler:
    """Yields dataset indices in a seeded shuffled order, epoch after epoch.

    Under data parallelism every rank walks the same global stream and keeps its own share of
    each draw: ``take(k)`` consumes the next ``k × world_size`` indices and returns this rank's
    contiguous ``k`` of them. So each example is seen once per epoch across ranks, 2 ranks × k
    draw exactly what 1 rank × 2k draws, and the state (epoch, position) is the same on every
    rank — a checkpoint resumes under any world size. ``rank``/``world_size`` default to the
    current :mod:`prefopt.dist` runtime.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, *, rank: int | None = None,
                 world_size: int | None = None):
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        from prefopt.dist import current

        rt = current()
        self.rank = rt.rank if rank is None else rank
        self.world_size = rt.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"sampler: rank {self.rank} outside world size {self.world_size}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_ORDER, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def take_global(self, k: int) -> list[int]:
        """The next ``k`` indices of the global stream (every rank's share of this draw)."""
        out = []
        while len(out) < k:
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def take(self, k: int) -> list[int]:
        """This rank's ``k`` indices of the next ``k × world_size``."""
        drawn = self.take_global(k * self.world_size)
        return drawn[self.rank * k:(self.rank + 1) * k]

    def offset(self, k: int) -> int:
        """Global position of this rank's first index within a draw of ``k`` per rank."""
        return self.rank * k

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._make_order()
