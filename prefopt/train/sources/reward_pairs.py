"""The reward-model source (``reward_pairs``): preference pairs for k ensemble members at once.

Separate models (``kind: models``, k > 1) each get their own data order and, with ``bootstrap``,
their own resample of the pairs (drawn with replacement); heads share batches and, with
``bootstrap``, weigh pair i by their own Poisson(1) count (the online bootstrap). A micro-batch
is one :class:`~prefopt.types.PreferenceBatch` per separately trained model (one for heads).
"""
from __future__ import annotations

import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.seeding import REWARD_BOOTSTRAP, REWARD_MEMBER, derive_seed
from prefopt.train.recipe import Source
from prefopt.train.sampler import EpochSampler
from prefopt.types import PreferenceBatch


class RewardPairSource(Source):
    """``batch_size`` pairs per member per micro-batch; ``head_weights`` (N, k) for bootstrapped heads."""

    kinds = ("reward_pairs",)

    def __init__(self, rows: list[EncodedPair], *, pad_id: int, batch_size: int, ensemble_size: int = 1,
                 kind: str = "models", bootstrap: bool = False, seed: int = 0, shuffle: bool = True):
        if kind not in ("models", "heads"):
            raise ValueError(f"kind must be 'models' or 'heads', got '{kind}'")
        self.rows, self.pad_id, self.batch_size = rows, pad_id, batch_size
        g = torch.Generator().manual_seed(derive_seed(seed, REWARD_BOOTSTRAP))
        n = len(rows)
        self.pools: list[list[int]] = []
        self.head_weights: torch.Tensor | None = None
        if kind == "models" and ensemble_size > 1:
            for _ in range(ensemble_size):
                self.pools.append(torch.randint(0, n, (n,), generator=g).tolist() if bootstrap else list(range(n)))
            self.samplers = [EpochSampler(n, derive_seed(seed, REWARD_MEMBER, i), shuffle) for i in range(ensemble_size)]
        else:
            self.pools = [list(range(n))]
            self.samplers = [EpochSampler(n, seed, shuffle)]
            if kind == "heads" and bootstrap and ensemble_size > 1:
                self.head_weights = torch.poisson(torch.ones(n, ensemble_size), generator=g)

    def collate(self, rows: list[EncodedPair]) -> PreferenceBatch:
        return collate_pairs(rows, self.pad_id)

    def next_batches(self, model, num_micro: int) -> list[dict]:
        return [{"reward_pairs": [self.collate([self.rows[pool[i]] for i in sampler.take(self.batch_size)])
                                  for pool, sampler in zip(self.pools, self.samplers)]}
                for _ in range(num_micro)]

    def state_dict(self) -> dict:
        return {"samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.samplers, state["samplers"]):
            s.load_state_dict(st)
