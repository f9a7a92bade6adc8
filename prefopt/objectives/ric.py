"""Rewards-in-context (RiC; Yang et al. 2024, reference code YangRui2015/RiC ``ric/``): one policy
conditioned on target scores written into its prompt, trained by SFT on score-labelled responses.

Text format (as the reference's ``Instructions_n`` / ``add_score_assistant``): after the prompt come,
for objectives 1..m in the order of :attr:`ScoreStats.objectives`, a tag and the *normalized*
target rounded to one decimal, separated by single spaces::

    review of the zenta phone: <rm1_score> 0.7 <rm2_score> -1.2

When the prompt ends with a response marker (``response_split``, e.g. ``"\\n\\nAssistant:"`` in the
reference's hh-rlhf prompts) the tags go before it, followed by one space:
``"\\n\\nHuman: hi <rm1_score> 0.7 <rm2_score> -1.2 \\n\\nAssistant:"``. For a conversational prompt
(a list of messages) the tags are appended to the last message's content. :func:`parse_conditioned`
inverts :func:`condition_prompt` exactly (the original prompt and the rounded targets); a prompt that
already holds ``<rm1_score>`` is refused.

Normalization (``prepare_dataset_with_rewards.py`` lines 185-200): per objective, a z-score with the
mean and population standard deviation over all labelled responses (chosen and rejected).
The inference-time mapping from a preference vector to targets, the random targets of the online
rounds and the rejection-sampling filter follow ``ric/utils.py`` (functions cited below).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from prefopt.errors import ConfigError, DataError
from prefopt.objectives.scalarize import check_simplex

TAG = "<rm{}_score>"
DECIMALS = 1  # the reference rounds every score in a prompt to one decimal
MAPPINGS = ("linf", "l2", "linear")


def _round(x: float, decimals: int = DECIMALS) -> float:
    return round(float(x), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0


def format_targets(targets: Sequence[float], decimals: int = DECIMALS) -> str:
    """``"<rm1_score> 0.7 <rm2_score> -1.2"``."""
    return " ".join(f"{TAG.format(i + 1)} {_round(t, decimals):.{decimals}f}" for i, t in enumerate(targets))


def _condition_text(text: str, targets: Sequence[float], decimals: int, response_split: str) -> str:
    if not targets:
        raise ConfigError("RiC targets: expected at least one target score")
    if TAG.format(1) in text:
        raise DataError(f"RiC prompt already holds target tags: {text[:80]!r}")
    tags = format_targets(targets, decimals)
    if response_split and text.endswith(response_split):
        return f"{text[:-len(response_split)]} {tags} {response_split}"
    return f"{text} {tags}"


def condition_prompt(prompt: str | list[dict], targets: Sequence[float], *, decimals: int = DECIMALS,
                     response_split: str = "") -> str | list[dict]:
    """The prompt with the target tags (see the module docstring for the format)."""
    if isinstance(prompt, list):
        if not prompt:
            raise DataError("RiC prompt: empty conversation")
        last = dict(prompt[-1], content=_condition_text(prompt[-1]["content"], targets, decimals, ""))
        return [*prompt[:-1], last]
    return _condition_text(prompt, targets, decimals, response_split)


_VALUE = r"(-?\d+(?:\.\d+)?)"


def _parse_text(text: str) -> tuple[str, tuple[float, ...]]:
    start = text.find(f" {TAG.format(1)} ")
    if start < 0:
        raise DataError(f"RiC prompt has no {TAG.format(1)} tag: {text[:80]!r}")
    values, pos = [], start
    while True:
        match = re.compile(re.escape(f" {TAG.format(len(values) + 1)} ") + _VALUE).match(text, pos)
        if match is None:
            break
        values.append(float(match.group(1)))
        pos = match.end()
    rest = text[pos:]
    if rest and not rest.startswith(" "):
        raise DataError(f"RiC prompt: unexpected text after the target tags: {rest[:40]!r}")
    return text[:start] + rest[1:], tuple(values)


def parse_conditioned(prompt: str | list[dict]) -> tuple[str | list[dict], tuple[float, ...]]:
    """(original prompt, targets) of a conditioned prompt: the inverse of :func:`condition_prompt`."""
    if isinstance(prompt, list):
        original, targets = _parse_text(prompt[-1]["content"])
        return [*prompt[:-1], dict(prompt[-1], content=original)], targets
    return _parse_text(prompt)


# --------------------------------------------------------------------------- normalization


def _labelled(rows: Sequence[Mapping], objectives: Sequence[str], row_offset: int = 0) -> list[float]:
    """Every score of the ``objectives`` in ``rows`` (pairwise rows give two each), failing on a row
    without one."""
    values = []
    for i, row in enumerate(rows):
        scores = row.get("scores") or {}
        for objective in objectives:
            if objective not in scores:
                raise DataError(f"RiC data: row {row_offset + i + 1} has no '{objective}' score "
                                f"(it has: {', '.join(scores) or 'none'})")
            v = scores[objective]
            values.extend(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return values


@dataclass(frozen=True)
class ScoreStats:
    """Per-objective normalization of scores: ``(s − mean) / std``; ``low``/``high`` are the smallest and
    largest normalized score of the data (the range the preference mapping and random targets use)."""

    objectives: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def normalize(self, scores: Mapping[str, float]) -> tuple[float, ...]:
        missing = [o for o in self.objectives if o not in scores]
        if missing:
            raise DataError(f"RiC scores: missing objective(s) {missing} (have: {', '.join(scores)})")
        return tuple((float(scores[o]) - m) / s for o, m, s in zip(self.objectives, self.mean, self.std))

    def to_dict(self) -> dict:
        return {"objectives": list(self.objectives), "mean": list(self.mean), "std": list(self.std),
                "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "RiC stats") -> "ScoreStats":
        try:
            fields = {k: tuple(data[k]) for k in ("objectives", "mean", "std", "low", "high")}
        except (KeyError, TypeError) as exc:
            raise DataError(f"{source}: expected keys objectives, mean, std, low, high ({exc})") from None
        sizes = {k: len(v) for k, v in fields.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"{source}: lists of different lengths {sizes}")
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "ScoreStats":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()), str(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read RiC stats ({exc})") from None


def score_stats(rows: Sequence[Mapping], objectives: Sequence[str]) -> ScoreStats:
    """Normalization statistics from score-labelled rows (sft/unpaired: one score per objective;
    pairwise: [chosen, rejected], both counted)."""
    if not objectives:
        raise ConfigError("RiC objectives: expected at least one objective")
    _labelled(rows, objectives)  # every row has every objective, checked before any statistics
    mean, std, low, high = [], [], [], []
    for objective in objectives:
        values = torch.tensor(_labelled(rows, [objective]), dtype=torch.float64)
        if values.numel() == 0:
            raise DataError(f"RiC data: no '{objective}' scores")
        m, s = float(values.mean()), float(values.std(correction=0))
        if not s > 0:
            raise DataError(f"RiC data: objective '{objective}' has the same score {m:g} on all "
                            f"{values.numel()} responses; it cannot condition prompts")
        z = (values - m) / s
        mean.append(m), std.append(s), low.append(float(z.min())), high.append(float(z.max()))
    return ScoreStats(tuple(objectives), tuple(mean), tuple(std), tuple(low), tuple(high))


# --------------------------------------------------------------------------- targets


def targets_for_preference(weights: Sequence[float], stats: ScoreStats, method: str = "linf",
                           decimals: int = DECIMALS) -> tuple[float, ...]:
    """Normalized targets for a preference vector w (``ric/utils.py`` ``map_rewards_from_preference``).

    ``linf`` (the paper's mapping): the objective with the largest weight gets its maximum ``high``;
    each other objective i gets ``min(m·w_i, 1)·(high_i − low_i) + low_i``. ``l2``:
    ``w_i/‖w‖₂·(high_i − low_i) + low_i`` (the reference's evaluation script). ``linear``:
    ``w_i·(high_i − low_i) + low_i``. The reference takes low/high from a standard-normal sample; here
    they are the normalized data's range.
    """
    w = check_simplex(weights, key="RiC preference").tolist()
    m = len(stats.objectives)
    if len(w) != m:
        raise ConfigError(f"RiC preference: got {len(w)} weights for {m} objectives ({', '.join(stats.objectives)})")
    if method not in MAPPINGS:
        raise ConfigError(f"RiC mapping: got '{method}', expected one of {', '.join(MAPPINGS)}")
    norm = sum(x * x for x in w) ** 0.5
    top = max(range(m), key=lambda i: w[i])  # the first of ties, as np.argmax
    out = []
    for i, (lo, hi) in enumerate(zip(stats.low, stats.high)):
        if method == "linf":
            fraction = 1.0 if i == top else min(m * w[i], 1.0)
        else:
            fraction = w[i] / norm if method == "l2" else w[i]
        out.append(_round(fraction * (hi - lo) + lo, decimals))
    return tuple(out)


def sample_targets(n: int, stats: ScoreStats, generator: torch.Generator | None = None,
                   decimals: int = DECIMALS) -> torch.Tensor:
    """(n, m) random targets for an online round (``ric/utils.py`` ``sample_goals``): uniform in
    [low_i, high_i], then every objective but the lowest-drawn one is set to its maximum, so each
    sample asks to trade one objective off against the best of the others."""
    m = len(stats.objectives)
    low, high = torch.tensor(stats.low, dtype=torch.float64), torch.tensor(stats.high, dtype=torch.float64)
    draws = torch.rand((n, m), generator=generator, dtype=torch.float64) * (high - low) + low
    draws = torch.round(draws, decimals=decimals)
    keep = torch.nn.functional.one_hot(draws.argmin(dim=1), m).bool()
    return torch.where(keep, draws, torch.round(high, decimals=decimals).expand(n, m)).float()


def above_quantile(scores: torch.Tensor, quantile: float = 0.7) -> torch.Tensor:
    """(N,) bool: rows whose score is ≥ the ``quantile`` of its column on *any* objective
    (``ric/utils.py`` ``select_data_with_quantile``; numpy's default linear interpolation)."""
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"RiC quantile: got {quantile}, expected a value in [0, 1]")
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.dim() != 2:
        raise ValueError(f"RiC scores: expected an (N, m) matrix, got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    thresholds = torch.quantile(scores, quantile, dim=0)
    return (scores >= thresholds).any(dim=1)


# --------------------------------------------------------------------------- SFT rows


def _responses(row: Mapping) -> list[tuple[object, Mapping[str, float]]]:
    scores = row.get("scores") or {}
    if "chosen" in row:
        return [(row[key], {o: v[i] for o, v in scores.items()}) for i, key in enumerate(("chosen", "rejected"))]
    return [(row["completion"], scores)]


def ric_sft_rows(rows: Sequence[Mapping], stats: ScoreStats, *, decimals: int = DECIMALS,
                 response_split: str = "") -> list[dict]:
    """SFT rows ``{prompt: conditioned prompt, completion, scores}`` from score-labelled rows: sft or
    unpaired rows give one, pairwise rows two (chosen and rejected, as the reference concatenates
    both). Targets are the response's own normalized scores; ``scores`` keeps the raw ones."""
    out = []
    for i, row in enumerate(rows):
        for response, scores in _responses(row):
            try:
                targets = stats.normalize(scores)
            except DataError as exc:
                raise DataError(f"RiC data: row {i + 1}: {exc}") from None
            out.append({"prompt": condition_prompt(row["prompt"], targets, decimals=decimals,
                                                   response_split=response_split),
                        "completion": response, "scores": {o: float(scores[o]) for o in stats.objectives}})
    return out


def rows_above_quantile(rows: Sequence[Mapping], objectives: Sequence[str], quantile: float = 0.7) -> list:
    """The rows with one score per objective (sft/unpaired form) that :func:`above_quantile` keeps."""
    matrix = []
    for i, row in enumerate(rows):
        values = _labelled([row], objectives, row_offset=i)
        if len(values) != len(objectives):
            raise DataError(f"RiC data: row {i + 1}: expected one score per objective, got {row.get('scores')}")
        matrix.append(values)
    keep = above_quantile(torch.tensor(matrix, dtype=torch.float64).reshape(len(rows), len(objectives)), quantile)
    return [r for r, k in zip(rows, keep.tolist()) if k]
