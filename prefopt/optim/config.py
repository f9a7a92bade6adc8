"""Optimizer section of every training config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from prefopt.errors import ConfigError
from prefopt.optim.registry import OPTIMIZERS, unknown_name_message
from prefopt.validation import bad_value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class OptimConfig:
    """Which optimizer trains the policy, and its hyper-parameters.

    ``options`` holds the keys specific to the chosen optimizer; see
    ``docs/optimizers.md`` or ``prefopt.optim.OPTIMIZERS[name].options``.
    """

    name: str = field(
        default="adamw",
        metadata={
            "help": "optimizer: adamw, adamw_8bit, galore_adamw, apollo, apollo_mini, lion, lion_8bit, muon, "
            "adafactor, sophia, sgd_sai (prefopt.optim.available_optimizers() lists the installed ones)"
        },
    )
    lr: float = field(
        default=1e-4,
        metadata={
            "help": "learning rate (for adafactor the cap of its relative step size; for muon with "
            "options.adjusted_lr the rate of both parts; for sophia the largest step is lr*options.clip)",
            "gt": 0,
        },
    )
    weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "decoupled weight decay, applied to 2-D weights, embeddings and LM head; never to norms, "
            "biases or other 1-D tensors",
            "min": 0,
        },
    )
    betas: tuple[float, float] = field(
        default=(0.9, 0.999),
        metadata={
            "help": "moment decay rates (beta1, beta2); Lion's (interpolation, momentum) pair (paper: 0.9, 0.99); "
            "Sophia's (momentum, Hessian EMA) (paper: 0.965, 0.99); muon: its AdamW part; not used by "
            "adafactor and sgd_sai"
        },
    )
    eps: float = field(
        default=1e-8,
        metadata={
            "help": "numerical-stability term of the denominator (adafactor: its eps1; sophia: floor of the "
            "Hessian EMA; sgd_sai: of the gradient-SNR); not used by lion/lion_8bit",
            "min": 0,
        },
    )
    options: dict = field(
        default_factory=dict,
        metadata={
            "help": "optimizer-specific options, e.g. {rank: 64, update_proj_gap: 200, scale: 0.25} for "
            "galore_adamw; unknown keys are an error"
        },
    )

    def validate(self, prefix: str = "optim.") -> None:
        """Raise ``ConfigError`` (a ``ValueError``) with a clear message if this config cannot build an optimizer.

        ``lr``, ``weight_decay`` and ``eps`` are range-checked from their field metadata
        (:func:`prefopt.validation.check_config`); this checks the name, betas and options."""
        if not isinstance(self.name, str) or self.name not in OPTIMIZERS:
            raise ConfigError(unknown_name_message(self.name))
        spec = OPTIMIZERS[self.name]
        missing = spec.missing_requirements()
        if missing:
            pkgs = " ".join(m.replace("_", "-") for m in missing)
            raise ConfigError(
                f"optimizer {self.name!r} needs {', '.join(missing)}, which is not installed "
                f"(pip install {pkgs})"
            )
        if (
            not isinstance(self.betas, (tuple, list))
            or len(self.betas) != 2
            or not all(_is_number(b) and 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise bad_value(f"{prefix}betas", self.betas, "two numbers in [0, 1)")
        if not isinstance(self.options, dict):
            raise bad_value(f"{prefix}options", self.options, "a mapping")

        defaults = {f.name: f.default for f in fields(self)}
        if not spec.uses_betas and tuple(self.betas) != tuple(defaults["betas"]):
            raise ConfigError(
                f"optimizer {self.name!r} does not use {prefix}betas (got {tuple(self.betas)}); remove it"
                + (" and set optim.options.momentum instead" if "momentum" in spec.options else "")
            )
        if not spec.uses_eps and self.eps != defaults["eps"]:
            raise ConfigError(f"optimizer {self.name!r} does not use {prefix}eps (got {self.eps!r}); remove it")
        spec.resolve_options(self.options)  # unknown keys, types, ranges
