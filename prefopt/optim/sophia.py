"""Sophia-H with its own, checkpointed random generator for the Hutchinson estimates.

Upstream ``pytorch_optimizer.SophiaH`` draws the Hutchinson probe vectors from
the *global* torch RNG, so a resumed run does not reproduce the same Hessian
estimates unless the caller restores the global RNG at exactly the right point,
and it keeps the raw estimate ``state["hessian"]`` alive between updates (one
extra parameter-sized tensor). This subclass keeps upstream's update rule and
changes only:

* the Hessian-diagonal estimate ``h = z * (H z)`` (every ``update_period``
  steps, averaged over ``num_samples`` probes) is computed here with probes from
  an optimizer-owned ``torch.Generator``; its state is saved in the state dict
  (key ``"hutchinson_rng_state"``), and the estimate is handed to upstream
  through its documented ``step(hessian=...)`` argument;
* the raw estimate is dropped once upstream has folded it into its moving
  average, so the state is 2 tensors per parameter (momentum, Hessian EMA).

The Hessian-vector product needs the autograd graph of the gradients: on the
steps where :meth:`needs_create_graph` is true, call
``loss.backward(create_graph=True)`` (and ``zero_grad(set_to_none=True)``
after the step). Attention kernels without double backward (e.g. fused SDPA)
cannot be used then; the ``eager`` attention implementation works.
"""

from __future__ import annotations

import torch
from pytorch_optimizer import SophiaH

RNG_STATE_KEY = "hutchinson_rng_state"


class Sophia(SophiaH):
    """``pytorch_optimizer.SophiaH`` with a checkpointed Hutchinson generator (see module doc)."""

    def __init__(self, params, *, seed: int = 0, **kwargs):
        super().__init__(params, **kwargs)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(int(seed))

    # -- schedule ---------------------------------------------------------
    def _next_step(self) -> int:
        return int(self.param_groups[0].get("step", 0)) + 1

    def needs_create_graph(self) -> bool:
        """True when the next :meth:`step` estimates the Hessian (needs ``backward(create_graph=True)``)."""
        return (self._next_step() - 1) % self.update_period == 0

    # -- Hutchinson estimate ---------------------------------------------
    def _probe(self, p: torch.Tensor) -> torch.Tensor:
        if self.distribution == "rademacher":
            z = torch.randint(0, 2, p.shape, generator=self._generator).to(p.dtype).mul_(2).sub_(1)
        else:
            z = torch.randn(p.shape, generator=self._generator, dtype=p.dtype)
        return z.to(p.device)

    def _hutchinson(self) -> list[torch.Tensor]:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        with_graph = [p for p in params if p.grad.requires_grad]
        if params and not with_graph:
            raise RuntimeError(
                "sophia estimates the Hessian diagonal from Hessian-vector products, which need the "
                "gradient's autograd graph: call loss.backward(create_graph=True) on the steps where "
                "optimizer.needs_create_graph() is True (prefopt.optim.needs_create_graph(optimizer))."
            )
        estimate = {id(p): torch.zeros_like(p) for p in params}
        n = self.num_samples
        for i in range(n):
            zs = [self._probe(p) for p in with_graph]
            with torch.enable_grad():
                hzs = torch.autograd.grad(
                    [p.grad for p in with_graph],
                    with_graph,
                    grad_outputs=zs,
                    retain_graph=i < n - 1,
                    allow_unused=True,
                    materialize_grads=True,
                )
            for p, hz, z in zip(with_graph, hzs, zs):
                estimate[id(p)].addcmul_(hz.detach(), z, value=1.0 / n)
        return [
            estimate[id(p)] if id(p) in estimate else torch.zeros_like(p)
            for g in self.param_groups
            for p in g["params"]
        ]

    @torch.no_grad()
    def step(self, closure=None, hessian: list[torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if hessian is None and self.needs_create_graph():
            hessian = self._hutchinson()
        super().step(hessian=hessian)
        for g in self.param_groups:  # the EMA holds what is needed; drop the raw estimate
            for p in g["params"]:
                if p in self.state:
                    self.state[p].pop("hessian", None)
        return loss

    # -- checkpointing ----------------------------------------------------
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd[RNG_STATE_KEY] = self._generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop(RNG_STATE_KEY, None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self._generator.set_state(rng)
