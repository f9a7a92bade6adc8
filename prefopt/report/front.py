"""Non-dominated points: the front of a trade-off (reward vs KL, one gold objective vs another)."""
from __future__ import annotations


def non_dominated(points: list[tuple[float, float]], maximize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the points no other point dominates, sorted by the first coordinate.

    A point dominates another when it is at least as good in both coordinates and strictly
    better in one ("good" = larger where ``maximize`` says so, else smaller). Equal points are
    all kept.
    """
    sign = [1.0 if m else -1.0 for m in maximize]
    scored = [(sign[0] * x, sign[1] * y) for x, y in points]

    def dominates(a, b) -> bool:
        return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])

    keep = [i for i, p in enumerate(scored) if not any(dominates(q, p) for q in scored)]
    return sorted(keep, key=lambda i: (points[i][0], points[i][1]))
