"""Statistics and verdict rules of the claims harness (pure Python: no torch, no prefopt).

Every claim is judged by a rule written in the claim's script. A rule compares arms through the
spread over seeds: the mean of each arm and its standard error (sample standard deviation over
seeds / sqrt(n)), and for a difference of two arms the combined standard error
sqrt(se_a² + se_b²). A difference larger than ``z`` combined standard errors decides; a smaller
one is ``inconclusive`` (the seeds cannot tell the arms apart).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
DEPENDS = "depends"
INCONCLUSIVE = "inconclusive"
NOT_AVAILABLE = "not available on this build"
NOT_MEASURED = "not measured"  # an arm of the rule failed or was not run (e.g. --arms)
VERDICTS = (HOLDS, DOES_NOT_HOLD, DEPENDS, INCONCLUSIVE, NOT_AVAILABLE, NOT_MEASURED)


@dataclass(frozen=True)
class Summary:
    """Mean and standard error of one metric of one arm over seeds."""

    mean: float
    se: float  # nan with fewer than two seeds
    n: int
    values: tuple[float, ...] = ()

    def __str__(self) -> str:
        if self.n == 0:
            return "no values"
        return f"{self.mean:.3g} ± {self.se:.2g}" if self.n > 1 else f"{self.mean:.3g} (1 seed)"


def summarize(values) -> Summary:
    """Mean ± standard error (sample standard deviation, n − 1, divided by sqrt(n))."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(float("nan"), float("nan"), 0, ())
    mean = sum(xs) / n
    if n < 2:
        return Summary(mean, float("nan"), 1, tuple(xs))
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return Summary(mean, math.sqrt(var / n), n, tuple(xs))


@dataclass(frozen=True)
class Judgement:
    verdict: str
    why: str
    parts: tuple["Judgement", ...] = ()


Table = dict  # arm -> metric -> Summary; an arm missing from it was not available or not run


def _missing(table: Table, status: dict, arms, metric: str) -> Judgement | None:
    for arm in arms:
        if arm not in table:
            reason = status.get(arm, "not run")
            verdict = NOT_AVAILABLE if reason.startswith(NOT_AVAILABLE) else NOT_MEASURED
            return Judgement(verdict, f"arm '{arm}': {reason}")
        if metric not in table[arm] or table[arm][metric].n == 0:
            return Judgement(NOT_MEASURED, f"arm '{arm}': no values of {metric}")
    return None


def _decide(d: float, se: float, z: float) -> str:
    if math.isnan(d) or math.isnan(se):
        return INCONCLUSIVE
    if d > z * se:
        return HOLDS
    if d < -z * se:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


@dataclass(frozen=True)
class Greater:
    """Claim: arm ``a`` beats arm ``b`` on ``metric`` (``lower_is_better`` flips it) by more than ``margin``.

    d = mean_a − mean_b − margin (sign flipped when lower is better); holds when d > z·SE,
    does not hold when d < −z·SE, inconclusive in between; SE = sqrt(se_a² + se_b²).
    """

    metric: str
    a: str
    b: str
    z: float = 2.0
    margin: float = 0.0
    lower_is_better: bool = False

    def judge(self, table: Table, status: dict) -> Judgement:
        missing = _missing(table, status, (self.a, self.b), self.metric)
        if missing:
            return missing
        sa, sb = table[self.a][self.metric], table[self.b][self.metric]
        sign = -1.0 if self.lower_is_better else 1.0
        d = sign * (sa.mean - sb.mean) - self.margin
        se = math.sqrt(sa.se ** 2 + sb.se ** 2)
        verdict = _decide(d, se, self.z)
        rel = "<" if self.lower_is_better else ">"
        why = (f"{self.metric}: {self.a} {sa} vs {self.b} {sb}; wanted {self.a} {rel} {self.b}"
               f"{f' by {self.margin:g}' if self.margin else ''}: difference {sign * (sa.mean - sb.mean):+.3g}, "
               f"combined SE {se:.2g} (decides beyond {self.z:g} SE) → {verdict}")
        return Judgement(verdict, why)


@dataclass(frozen=True)
class RatioBelow:
    """Claim: mean_a / mean_b of ``metric`` is below ``threshold``.

    SE of the ratio by the delta method, r·sqrt((se_a/m_a)² + (se_b/m_b)²); holds when
    r + z·SE < threshold, does not hold when r − z·SE > threshold, inconclusive otherwise.
    """

    metric: str
    a: str
    b: str
    threshold: float
    z: float = 2.0

    def judge(self, table: Table, status: dict) -> Judgement:
        missing = _missing(table, status, (self.a, self.b), self.metric)
        if missing:
            return missing
        sa, sb = table[self.a][self.metric], table[self.b][self.metric]
        r = sa.mean / sb.mean
        rel_a = sa.se / sa.mean if sa.n > 1 else float("nan")
        rel_b = sb.se / sb.mean if sb.n > 1 else float("nan")
        se = abs(r) * math.sqrt(rel_a ** 2 + rel_b ** 2)
        verdict = _decide(self.threshold - r, se, self.z)
        why = (f"{self.metric}: {self.a} / {self.b} = {r:.3g} ± {se:.2g} (wanted < {self.threshold:g}; "
               f"decides beyond {self.z:g} SE) → {verdict}")
        return Judgement(verdict, why)


def _combine_parts(parts: list[Judgement]) -> list[Judgement]:
    return [p for p in parts if p.verdict not in (NOT_AVAILABLE, NOT_MEASURED)]


def _join(whys) -> str:
    return "; ".join(dict.fromkeys(whys))  # one mention of an arm that is missing from several parts


@dataclass(frozen=True)
class AllOf:
    """Every part must hold: does not hold when one part does not, inconclusive when one is
    inconclusive. Parts whose arms are not available are left out (and named)."""

    parts: tuple
    label: str = ""

    def judge(self, table: Table, status: dict) -> Judgement:
        parts = [p.judge(table, status) for p in self.parts]
        live = _combine_parts(parts)
        if not live:
            return Judgement(parts[0].verdict if parts else NOT_MEASURED, _join(p.why for p in parts), tuple(parts))
        verdicts = {p.verdict for p in live}
        verdict = (DOES_NOT_HOLD if DOES_NOT_HOLD in verdicts else
                   HOLDS if verdicts == {HOLDS} else
                   DEPENDS if DEPENDS in verdicts else INCONCLUSIVE)
        return Judgement(verdict, f"{self.label + ': ' if self.label else ''}all of [{_join(p.why for p in parts)}]",
                         tuple(parts))


@dataclass(frozen=True)
class ByCondition:
    """The same claim under several conditions (e.g. noise levels, critic kinds): the common
    verdict when they agree, ``depends`` when it holds under some and not under others."""

    conditions: tuple  # ((label, rule), ...)

    def judge(self, table: Table, status: dict) -> Judgement:
        parts = [(label, rule.judge(table, status)) for label, rule in self.conditions]
        live = _combine_parts([j for _, j in parts])
        verdicts = {j.verdict for j in live}
        if not live:
            verdict = parts[0][1].verdict if parts else NOT_MEASURED
        elif len(verdicts) == 1:
            verdict = verdicts.pop()
        else:
            verdict = DEPENDS if HOLDS in verdicts else INCONCLUSIVE
        why = "; ".join(f"[{label}] {j.why}" for label, j in parts)
        return Judgement(verdict, why, tuple(j for _, j in parts))
