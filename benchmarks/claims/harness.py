"""The claims harness: one claim = arms × seeds → mean ± SE per arm → a verdict from the claim's rule.

A claim script builds a :class:`Claim` (statement, source, metrics, rule, arms from its YAML
under ``configs/``, and ``run_seed``, which trains and evaluates every available arm for one
seed) and calls :func:`main`. The harness owns everything else: the command line
(``--quick``, ``--seeds``, ``--arms``, ``--out``, ``--threads``), which arms this build can run,
the seed loop, the statistics, the verdict, and the outputs (``<out>/<claim>.json`` with every
seed's figures, the command, the machine and the wall/CPU time; ``<out>/<claim>.png``; a table
on stdout).

An arm whose config needs an algorithm or a config key this build does not have
(``requires: {algo: hypo, keys: [online.mixture]}`` in the YAML) is reported as
``not available on this build`` and never run; adding it later is a change to the YAML only.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:  # claim scripts and tests import the harness by file location
    sys.path.insert(0, str(HERE))

from stats import NOT_AVAILABLE, Summary, summarize  # noqa: E402

DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class Arm:
    """One arm of a claim: a prefopt train config fragment plus the harness's own keys."""

    name: str
    config: dict = field(default_factory=dict)    # merged over the claim's ``base`` section
    requires: dict = field(default_factory=dict)  # {algo: NAME} and/or {keys: [dotted.key, ...]}
    options: dict = field(default_factory=dict)   # claim-specific keys (data_source, x, label, ...)


@dataclass
class ClaimSpec:
    """A claim's YAML: shared ``base`` config, ``quick`` overrides, ``settings``, and its arms."""

    base: dict
    quick: dict
    settings: dict
    arms: list[Arm]


@dataclass
class SeedContext:
    seed: int
    quick: bool
    work_dir: Path
    arms: list[Arm]        # the arms to run (available on this build, selected by --arms)
    spec: ClaimSpec
    threads: int
    log: Callable[[str], None] = print

    def settings(self) -> dict:
        """The claim's settings, with the ``quick`` section's ``settings`` over them in --quick mode."""
        return deep_merge(self.spec.settings, self.spec.quick.get("settings", {}) if self.quick else {})

    def train_dict(self, arm: Arm, runtime: dict) -> dict:
        """base ← quick.base (in --quick mode) ← the arm's config ← ``runtime`` (paths, seed, names)."""
        data = deep_merge(self.spec.base, self.spec.quick.get("base", {}) if self.quick else {})
        data = deep_merge(data, arm.config)
        if self.quick:
            data = deep_merge(data, self.spec.quick.get("arms", {}).get(arm.name, {}))
        return deep_merge(data, runtime)


@dataclass
class SeedResult:
    arms: dict[str, dict[str, float]]       # arm -> metric -> value
    info: dict = field(default_factory=dict)  # data statistics, timings, ... of this seed


@dataclass
class Claim:
    name: str                 # file stem: benchmarks/claims/<name>.py, configs/<name>.yaml, outputs
    statement: str
    source: str
    metrics: tuple[str, ...]  # reported per arm; the rule names the ones that decide
    rule: object              # a stats rule: .judge(table, status) -> Judgement
    run_seed: Callable[[SeedContext], SeedResult]
    setup: str = ""           # one paragraph: what is trained and measured
    plot: Callable | None = None  # (report, path) -> None; default: bars per metric


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_spec(path: Path) -> ClaimSpec:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - {"base", "quick", "settings", "arms"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} (expected base, quick, settings, arms)")
    arms = []
    for name, body in (raw.get("arms") or {}).items():
        body = dict(body or {})
        arms.append(Arm(name, body.pop("config", {}) or {}, body.pop("requires", {}) or {}, body))
    return ClaimSpec(raw.get("base") or {}, raw.get("quick") or {}, raw.get("settings") or {}, arms)


def _config_has_key(dotted: str) -> bool:
    import dataclasses
    import typing

    from prefopt.train.config import TrainConfig
    cls = TrainConfig
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return True


def availability(arm: Arm) -> str | None:
    """None when this build can run ``arm``; otherwise why not (starting with NOT_AVAILABLE)."""
    algo = arm.requires.get("algo")
    if algo:
        from prefopt.cli.builders import BUILDERS
        if algo not in BUILDERS:
            return f"{NOT_AVAILABLE} (algo.name '{algo}' is not in prefopt's algorithm table)"
    for key in arm.requires.get("keys", []):
        if not _config_has_key(key):
            return f"{NOT_AVAILABLE} (config key '{key}' does not exist)"
    return None


def machine_info() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch_version,
            "cpu": cpu, "cpu_count": os.cpu_count(), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def parse_args(name: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"benchmarks/claims/{name}.py")
    p.add_argument("--quick", action="store_true", help="tiny budgets (the test suite's smoke run)")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated seeds")
    p.add_argument("--arms", default="", help="comma-separated subset of the arms (default: all)")
    p.add_argument("--out", default=None, help=f"output folder (default runs/claims/{name}[-quick])")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: expected distinct integers, got '{text}'")
    return seeds


def summarize_arms(per_seed: list[SeedResult], metrics) -> dict[str, dict[str, Summary]]:
    arms = list(dict.fromkeys(a for r in per_seed for a in r.arms))
    return {arm: {m: summarize([r.arms[arm].get(m) for r in per_seed if arm in r.arms]) for m in metrics}
            for arm in arms}


def run_claim(claim: Claim, argv=None, log=print) -> dict:
    """Run ``claim`` as its command line asks; write JSON + PNG; print the table; return the report."""
    args = parse_args(claim.name, argv)
    seeds = parse_seeds(args.seeds)
    spec = load_spec(HERE / "configs" / f"{claim.name}.yaml")
    out = Path(args.out or ROOT / "runs" / "claims" / (claim.name + ("-quick" if args.quick else "")))
    out.mkdir(parents=True, exist_ok=True)
    wanted = [a for a in args.arms.split(",") if a]
    unknown = set(wanted) - {a.name for a in spec.arms}
    if unknown:
        raise SystemExit(f"--arms: unknown arm(s) {sorted(unknown)} (arms: {', '.join(a.name for a in spec.arms)})")
    status, runnable = {}, []
    for arm in spec.arms:
        if wanted and arm.name not in wanted:
            status[arm.name] = "not selected (--arms)"
            continue
        reason = availability(arm)
        status[arm.name] = reason or "ran"
        if reason is None:
            runnable.append(arm)
    import torch
    torch.set_num_threads(args.threads)
    t0, cpu0, load0 = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    per_seed = []
    for seed in seeds:
        log(f"[{claim.name}] seed {seed}: arms {', '.join(a.name for a in runnable)}")
        ctx = SeedContext(seed, args.quick, out / f"seed{seed}", runnable, spec, args.threads, log)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        t_seed = time.perf_counter()
        res = claim.run_seed(ctx)
        res.info["wall_s"] = round(time.perf_counter() - t_seed, 1)
        per_seed.append(res)
    table = summarize_arms(per_seed, claim.metrics)
    judgement = claim.rule.judge(table, status)
    report = {
        "claim": claim.name, "statement": claim.statement, "source": claim.source, "setup": claim.setup,
        "command": "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/claims/{claim.name}.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick, "seeds": seeds, "threads": args.threads,
        "verdict": judgement.verdict, "why": judgement.why,
        "arms_not_run": {a: st for a, st in status.items() if st != "ran"},
        "parts": [{"verdict": p.verdict, "why": p.why} for p in judgement.parts],
        "rule": repr(claim.rule),
        "arms": {a.name: {"status": status[a.name], "requires": a.requires, "options": a.options,
                          "config": a.config} for a in spec.arms},
        "summary": {arm: {m: {"mean": s.mean, "se": s.se, "n": s.n, "values": list(s.values)}
                          for m, s in row.items()} for arm, row in table.items()},
        "per_seed": [{"seed": s, "arms": r.arms, "info": r.info} for s, r in zip(seeds, per_seed)],
        "machine": {**machine_info(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu_seconds() - cpu0, 1),
    }
    json_path, png_path = out / f"{claim.name}.json", out / f"{claim.name}.png"
    json_path.write_text(json.dumps(_finite(report), indent=2, default=_json_default, allow_nan=False))
    (claim.plot or bar_plot)(report, png_path)
    log(format_table(report))
    log(f"wrote {json_path} and {png_path}")
    return report


def _finite(obj):
    """The report with NaN/inf as null, so that the JSON is strict (no NaN tokens)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj):
    return str(obj)  # paths and other non-JSON values


def cell(s: dict, digits: int = 3) -> str:
    if s["n"] == 0:
        return "—"
    if s["n"] < 2 or s["se"] is None or (isinstance(s["se"], float) and math.isnan(s["se"])):
        return f"{s['mean']:.{digits}g}"
    return f"{s['mean']:.{digits}g} ± {s['se']:.2g}"


def arm_order(report: dict) -> list[str]:
    """Rows of a report's table: arms that are no config of their own (e.g. a start point) first,
    then the YAML's arms in their order."""
    return [*[a for a in report["summary"] if a not in report["arms"]], *report["arms"]]


def arms_markdown(report: dict) -> list[str]:
    """The report's arms × metrics as markdown rows (mean ± SE; an arm that did not run, its status)."""
    metrics = list(next(iter(report["summary"].values()), {}).keys())
    lines = ["| arm | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for arm in arm_order(report):
        if arm in report["summary"]:
            row = report["summary"][arm]
            lines.append(f"| {arm} | " + " | ".join(cell(row[m]) for m in metrics) + " |")
        else:
            lines.append(f"| {arm} | {report['arms'][arm]['status']} |" + " |" * (len(metrics) - 1))
    return lines


def format_table(report: dict) -> str:
    m = report["machine"]
    not_run = "".join(f"; arm {a} not run: {st}" for a, st in report["arms_not_run"].items())
    return "\n".join([
        f"claim: {report['statement']} ({report['source']})", *arms_markdown(report),
        f"seeds {report['seeds']}, mean ± standard error over seeds; wall {report['wall_s']} s, CPU {report['cpu_s']} s, "
        f"load average {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f} on {m['cpu_count']} cores",
        f"verdict: {report['verdict']}{not_run} — {report['why']}"])


def plt_agg():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def bar_plot(report: dict, path: Path) -> None:
    """One panel per metric: a bar per arm (mean), error bar ± SE, a dot per seed; absent arms marked."""
    plt = plt_agg()
    metrics = list(next(iter(report["summary"].values()), {}).keys())
    arms = list(report["arms"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, arm in enumerate(arms):
            s = report["summary"].get(arm, {}).get(m)
            if not s or s["n"] == 0:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            se = s["se"] if s["se"] is not None and not math.isnan(s["se"]) else 0.0
            ax.bar(i, s["mean"], yerr=se, color="C0", alpha=0.6, capsize=3)
            ax.plot([i] * len(s["values"]), s["values"], "k.", ms=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=30, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{report['claim']}: {report['verdict']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(claim: Claim, argv=None) -> int:
    run_claim(claim, argv)
    return 0
