"""The extragradient step as a loop hook (EGPO, Zhou et al. 2025; zhourunlong/EGPO
``ExtragradientTrainer``): one loop step = a look-ahead pass and the real pass.

1. ``lookahead``: snapshot the trainable parameters and the optimizer state, then the usual pass
   (batches sampled from θ_t, gradient at θ_t, optimizer step) → θ_{t+½}.
2. ``update``: the sources sample from θ_{t+½}; *before the forward* the snapshot is restored
   (θ_t and the optimizer state of θ_t), so the gradient is taken at θ_t on those samples and
   the optimizer steps θ_t → θ_{t+1}.

The scheduler steps once per loop step (both passes use the same learning rate, as extragradient
prescribes); in the reference each half is a trainer step of its own. Checkpoints fall only
between loop steps, so no checkpoint ever holds θ_{t+½}; an interrupted step restores θ_t.
"""
from __future__ import annotations

import copy

import torch

from prefopt.train.recipe import StepHook


class ExtragradientHook(StepHook):
    phases = ("lookahead", "update")

    def __init__(self):
        self.saved: tuple[list[torch.Tensor], dict] | None = None

    @staticmethod
    def _params(model) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def before_forward(self, phase: str, model, optimizer) -> None:
        if phase == "lookahead":
            self.saved = ([p.detach().clone() for p in self._params(model)], copy.deepcopy(optimizer.state_dict()))
        elif phase == "update":
            self._restore(model, optimizer)

    def _restore(self, model, optimizer) -> None:
        if self.saved is None:
            return
        params, state = self.saved
        with torch.no_grad():
            for p, saved in zip(self._params(model), params):
                p.copy_(saved)
        optimizer.load_state_dict(state)
        self.saved = None

    def abort(self, model, optimizer) -> None:
        self._restore(model, optimizer)
