"""Scalarization of reward vectors for the objectives layer: re-exported from
:mod:`prefopt.losses.scalarize`, the one implementation (it sits below ``models/`` and ``rollout/``,
which use it too)."""
from prefopt.losses.scalarize import (  # noqa: F401
    COMBINE_MODES, ENSEMBLE_AGGREGATIONS, SIMPLEX_TOLERANCE, aggregate_members, chebyshev, check_simplex,
    combine_weighted, ensemble_mean, ensemble_min, linear, uncertainty_weighted,
)
