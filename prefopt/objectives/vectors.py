"""Named reward vectors: objective name -> (N,) tensor, one value per sample.

Every multi-objective path (rollout scores, preference-batch score columns, reward-model heads)
carries rewards in this form so that scalarization, fronts and per-objective metrics read one
layout. Imports only torch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from prefopt.errors import ConfigError


class RewardVector(dict):
    """``{objective: (N,) float tensor}`` with the same N for every objective, in a fixed order.

    ``stack()`` gives the (N, m) matrix in :attr:`names` order; ``select(names)`` checks that each
    asked objective exists and lists the available ones when one does not.
    """

    def __init__(self, values: Mapping[str, torch.Tensor | Sequence[float]]):
        super().__init__()
        size = None
        for name, v in values.items():
            t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
            if size is not None and t.numel() != size:
                raise ValueError(f"reward vector: objective '{name}' has {t.numel()} values, expected {size}")
            size = t.numel()
            self[str(name)] = t
        self.size = size or 0

    @property
    def names(self) -> list[str]:
        return list(self.keys())

    def select(self, names: Sequence[str], *, key: str = "objectives") -> "RewardVector":
        missing = [n for n in names if n not in self]
        if missing:
            raise ConfigError(f"{key}: unknown objective(s) {missing} (available: {', '.join(self.names) or 'none'})")
        return RewardVector({n: self[n] for n in names})

    def stack(self) -> torch.Tensor:
        """(N, m) in :attr:`names` order."""
        if not self:
            return torch.zeros(0, 0)
        return torch.stack(list(self.values()), dim=-1)

    def means(self) -> dict[str, float]:
        return {n: float(v.mean()) if v.numel() else float("nan") for n, v in self.items()}
