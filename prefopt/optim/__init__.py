"""Optimizers: registry (well-kept libraries first), parameter-group rules, state accounting.

::

    from prefopt.optim import OptimConfig, build_optimizer, optimizer_state_bytes

    opt = build_optimizer(model, OptimConfig(name="galore_adamw", lr=1e-3, options={"rank": 64}))
    ...
    loss.backward(create_graph=needs_create_graph(opt))   # only sophia ever needs True
    opt.step()
    metrics["memory/optimizer_state_bytes"] = optimizer_state_bytes(opt)

See ``docs/optimizers.md`` for each optimizer, its source and options.
"""

from __future__ import annotations

import torch
from torch import nn

from prefopt.errors import ConfigError
from prefopt.optim.config import OptimConfig
from prefopt.optim.groups import KINDS, classify_parameters, param_groups
from prefopt.optim.registry import OPTIMIZERS, Option, OptimizerSpec, available_optimizers
from prefopt.optim.state import optimizer_state_bytes
from prefopt.validation import check_config

__all__ = [
    "KINDS",
    "OPTIMIZERS",
    "OptimConfig",
    "Option",
    "OptimizerSpec",
    "available_optimizers",
    "build_optimizer",
    "classify_parameters",
    "needs_create_graph",
    "optimizer_state_bytes",
    "param_groups",
]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Validate ``cfg`` and build the optimizer over the trainable parameters of ``model``.

    Raises ``ConfigError`` (a ``ValueError``) before anything is allocated when the config is invalid
    (unknown name or option, bad value, missing library), when the model has no
    trainable parameters, or when the optimizer projects/orthogonalizes 2-D weight
    matrices and the model has no trainable one.
    """
    check_config(cfg, "optim.")
    spec = OPTIMIZERS[cfg.name]
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters (every parameter has requires_grad=False)")
    if spec.needs_matrices and not any(g["kind"] == "matrix" for g in groups):
        kinds = ", ".join(f"{g['kind']} ({len(g['params'])})" for g in groups)
        raise ConfigError(
            f"optimizer {cfg.name!r} works on trainable 2-D weight matrices (not embeddings, LM head, norms "
            f"or biases), and this model has none; its trainable parameters are: {kinds}. "
            f"Use 'adamw' or another optimizer that does not need matrices."
        )
    return spec(groups, cfg)


def needs_create_graph(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the next ``optimizer.step()`` needs ``loss.backward(create_graph=True)``.

    True only for ``sophia`` on the steps where it estimates the Hessian diagonal.
    """
    fn = getattr(optimizer, "needs_create_graph", None)
    return bool(fn()) if callable(fn) else False
