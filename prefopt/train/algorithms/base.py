"""An algorithm is an experience source plus a loss; the single loop in ``train/loop.py`` runs it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from prefopt.train.sampler import EpochSampler


@dataclass
class StepLoss:
    """One micro-batch's contribution to an optimizer step.

    loss: scalar, the SUM of per-unit losses (the loop divides by the step's total units, so
        gradient accumulation gives the same gradient as one big batch).
    metrics: means over the micro-batch's units (the loop averages them weighted by units).
    tokens: real (non-pad) tokens processed, for throughput.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int = 0


class Algorithm(ABC):
    """Subclasses provide batches for each step and the loss of one micro-batch."""

    name: str = ""

    @abstractmethod
    def next_batches(self, model: torch.nn.Module, num_micro: int) -> list[Any]:
        """The ``num_micro`` micro-batches of the next optimizer step (online sources generate here)."""

    @abstractmethod
    def compute_loss(self, model: torch.nn.Module, batch: Any) -> StepLoss:
        """Forward + loss of one micro-batch."""

    def units(self, batch: Any) -> float:
        """How many units (examples by default) a micro-batch contributes to the step's mean."""
        return float(len(batch))

    def step_metrics(self) -> dict[str, float]:
        """Metrics gathered while making the step's batches (e.g. rollout rewards); reset each call."""
        return {}

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out metrics; called every ``train.eval_every`` steps and at the end."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DatasetAlgorithm(Algorithm):
    """An algorithm over a fixed dataset: rows in a seeded, resumable epoch order; ``_collate``
    turns a list of rows into one micro-batch."""

    def __init__(self, train: list, eval: list, *, pad_id: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        self.train_rows, self.eval_rows = train, eval
        self.pad_id, self.batch_size = pad_id, batch_size
        self.sampler = EpochSampler(len(train), seed, shuffle)

    @abstractmethod
    def _collate(self, rows: list) -> Any:
        """One micro-batch from dataset rows."""

    def next_batches(self, model, num_micro: int) -> list:
        return [self._collate([self.train_rows[i] for i in self.sampler.take(self.batch_size)])
                for _ in range(num_micro)]

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
