"""Scalarization of reward vectors, in one place: weighted sum, Chebyshev, ensemble aggregations,
and the weighted combinations of scorer components that drive online training.

All functions take an (N, m) matrix of rewards (rows = samples, columns = objectives or ensemble
members, larger is better) and return (N,) scalar rewards, larger is better. Imports only torch
(and prefopt.errors). It lives in ``losses/`` (the lowest layer of pure tensor math) so that
``models/reward.py`` (ensemble aggregation) and ``rollout/scorers.py`` (reward combination) use it
without importing upward; ``prefopt.objectives.scalarize`` re-exports it for the objectives layer.
"""
from __future__ import annotations

from typing import Sequence

import torch

from prefopt.errors import ConfigError

SIMPLEX_TOLERANCE = 1e-6


def check_simplex(weights: Sequence[float], *, key: str = "weights") -> torch.Tensor:
    """The weights as a tensor, refused unless they are ≥ 0 and sum to 1 (within 1e-6)."""
    w = torch.as_tensor(list(weights), dtype=torch.float32)
    if w.numel() == 0:
        raise ConfigError(f"{key}: expected at least one weight")
    if bool((w < 0).any()):
        raise ConfigError(f"{key}: got {list(weights)}, expected non-negative weights")
    if abs(float(w.sum()) - 1.0) > SIMPLEX_TOLERANCE:
        raise ConfigError(f"{key}: got {list(weights)} (sum {float(w.sum()):.6g}), expected weights summing to 1")
    return w


def _weights(rewards: torch.Tensor, weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=rewards.dtype)
    if w.shape != rewards.shape[-1:]:
        raise ValueError(f"{w.numel()} weights for {rewards.shape[-1]} objectives")
    return w


def linear(rewards: torch.Tensor, weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i r_i`` per row."""
    return rewards @ _weights(rewards, weights)


def chebyshev(rewards: torch.Tensor, weights: Sequence[float] | torch.Tensor,
              ideal: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Negated weighted Chebyshev distance to the ideal point z: ``−max_i w_i |r_i − z_i|``.

    Maximizing it reaches every Pareto-optimal point for some w, also on non-convex parts of the
    front that a weighted sum cannot reach (Miettinen 1999, ch. 3.4).
    """
    w = _weights(rewards, weights)
    z = torch.as_tensor(ideal, dtype=rewards.dtype)
    if z.shape != rewards.shape[-1:]:
        raise ValueError(f"ideal point has {z.numel()} values for {rewards.shape[-1]} objectives")
    return -(w * (rewards - z).abs()).amax(dim=-1)


def ensemble_mean(rewards: torch.Tensor) -> torch.Tensor:
    return rewards.mean(-1)


def ensemble_min(rewards: torch.Tensor) -> torch.Tensor:
    """Worst-case member (WCO, Coste et al. 2024)."""
    return rewards.min(-1).values


def uncertainty_weighted(rewards: torch.Tensor, uwo_lambda: float = 1.0) -> torch.Tensor:
    """Mean minus λ · (population) variance across members (UWO, Coste et al. 2024)."""
    return rewards.mean(-1) - uwo_lambda * rewards.var(-1, correction=0)


ENSEMBLE_AGGREGATIONS = {"mean": ensemble_mean, "min": ensemble_min, "uwo": uncertainty_weighted}


def aggregate_members(rewards: torch.Tensor, how: str = "mean", uwo_lambda: float = 1.0) -> torch.Tensor:
    """(N, k) member rewards → (N,) by ``how`` in :data:`ENSEMBLE_AGGREGATIONS`."""
    if rewards.dim() == 1:
        rewards = rewards.unsqueeze(-1)
    if how not in ENSEMBLE_AGGREGATIONS:
        raise ConfigError(f"reward aggregation: got '{how}', expected one of {', '.join(ENSEMBLE_AGGREGATIONS)}")
    if how == "uwo":
        return uncertainty_weighted(rewards, uwo_lambda)
    return ENSEMBLE_AGGREGATIONS[how](rewards)


COMBINE_MODES = ("sum", "mean", "min", "uwo")


def combine_weighted(rewards: torch.Tensor, weights: Sequence[float] | torch.Tensor, mode: str = "sum",
                     uwo_lambda: float = 1.0) -> torch.Tensor:
    """(N, m) scorer components and their weights → (N,) training reward: ``sum`` Σ w_i r_i,
    ``mean`` Σ w_i r_i / Σ w_i, ``min`` min_i w_i r_i (worst case, WCO), ``uwo`` mean − λ·variance of
    the w_i r_i (uncertainty-weighted)."""
    if mode not in COMBINE_MODES:
        raise ConfigError(f"online.reward_combine: got '{mode}', expected one of {', '.join(COMBINE_MODES)}")
    w = _weights(rewards, weights)
    if mode == "sum":
        return linear(rewards, w)
    if mode == "mean":
        return linear(rewards, w) / (float(w.sum()) or 1.0)
    weighted = rewards * w
    return ensemble_min(weighted) if mode == "min" else uncertainty_weighted(weighted, uwo_lambda)
