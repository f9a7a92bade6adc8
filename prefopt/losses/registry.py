"""Name -> pairwise loss, used only at the config edge; plus validation and loss mixtures."""
from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch

from prefopt.losses import pairwise
from prefopt.losses.pairwise import check_hparams, mark_loss_properties
from prefopt.types import LossOutput

PAIRWISE_LOSSES: dict[str, Callable[..., LossOutput]] = {
    fn.__name__: fn
    for fn in (
        # P0
        pairwise.dpo, pairwise.cdpo, pairwise.robust_dpo, pairwise.ipo, pairwise.hinge,
        pairwise.rpo, pairwise.simpo, pairwise.orpo,
        # P1
        pairwise.nca, pairwise.exo, pairwise.bco_pair, pairwise.sppo_hard, pairwise.apo_zero,
        pairwise.apo_down, pairwise.aot, pairwise.aot_pair, pairwise.discopop,
        pairwise.sigmoid_norm, pairwise.cpl,
    )
}

# TRL's loss_type names that differ from ours: suggested in errors, never silently accepted.
_TRL_NAMES = {"sigmoid": "dpo", "robust": "robust_dpo", "nca_pair": "nca", "exo_pair": "exo",
              "aot_unpaired": "aot_pair"}


def get_pairwise_loss(name: str) -> Callable[..., LossOutput]:
    """The loss registered as ``name``; ValueError with a suggestion for a misspelt name."""
    try:
        return PAIRWISE_LOSSES[name]
    except KeyError:
        pass
    known = ", ".join(sorted(PAIRWISE_LOSSES))
    if name in _TRL_NAMES:
        hint = f"; did you mean '{_TRL_NAMES[name]}'? (TRL calls it '{name}')"
    else:
        close = difflib.get_close_matches(name, PAIRWISE_LOSSES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown loss '{name}'{hint} (known: {known})")


def validate_hparams(name: str, hparams: dict) -> dict:
    """Check ``hparams`` against what loss ``name`` accepts; return them merged over defaults."""
    accepted = get_pairwise_loss(name).hparams
    check_hparams(name, accepted, hparams)
    return {**accepted, **hparams}


def combine_losses(specs: Sequence[tuple[str, float, dict | None]]) -> Callable[..., LossOutput]:
    """A loss with the shared signature whose losses are Σ weight_i · loss_i.

    specs: [(name, weight, hparams), ...], validated here so a bad config fails before training.
    Metrics: each loss's metrics prefixed with its name (``dpo/rewards/margin``) plus its mean
    loss (``dpo/loss``), and the first loss's ``rewards/*`` metrics unprefixed so dashboards
    keep their standard keys. reference_free = all parts are; needs_lengths = any part does.
    """
    if not specs:
        raise ValueError("combine_losses needs at least one (name, weight, hparams) spec")
    parts = []
    for name, weight, hparams in specs:
        hparams = dict(hparams or {})
        validate_hparams(name, hparams)
        parts.append((name, float(weight), get_pairwise_loss(name), hparams))
    names = [name for name, *_ in parts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"combine_losses: loss(es) {duplicates} listed twice; metric names "
                         "would collide")

    def combined(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
                 ref_rejected_logps=None, *, beta, chosen_lengths=None,
                 rejected_lengths=None) -> LossOutput:
        total: torch.Tensor | float = 0.0
        metrics: dict = {}
        for index, (name, weight, fn, hparams) in enumerate(parts):
            out = fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps, beta=beta, chosen_lengths=chosen_lengths,
                     rejected_lengths=rejected_lengths, **hparams)
            total = total + weight * out.losses
            metrics[f"{name}/loss"] = out.losses.detach().mean()
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
            if index == 0:
                metrics.update({k: v for k, v in out.metrics.items() if k.startswith("rewards/")})
        return LossOutput(total, metrics)

    combined.__name__ = combined.__qualname__ = "+".join(names)
    return mark_loss_properties(
        combined,
        reference_free=all(fn.reference_free for _, _, fn, _ in parts),
        needs_lengths=any(fn.needs_lengths for _, _, fn, _ in parts),
        hparams={},
    )
