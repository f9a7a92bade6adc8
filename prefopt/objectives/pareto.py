"""Non-dominated sets and hypervolume of reward vectors (maximization), through moocore.

moocore (Lopez-Ibanez et al.) minimizes by default; every function here takes points where larger
is better on every objective and passes ``maximise=True``. moocore is imported inside the
functions so the rest of prefopt does not need it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from prefopt.errors import ConfigError


def _points(points) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"points: expected an (n, m) array, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points: non-finite objective values")
    return p


def nondominated(points) -> np.ndarray:
    """(n,) bool: True where no other point is ≥ on every objective and > on one (duplicates kept)."""
    import moocore

    p = _points(points)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(p, maximise=True, keep_weakly=True), dtype=bool)


def hypervolume(points, reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` and dominating ``reference`` (maximization).

    The reference must be strictly worse than every point on every objective; otherwise parts of
    the front would silently count for nothing, so that is an error.
    """
    import moocore

    p = _points(points)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != p.shape[1:]:
        raise ConfigError(f"reference point: {ref.tolist()} has {ref.size} values for {p.shape[1]} objectives")
    if len(p) == 0:
        return 0.0
    bad = ~(p > ref).all(axis=1)
    if bad.any():
        raise ConfigError(f"reference point {ref.tolist()} is not dominated by the front: point "
                          f"{p[bad][0].tolist()} is not better on every objective")
    return float(moocore.hypervolume(p, ref=ref, maximise=True))


def default_reference(points, margin: float = 0.1) -> np.ndarray:
    """A reference point just below the worst value of each objective (by ``margin`` of its range, or 0.1 of
    the magnitude for a flat objective), so every point counts."""
    p = _points(points)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1.0))
    return lo - margin * span
