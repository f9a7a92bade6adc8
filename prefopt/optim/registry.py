"""Optimizer registry: name -> builder, with the options each one accepts.

This module imports no optimizer library at import time (the config layer
imports it to validate configs); each builder imports its library when called.

A builder is an :class:`OptimizerSpec`: call it as ``spec(groups, cfg)`` with the
groups from :func:`prefopt.optim.groups.param_groups` and an
:class:`~prefopt.optim.config.OptimConfig`; it returns a ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefopt.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from prefopt.optim.config import OptimConfig



@dataclass(frozen=True)
class Option:
    """One optimizer-specific option (a key of ``OptimConfig.options``)."""

    default: Any
    help: str
    kind: type  # int, float, bool or str
    choices: tuple | None = None
    minimum: float | None = None  # inclusive lower bound for numbers
    maximum: float | None = None  # inclusive upper bound for numbers
    below: float | None = None  # exclusive upper bound for numbers
    allow_none: bool = False

    def coerce(self, optimizer: str, key: str, value: Any) -> Any:
        """Check ``value`` and return it in canonical form; raise ``ConfigError`` (a ``ValueError``) if invalid."""
        where = f"optim.options.{key} for optimizer {optimizer!r}"
        if value is None:
            if self.allow_none:
                return None
            raise ConfigError(f"{where} must not be null ({self.help})")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ConfigError(f"{where} must be an integer, got {value!r}")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be finite, got {value!r}")
        elif self.kind is str:
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where} must be <= {self.maximum}, got {value!r}")
        if self.below is not None and value >= self.below:
            raise ConfigError(f"{where} must be < {self.below}, got {value!r}")
        return value


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: how to build it and what it accepts."""

    name: str
    summary: str
    source: str  # where the implementation comes from
    build: Callable[[list[dict], OptimConfig, dict], torch.optim.Optimizer] = field(repr=False)
    options: Mapping[str, Option] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # importable modules the implementation needs
    uses_betas: bool = True
    uses_eps: bool = True
    needs_matrices: bool = False  # projects/orthogonalizes 2-D weights; useless without them

    def missing_requirements(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def resolve_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults merged with ``options``, each checked; raises ``ConfigError`` (a ``ValueError``) on bad input."""
        options = dict(options or {})
        out = {}
        for key in options:
            if key not in self.options:
                raise ConfigError(unknown_option_message(self, key))
        for key, opt in self.options.items():
            out[key] = opt.coerce(self.name, key, options.get(key, opt.default))
        return out

    def __call__(self, groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
        return self.build(groups, cfg, self.resolve_options(cfg.options))


def unknown_option_message(spec: OptimizerSpec, key: str) -> str:
    accepted = sorted(spec.options)
    msg = f"optimizer {spec.name!r} does not take option {key!r}"
    close = difflib.get_close_matches(str(key), accepted, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    if accepted:
        msg += f" It accepts: {', '.join(accepted)}."
    else:
        msg += " It takes no options (only optim.lr, optim.weight_decay, optim.betas, optim.eps)."
    return msg


def unknown_name_message(name: Any) -> str:
    names = sorted(OPTIMIZERS)
    msg = f"unknown optimizer {name!r}"
    if isinstance(name, str):
        lowered = name.strip().lower().replace("-", "_")
        close = difflib.get_close_matches(lowered, names, n=1, cutoff=0.5)
        if not close:
            close = [n for n in names if lowered and (lowered in n or n in lowered)][:1]
        if close:
            msg += f"; did you mean {close[0]!r}?"
    return msg + f" Available: {', '.join(names)}."


# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------
def _with(groups: list[dict], kind_updates: Mapping[str, dict], default: dict | None = None) -> list[dict]:
    """Copies of ``groups`` with extra keys per kind (``kind_updates``) or for all others (``default``)."""
    out = []
    for g in groups:
        g = dict(g)
        g.update(kind_updates.get(g["kind"], default or {}))
        out.append(g)
    return out


def _build_adamw(groups, cfg, opts):
    import torch

    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def _bnb():
    from prefopt.optim._imports import quiet_bitsandbytes

    with quiet_bitsandbytes():
        import bitsandbytes

    return bitsandbytes


def _build_adamw_8bit(groups, cfg, opts):
    return _bnb().optim.AdamW8bit(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        min_8bit_size=opts["min_8bit_size"],
    )


def _build_lion(groups, cfg, opts):
    from pytorch_optimizer import Lion

    return Lion(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _build_lion_8bit(groups, cfg, opts):
    return _bnb().optim.Lion8bit(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        min_8bit_size=opts["min_8bit_size"],
    )


def _build_galore(groups, cfg, opts):
    from prefopt.optim.projected import GaLoreAdamW

    proj = {
        "rank": opts["rank"],
        "update_proj_gap": opts["update_proj_gap"],
        "scale": opts["scale"],
        "projection_type": opts["proj_type"],
    }
    return GaLoreAdamW(
        _with(groups, {"matrix": proj}),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


def _build_apollo(groups, cfg, opts):
    from prefopt.optim.apollo import APOLLO

    proj = {
        "rank": opts["rank"],
        "proj": "random",
        "proj_type": "std",
        "update_proj_gap": opts["update_proj_gap"],
        "scale": opts["scale"],
        "scale_type": opts["scale_type"],
    }
    return APOLLO(
        _with(groups, {"matrix": proj}),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        correct_bias=True,
    )


def _build_muon(groups, cfg, opts):
    from pytorch_optimizer import Muon

    adamw_lr = cfg.lr if opts["adamw_lr"] is None else opts["adamw_lr"]
    muon = {
        "use_muon": True,
        "momentum": opts["momentum"],
        "nesterov": opts["nesterov"],
        "ns_steps": opts["ns_steps"],
        "use_adjusted_lr": opts["adjusted_lr"],
    }
    adamw = {"use_muon": False, "lr": adamw_lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    return Muon(
        _with(groups, {"matrix": muon}, default=adamw),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        adamw_lr=adamw_lr,
        adamw_betas=tuple(cfg.betas),
        adamw_wd=cfg.weight_decay,
        adamw_eps=cfg.eps,
    )


def _build_adafactor(groups, cfg, opts):
    import torch

    return torch.optim.Adafactor(
        groups,
        lr=cfg.lr,
        beta2_decay=opts["beta2_decay"],
        eps=(cfg.eps, opts["eps2"]),
        d=opts["d"],
        weight_decay=cfg.weight_decay,
    )


def _build_sophia(groups, cfg, opts):
    from prefopt.optim.sophia import Sophia

    return Sophia(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        p=opts["clip"],
        update_period=opts["update_period"],
        num_samples=opts["num_samples"],
        hessian_distribution=opts["hessian_distribution"],
        eps=cfg.eps,
        seed=opts["seed"],
    )


def _build_sgd_sai(groups, cfg, opts):
    from pytorch_optimizer import SGDSaI

    return SGDSaI(groups, lr=cfg.lr, momentum=opts["momentum"], weight_decay=cfg.weight_decay, eps=cfg.eps)


# ---------------------------------------------------------------------------
# options shared by several optimizers
# ---------------------------------------------------------------------------
_MIN_8BIT = Option(
    4096,
    "tensors with fewer elements keep 32-bit state (bitsandbytes' min_8bit_size)",
    int,
    minimum=1,
)
_GAP = Option(200, "steps between refreshes of the projection of each 2-D weight", int, minimum=1)


def _apollo_options(rank: int, scale: float, scale_type: str) -> dict[str, Option]:
    return {
        "rank": Option(rank, "rank of the random projection of each 2-D gradient", int, minimum=1),
        "update_proj_gap": _GAP,
        "scale": Option(
            scale, "the scaled update is multiplied by sqrt(scale) (paper: 1 for APOLLO, 128 for Mini)", float,
            minimum=0.0,
        ),
        "scale_type": Option(
            scale_type, "'channel': one scale per row/column; 'tensor': one per matrix", str,
            choices=("channel", "tensor"),
        ),
    }


_SPECS = [
    OptimizerSpec(
        "adamw",
        "AdamW: two fp32 moments per parameter (the baseline).",
        "torch.optim.AdamW (torch)",
        _build_adamw,
    ),
    OptimizerSpec(
        "adamw_8bit",
        "AdamW with both moments block-wise quantized to 8 bits (dynamic map, blocks of 256).",
        "bitsandbytes.optim.AdamW8bit (bitsandbytes)",
        _build_adamw_8bit,
        {"min_8bit_size": _MIN_8BIT},
        requires=("bitsandbytes",),
    ),
    OptimizerSpec(
        "galore_adamw",
        "GaLore: AdamW on an SVD-based rank-r projection of each 2-D gradient, projected back.",
        "pytorch_optimizer.GaLore (pytorch-optimizer) + checkpointable projector (prefopt)",
        _build_galore,
        {
            "rank": Option(128, "rank of the projection of each 2-D gradient", int, minimum=1),
            "update_proj_gap": _GAP,
            "scale": Option(0.25, "multiplier of the projected-back update (GaLore's alpha)", float, minimum=0.0),
            "proj_type": Option(
                "std",
                "which side is projected: 'std' = the shorter side, 'reverse_std', 'left', 'right', 'full'",
                str,
                choices=("std", "reverse_std", "left", "right", "full"),
            ),
        },
        requires=("pytorch_optimizer",),
        needs_matrices=True,
    ),
    OptimizerSpec(
        "apollo",
        "APOLLO: channel-wise scaling of the raw gradient, estimated by AdamW on a random rank-r projection.",
        "apollo_torch.APOLLOAdamW (apollo-torch, the authors' code) + checkpointable projector (prefopt)",
        _build_apollo,
        _apollo_options(rank=256, scale=1.0, scale_type="channel"),
        requires=("apollo_torch", "bitsandbytes"),
        needs_matrices=True,
    ),
    OptimizerSpec(
        "apollo_mini",
        "APOLLO-Mini: APOLLO with a rank-1 projection and one scale per matrix.",
        "apollo_torch.APOLLOAdamW (apollo-torch, the authors' code) + checkpointable projector (prefopt)",
        _build_apollo,
        _apollo_options(rank=1, scale=128.0, scale_type="tensor"),
        requires=("apollo_torch", "bitsandbytes"),
        needs_matrices=True,
    ),
    OptimizerSpec(
        "lion",
        "Lion: sign(beta1*m + (1-beta1)*g) update, one momentum state.",
        "pytorch_optimizer.Lion (pytorch-optimizer)",
        _build_lion,
        requires=("pytorch_optimizer",),
        uses_eps=False,
    ),
    OptimizerSpec(
        "lion_8bit",
        "Lion with its momentum block-wise quantized to 8 bits.",
        "bitsandbytes.optim.Lion8bit (bitsandbytes)",
        _build_lion_8bit,
        {"min_8bit_size": _MIN_8BIT},
        requires=("bitsandbytes",),
        uses_eps=False,
    ),
    OptimizerSpec(
        "muon",
        "Muon: Newton-Schulz-orthogonalized momentum for 2-D weights, AdamW for embeddings/head/1-D.",
        "pytorch_optimizer.Muon (pytorch-optimizer)",
        _build_muon,
        {
            "momentum": Option(0.95, "momentum of the orthogonalized (2-D) part", float, minimum=0.0, below=1.0),
            "nesterov": Option(True, "Nesterov momentum for the 2-D part", bool),
            "ns_steps": Option(5, "Newton-Schulz iterations", int, minimum=1),
            "adjusted_lr": Option(
                True,
                "scale the 2-D update by 0.2*sqrt(max(rows, cols)) (Moonlight) so optim.lr is an AdamW-like "
                "rate; false: Keller Jordan's sqrt(max(1, rows/cols)) with Muon-scale rates (~0.02)",
                bool,
            ),
            "adamw_lr": Option(
                None, "learning rate of the AdamW part (null: optim.lr)", float, minimum=0.0, allow_none=True
            ),
        },
        requires=("pytorch_optimizer",),
        needs_matrices=True,
    ),
    OptimizerSpec(
        "adafactor",
        "Adafactor: factored second moment (row and column statistics), relative step size, no momentum.",
        "torch.optim.Adafactor (torch)",
        _build_adafactor,
        {
            "beta2_decay": Option(-0.8, "decay exponent of the second-moment rate (beta2_t = 1 - t^decay)", float,
                                  maximum=0.0),
            "d": Option(1.0, "update clipping threshold (RMS)", float, minimum=1.0),
            "eps2": Option(1e-3, "floor of the parameter RMS in the relative step size", float, minimum=0.0),
        },
        uses_betas=False,
    ),
    OptimizerSpec(
        "sophia",
        "Sophia-H: momentum / max(EMA of Hutchinson Hessian diagonal, eps), clipped; Hessian every k steps.",
        "pytorch_optimizer.SophiaH (pytorch-optimizer) + checkpointed Hutchinson generator (prefopt)",
        _build_sophia,
        {
            "clip": Option(0.01, "bound on each entry of momentum/hessian; the largest step per entry is lr*clip", float,
                           minimum=0.0),
            "update_period": Option(10, "steps between Hessian estimates (k)", int, minimum=1),
            "num_samples": Option(1, "Hutchinson probes per estimate", int, minimum=1),
            "hessian_distribution": Option(
                "gaussian", "distribution of the Hutchinson probes", str, choices=("gaussian", "rademacher")
            ),
            "seed": Option(0, "seed of the optimizer's own probe generator", int, minimum=0),
        },
        requires=("pytorch_optimizer",),
    ),
    OptimizerSpec(
        "sgd_sai",
        "SGD-SaI: SGD with momentum, each tensor's rate scaled once by its gradient SNR at the first step.",
        "pytorch_optimizer.SGDSaI (pytorch-optimizer)",
        _build_sgd_sai,
        {"momentum": Option(0.9, "momentum factor", float, minimum=0.0, below=1.0)},
        requires=("pytorch_optimizer",),
        uses_betas=False,
    ),
]

OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in _SPECS}


def available_optimizers() -> list[str]:
    """Names of the registered optimizers whose libraries are installed."""
    return [name for name, spec in OPTIMIZERS.items() if not spec.missing_requirements()]
