"""What a report reads from run directories: metrics, evaluations, config, environment, samples.

A *run* is a folder with ``metrics.jsonl`` (what ``prefopt train`` writes). A folder given to the
report that is not a run but holds runs one level down (the demo: ``sft/`` and ``dpo/``; a
``prefopt compare`` folder) is a *source* of several runs; its own ``summary.json``,
``samples.jsonl`` and ``environment.json`` belong to the source.

``metrics.jsonl`` stores non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"``; they
are read back as floats. Unreadable lines (e.g. a half-written last line) and repeated steps
(a resumed run) are counted in :attr:`Run.notes`, never fatal; the last record of a step wins.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from prefopt.errors import DataError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.jsonl"
ENVIRONMENT_FILE = "environment.json"
EVAL_PREFIX = "eval/"
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "-infinity": -math.inf}

Series = list[tuple[int, float]]


@dataclass
class Run:
    """One run's records, split into per-key series."""

    name: str
    path: Path
    train: dict[str, Series] = field(default_factory=dict)   # training-step metrics
    evals: dict[str, Series] = field(default_factory=dict)   # eval/* metrics (prefix stripped)
    static: dict[str, float] = field(default_factory=dict)   # step-0 statistics (e.g. data/*)
    notes: list[str] = field(default_factory=list)           # what the reader skipped or noticed
    config: dict | None = None
    config_text: str | None = None
    environment: dict | None = None

    @property
    def last_step(self) -> int:
        steps = [s for series in self.train.values() for s, _ in series]
        return max(steps) if steps else 0


@dataclass
class Source:
    """One RUN_DIR argument: its runs plus the folder-level summary and samples."""

    path: Path
    runs: list[Run]
    summary: dict | None = None
    samples: list[dict] = field(default_factory=list)
    environment: dict | None = None


def to_number(value):
    """A metrics value as float/int; non-finite strings become floats; other strings stay strings."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and value.strip().lower() in NON_FINITE:
        return NON_FINITE[value.strip().lower()]
    return value


def read_records(path: Path) -> tuple[list[dict], int]:
    """The JSON records of a ``metrics.jsonl`` and the number of unreadable lines."""
    records, bad = [], 0
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append({k: to_number(v) for k, v in rec.items()})
            else:
                bad += 1
    return records, bad


def split_records(run: Run, records: list[dict]) -> None:
    """Fill ``run.train``/``evals``/``static``/``notes`` from the records of its metrics file."""
    train: dict[str, dict[int, float]] = {}
    evals: dict[str, dict[int, float]] = {}
    seen_train_steps: set[int] = set()
    repeated: set[int] = set()
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            run.notes.append(f"record without a step skipped: {sorted(rec)[:4]}")
            continue
        step = int(step)
        numeric = {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}
        for k, v in rec.items():
            if isinstance(v, str):
                run.notes.append(f"step {step}: {k} = {v}")
        is_eval = any(k.startswith(EVAL_PREFIX) for k in numeric)
        if is_eval:
            for k, v in numeric.items():
                evals.setdefault(k[len(EVAL_PREFIX):] if k.startswith(EVAL_PREFIX) else k, {})[step] = float(v)
        elif step == 0 and "loss" not in numeric:
            run.static.update({k: float(v) for k, v in numeric.items()})
        elif numeric:
            if step in seen_train_steps:
                repeated.add(step)
            seen_train_steps.add(step)
            for k, v in numeric.items():
                train.setdefault(k, {})[step] = float(v)
    if repeated:
        run.notes.append(f"{len(repeated)} steps logged more than once (the last record is shown): "
                         + _ranges(sorted(repeated)))
    run.train = {k: sorted(v.items()) for k, v in train.items()}
    run.evals = {k: sorted(v.items()) for k, v in evals.items()}
    for k, series in {**run.train, **{EVAL_PREFIX + k: s for k, s in run.evals.items()}}.items():
        bad = sum(1 for _, v in series if not math.isfinite(v))
        if bad:
            run.notes.append(f"{k}: {bad} non-finite value{'s' if bad > 1 else ''} (not drawn)")


def _ranges(steps: list[int]) -> str:
    parts, i = [], 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
            j += 1
        parts.append(str(steps[i]) if i == j else f"{steps[i]}-{steps[j]}")
        i = j + 1
    return ", ".join(parts[:8]) + (" ..." if len(parts) > 8 else "")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def load_run(path: Path, name: str) -> Run:
    path = Path(path)
    run = Run(name=name, path=path)
    records, bad = read_records(path / METRICS_FILE)
    if bad:
        run.notes.append(f"{bad} unreadable line{'s' if bad > 1 else ''} in {METRICS_FILE} skipped")
    split_records(run, records)
    cfg = path / CONFIG_FILE
    if cfg.is_file():
        run.config_text = cfg.read_text(encoding="utf-8", errors="replace")
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else None
        except yaml.YAMLError:
            run.notes.append(f"{CONFIG_FILE} is not valid YAML (shown as text)")
    run.environment = _read_json(path / ENVIRONMENT_FILE)
    return run


def load_samples(path: Path) -> list[dict]:
    """Rows of a ``samples.jsonl``: ``{"policy", "prompt", "response", "index", "scores": {...}}``."""
    if not path.is_file():
        return []
    rows, _ = read_records(path)
    for row in rows:
        row["scores"] = {k: to_number(v) for k, v in (row.get("scores") or {}).items()}
    return [r for r in rows if "policy" in r and "response" in r]


def run_dirs_of(path: Path) -> list[Path]:
    """``path`` itself when it is a run, else the runs one level below it in the order they
    started (``config.yaml`` is written at the start: the demo's sft before its dpo)."""
    if (path / METRICS_FILE).is_file():
        return [path]
    runs = [p for p in path.iterdir() if p.is_dir() and (p / METRICS_FILE).is_file()]
    return sorted(runs, key=lambda p: (_started(p), p.name))


def _started(run_dir: Path) -> float:
    marker = run_dir / CONFIG_FILE if (run_dir / CONFIG_FILE).is_file() else run_dir / METRICS_FILE
    return marker.stat().st_mtime


def load_sources(paths: list[Path]) -> list[Source]:
    """Read every RUN_DIR; run names are unique (``source/run`` when several sources hold runs)."""
    sources = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise DataError(f"{path}: not a directory (expected a run directory with {METRICS_FILE})")
        found = run_dirs_of(path)
        if not found:
            raise DataError(f"{path}: no {METRICS_FILE} here or in its sub-folders (is it a run directory?)")
        sources.append((path, found))
    several = len(sources) > 1
    names = _unique([(src.name if d == src else (f"{src.name}/{d.name}" if several else d.name))
                     for src, found in sources for d in found])
    out, i = [], 0
    for src, found in sources:
        runs = [load_run(d, names[i + j]) for j, d in enumerate(found)]
        i += len(found)
        env = _read_json(src / ENVIRONMENT_FILE)
        for run in runs:
            run.environment = run.environment or env
        out.append(Source(src, runs, summary=_read_json(src / SUMMARY_FILE),
                          samples=load_samples(src / SAMPLES_FILE), environment=env))
    return out


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


# --------------------------------------------------------------------------- metric families

def family(key: str) -> str:
    """``rewards/margin`` -> ``rewards``; ``kl_coef`` -> ``kl``; ``loss`` -> ``loss``."""
    if "/" in key:
        return key.split("/", 1)[0]
    m = re.match(r"[A-Za-z0-9]+", key)
    return m.group(0) if m else key


def families(keys: list[str], merged: str = "main") -> dict[str, list[str]]:
    """Keys grouped by :func:`family`; families of one key share the ``merged`` group (first)."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(family(k), []).append(k)
    main = [k for g in groups.values() if len(g) == 1 for k in g]
    rest = {name: sorted(g) for name, g in sorted(groups.items()) if len(g) > 1}
    return ({merged: _main_order(main)} if main else {}) | rest


def _main_order(keys: list[str]) -> list[str]:
    first = [k for k in ("loss", "lr", "grad_norm") if k in keys]
    return first + sorted(k for k in keys if k not in first)


def ordered_keys(runs: list[Run], attr: str) -> list[str]:
    """Keys of ``run.<attr>`` across runs, in first-seen order."""
    seen: dict[str, None] = {}
    for run in runs:
        for k in getattr(run, attr):
            seen.setdefault(k, None)
    return list(seen)


def final_value(series: Series) -> float | None:
    """The value at the last logged step (non-finite included: it is what the run ended with)."""
    return series[-1][1] if series else None
