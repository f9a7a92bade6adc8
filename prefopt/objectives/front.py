"""Bookkeeping of a Pareto-front sweep: the simplex grid of preference vectors, one :class:`FrontPoint`
per evaluated vector (objective means ± standard error, training cost) and ``front.json``.

``front.json`` (written atomically after every point, so a sweep can resume)::

    {"version": 1, "method": "soups", "objectives": ["informativeness", "brevity"],
     "reference": [-0.1, -0.1], "reference_source": "config" | "default", "hypervolume": 0.42,
     "shared_cost": {"gradient_steps": 400, "sampled_tokens": 0, "wall_seconds": 61.2},
     "total_cost": {...},
     "points": [{"weights": [0.25, 0.75], "means": {...}, "stderr": {...}, "n": 128,
                 "cost": {...}, "nondominated": true, "label": "runs/soup-0.25"}, ...]}

``shared_cost`` is what all points use once (the N trainings of a soup, the one RiC model); a point's
``cost`` is its own (its training for MORLHF or MODPO, its evaluation). Comparing methods at equal
cost reads ``total_cost``. Hypervolumes of different fronts are comparable only at one reference
point: :func:`common_reference`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from prefopt.errors import ConfigError, DataError
from prefopt.objectives.pareto import default_reference, hypervolume, nondominated

FORMAT_VERSION = 1
_KEY_DIGITS = 9  # weights equal to this many digits are the same grid point


def simplex_grid(m: int, n: int) -> list[tuple[float, ...]]:
    """Every w with w_i = k_i / n, k_i ≥ 0 integers summing to n: C(n + m − 1, m − 1) vectors, in
    lexicographic order of k. Each weight is one division k_i / n (no accumulated rounding)."""
    if m < 1 or n < 1:
        raise ConfigError(f"simplex grid: got {m} objectives and {n} steps, expected at least 1 of each")

    def compositions(total: int, parts: int):
        if parts == 1:
            yield (total,)
            return
        for k in range(total + 1):
            for rest in compositions(total - k, parts - 1):
                yield (k, *rest)

    return [tuple(k / n for k in ks) for ks in compositions(n, m)]


def weights_key(weights: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(w), _KEY_DIGITS) for w in weights)


@dataclass
class Cost:
    """Training cost: optimizer steps, tokens sampled from a policy (online methods), wall time, and
    the process CPU time (steadier than wall time on a shared machine)."""

    gradient_steps: int = 0
    sampled_tokens: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.gradient_steps + other.gradient_steps, self.sampled_tokens + other.sampled_tokens,
                    round(self.wall_seconds + other.wall_seconds, 3), round(self.cpu_seconds + other.cpu_seconds, 3))


def _stderr(values: Sequence[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@dataclass
class FrontPoint:
    """One evaluated preference vector: per-objective mean and standard error of the mean over the
    ``n`` held-out samples (None when n < 2), its cost, and whether no other point dominates it."""

    weights: tuple[float, ...]
    means: dict[str, float]
    stderr: dict[str, float | None]
    n: int
    cost: Cost = field(default_factory=Cost)
    nondominated: bool = False
    label: str = ""

    @classmethod
    def from_scores(cls, weights: Sequence[float], scores: Mapping[str, Sequence[float]],
                    objectives: Sequence[str], cost: Cost | None = None, label: str = "") -> "FrontPoint":
        missing = [o for o in objectives if o not in scores]
        if missing:
            raise ConfigError(f"front objectives: unknown objective(s) {missing} "
                              f"(available: {', '.join(scores) or 'none'})")
        values = {o: [float(v) for v in scores[o]] for o in objectives}
        sizes = {len(v) for v in values.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"front point {list(weights)}: objectives have {sorted(sizes)} samples, "
                             "expected the same non-zero number")
        return cls(tuple(float(w) for w in weights), {o: sum(v) / len(v) for o, v in values.items()},
                   {o: _stderr(v) for o, v in values.items()}, sizes.pop(), cost or Cost(), label=label)

    def vector(self, objectives: Sequence[str]) -> list[float]:
        return [self.means[o] for o in objectives]


@dataclass
class Front:
    """The points of one method's sweep, their non-dominated flags, the reference point and the
    hypervolume (maximization on every objective). Call :meth:`refresh` after adding points."""

    method: str
    objectives: tuple[str, ...]
    points: list[FrontPoint] = field(default_factory=list)
    reference: tuple[float, ...] | None = None
    reference_source: str = "default"
    hypervolume: float | None = None
    shared_cost: Cost = field(default_factory=Cost)

    def __post_init__(self):
        self.objectives = tuple(self.objectives)
        if self.reference is not None:
            self.reference = tuple(float(r) for r in self.reference)
            if len(self.reference) != len(self.objectives):
                raise ConfigError(f"front reference point: {list(self.reference)} has {len(self.reference)} values "
                                  f"for {len(self.objectives)} objectives ({', '.join(self.objectives)})")
            self.reference_source = "config"

    def find(self, weights: Sequence[float]) -> FrontPoint | None:
        key = weights_key(weights)
        return next((p for p in self.points if weights_key(p.weights) == key), None)

    def pending(self, grid: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
        """The grid's vectors not evaluated yet (what a resumed sweep still has to run)."""
        return [tuple(w) for w in grid if self.find(w) is None]

    def add(self, point: FrontPoint) -> None:
        """Add ``point`` (replacing an earlier one with the same weights) and update the non-dominated
        flags; the hypervolume is stale (None) until :meth:`refresh`, so a reference point the new
        point does not dominate fails there, after the caller has saved the point."""
        if len(point.weights) != len(self.objectives):
            raise ConfigError(f"front point weights {list(point.weights)}: expected {len(self.objectives)} values")
        missing = [o for o in self.objectives if o not in point.means]
        if missing:
            raise ConfigError(f"front point {list(point.weights)}: no mean for objective(s) {missing}")
        self.points = [p for p in self.points if weights_key(p.weights) != weights_key(point.weights)]
        self.points.append(point)
        self._flag_nondominated()
        self.hypervolume = None

    def matrix(self) -> list[list[float]]:
        return [p.vector(self.objectives) for p in self.points]

    def refresh(self, reference: Sequence[float] | None = None) -> None:
        """Recompute the non-dominated flags, the default reference (unless one was configured or is
        given here) and the hypervolume."""
        if reference is not None:
            self.reference, self.reference_source = tuple(float(r) for r in reference), "config"
        if not self.points:
            self.hypervolume = 0.0 if self.reference is not None else None
            return
        self._flag_nondominated()
        if self.reference_source == "default":
            self.reference = tuple(float(r) for r in default_reference(self.matrix()))
        self.hypervolume = hypervolume(self.matrix(), self.reference)

    def _flag_nondominated(self) -> None:
        if not self.points:
            return
        for point, flag in zip(self.points, nondominated(self.matrix())):
            point.nondominated = bool(flag)

    def total_cost(self) -> Cost:
        total = self.shared_cost
        for point in self.points:
            total = total + point.cost
        return total

    # ------------------------------------------------------------------ front.json

    def to_dict(self) -> dict:
        return {"version": FORMAT_VERSION, "method": self.method, "objectives": list(self.objectives),
                "reference": list(self.reference) if self.reference is not None else None,
                "reference_source": self.reference_source, "hypervolume": self.hypervolume,
                "shared_cost": asdict(self.shared_cost), "total_cost": asdict(self.total_cost()),
                "points": [dict(asdict(p), weights=list(p.weights)) for p in self.points]}

    def save(self, path: str | Path) -> Path:
        """Write ``front.json`` atomically (a crash never leaves a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "front.json") -> "Front":
        return _parse_front(data, source)

    @classmethod
    def load(cls, path: str | Path) -> "Front":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the front ({exc})") from None
        return _parse_front(data, str(path))


def _field(data: Mapping, key: str, source: str, where: str = ""):
    if not isinstance(data, Mapping) or key not in data:
        raise DataError(f"{source}: {where}missing field '{key}'")
    return data[key]


def _parse_cost(data, source: str, where: str) -> Cost:
    try:
        return Cost(int(data["gradient_steps"]), int(data["sampled_tokens"]), float(data["wall_seconds"]),
                    float(data.get("cpu_seconds", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: {where}: expected gradient_steps, sampled_tokens, wall_seconds ({exc})") from None


def _parse_point(data, objectives: Sequence[str], source: str, where: str) -> FrontPoint:
    means, stderr = _field(data, "means", source, where + "."), _field(data, "stderr", source, where + ".")
    missing = [o for o in objectives if o not in means or o not in stderr]
    if missing:
        raise DataError(f"{source}: {where}: no mean/stderr for objective(s) {missing}")
    extra = [o for o in means if o not in objectives and o in stderr]  # objectives evaluated but not swept
    return FrontPoint(tuple(float(w) for w in _field(data, "weights", source, where + ".")),
                      {o: float(means[o]) for o in [*objectives, *extra]},
                      {o: None if stderr[o] is None else float(stderr[o]) for o in [*objectives, *extra]},
                      int(_field(data, "n", source, where + ".")),
                      _parse_cost(_field(data, "cost", source, where + "."), source, f"{where}.cost"),
                      bool(data.get("nondominated", False)), str(data.get("label", "")))


def _parse_front(data: Mapping, source: str) -> Front:
    version = _field(data, "version", source)
    if version != FORMAT_VERSION:
        raise DataError(f"{source}: version {version!r}, expected {FORMAT_VERSION}")
    objectives = tuple(_field(data, "objectives", source))
    points = [_parse_point(p, objectives, source, f"points[{i}]") for i, p in enumerate(_field(data, "points", source))]
    reference = data.get("reference")
    front = Front(str(_field(data, "method", source)), objectives, points,
                  reference=reference if data.get("reference_source") == "config" else None,
                  shared_cost=_parse_cost(_field(data, "shared_cost", source), source, "shared_cost"))
    front._flag_nondominated()
    hv = data.get("hypervolume")
    front.hypervolume = None if hv is None else float(hv)
    if reference is not None and front.reference is None:
        front.reference = tuple(float(r) for r in reference)
    return front


def common_reference(fronts: Sequence[Front], margin: float = 0.1) -> tuple[float, ...]:
    """One reference point below every point of every front (to compare their hypervolumes)."""
    objectives = {f.objectives for f in fronts}
    if len(objectives) != 1:
        raise ConfigError(f"fronts: different objectives {sorted(objectives)}; compare fronts of the same objectives")
    rows = [row for f in fronts for row in f.matrix()]
    if not rows:
        raise ConfigError("fronts: no points to place a reference point under")
    return tuple(float(r) for r in default_reference(rows, margin))
