"""An algorithm is an experience source plus a loss; the single loop in ``train/loop.py`` runs it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch


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
