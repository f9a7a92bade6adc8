#!/usr/bin/env python3
"""Regenerate the README's measured figures from the latest runs, between marker comments.

    python scripts/readme_figures.py                      # README.md from runs/demo-*/ and runs/bench/
    python scripts/readme_figures.py --check              # exit 1 (and show the diff) if README is stale
    python scripts/readme_figures.py --demo runs/demo-20260101-120000/summary.json --vs-trl runs/bench/vs_trl.json

Each block sits between ``<!-- figures:NAME ... -->`` and ``<!-- /figures:NAME -->`` and is rewritten
whole; everything outside the markers is left as it is. Blocks:

* ``demo``: ``summary.json`` of the newest ``<runs>/demo-*`` (``make demo``), plus its ``environment.json``;
* ``vs_trl``: ``<runs>/bench/vs_trl.json`` (``make bench``): the prefopt / TRL ratios against their targets;
* ``vs_trl_135m``: ``<runs>/bench/vs_trl_135m.json`` (``make bench-135m``): the same at 135M parameters,
  plus the DPO step's share of the bf16 matmul peak.

A block whose source is missing is left unchanged (with a note on stderr) unless its source was
named with a flag. Errors (unreadable JSON, a missing field) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- figures:(?P<name>[a-z0-9_]+)\b[^>]*-->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)

# (prefopt phase, TRL phase) -> README row label, steps/s target (>=), peak RSS target (<=)
VS_TRL_ROWS = {
    ("prefopt_dpo", "trl_dpo"): ("DPO, prefopt (cached reference) vs TRL default", 3.0, 0.6),
    ("prefopt_dpo", "trl_dpo_precomp"): ("DPO, prefopt (cached reference) vs TRL `precompute_ref_log_probs=True`",
                                         1.5, 0.6),
    ("prefopt_dpo_live", "trl_dpo"): ("DPO, prefopt (live reference) vs TRL default", None, None),
    ("prefopt_grpo", "trl_grpo"): ("GRPO (4 generations, 32 new tokens)", 2.0, None),
}

# the 135M comparison (benchmarks/vs_trl_135m.py); targets from issue 14, on the like-precision rows
VS_TRL_135M_ROWS = {
    ("prefopt_dpo_bf16", "trl_dpo"): ("DPO, bf16: prefopt bf16-mixed vs TRL default (bf16 + checkpointing)", 3.0, 0.5),
    ("prefopt_dpo_bf16_ckpt", "trl_dpo"): ("DPO, bf16 + gradient checkpointing on both sides: prefopt vs TRL default",
                                           3.0, 0.5),
    ("prefopt_dpo_bf16", "trl_dpo_tuned"): ("DPO, bf16: prefopt vs TRL tuned (no checkpointing, precomputed "
                                            "reference)", 2.0, None),
    ("prefopt_dpo_fp32", "trl_dpo"): ("DPO: prefopt's default (fp32) vs TRL's default (bf16)", None, None),
    ("prefopt_dpo_fp32", "trl_dpo_fp32"): ("DPO, fp32: prefopt vs TRL tuned", None, None),
    ("prefopt_grpo_bf16", "trl_grpo"): ("GRPO (4 x 4 samples, 64 new tokens), bf16: prefopt vs TRL default", 3.0, None),
    ("prefopt_grpo_fp32", "trl_grpo"): ("GRPO: prefopt's default (fp32) vs TRL's default (bf16)", None, None),
    ("prefopt_grpo_fp32", "trl_grpo_fp32"): ("GRPO, fp32: prefopt vs TRL", None, None),
}
BF16_PEAK_TARGET = 0.40  # the DPO training step's achieved weight-matmul FLOP/s / the bf16 matmul peak


class FiguresError(Exception):
    """A source file that cannot give its figures (the message names the file and the field)."""


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FiguresError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FiguresError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FiguresError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def field(data: dict, dotted: str, source: Path):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise FiguresError(f"{source}: missing field '{dotted}'")
        node = node[part]
    return node


def latest(pattern: str, root: Path) -> Path | None:
    """The newest file matching ``pattern`` under ``root`` (by modification time)."""
    found = [p for p in root.glob(pattern) if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


# --------------------------------------------------------------------------- blocks


def render_demo(summary_path: Path) -> str:
    s = read_json(summary_path)

    def g(key: str):
        return field(s, key, summary_path)

    objective, loss = g("objective"), str(s.get("loss", "dpo")).upper()
    rows = [("SFT", g("sft.gold_reward"), 0.5, 0.0),
            (loss, g("dpo.gold_reward"), g("dpo.win_rate_vs_sft"), g("dpo.kl_to_sft"))]
    lines = [f"| policy | gold {objective} | win rate vs SFT | KL to SFT (nats/seq) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {gold:.3f} | {win:.3f} | {kl:.2f} |" for name, gold, win, kl in rows]
    env_path = summary_path.parent / "environment.json"
    env = read_json(env_path) if env_path.is_file() else {}
    machine = ""
    if env.get("cpu_count"):
        machine = f" on {env['cpu_count']} CPU cores"
        if env.get("load_avg_1m") is not None:
            machine += f" (load average {env['load_avg_1m']:g} at the end)"
    pairs = field(s, "preference_data.pairs", summary_path)
    flipped = field(s, "preference_data.flipped", summary_path)
    lines += ["", f"From `{summary_path.as_posix()}` (`prefopt demo`, seed {s.get('seed', 0)}): {pairs} preference "
                  f"pairs ({flipped} labels flipped), {g('seconds'):g} s wall{machine}."]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None, target: float | None, higher_is_better: bool) -> tuple[str, bool | None]:
    if value is None:
        return "–", None
    met = None if target is None else (value >= target if higher_is_better else value <= target)
    text = f"{value:.2f}x"
    return (f"**{text}**" if met else text), met


def _ratio_table(ratios: list[dict], rows: dict) -> list[str]:
    lines = ["| workload | steps/s | peak RSS | target |", "|---|---:|---:|---|"]
    for r in ratios:
        key = (r.get("prefopt"), r.get("trl"))
        label, steps_target, rss_target = rows.get(key, (r.get("comparison", " vs ".join(map(str, key))), None, None))
        steps, steps_met = _ratio(r.get("steps_per_s_ratio"), steps_target, True)
        rss, rss_met = _ratio(r.get("peak_rss_ratio"), rss_target, False)
        goals = ([f"≥ {steps_target}x"] if steps_target else []) + ([f"≤ {rss_target}x"] if rss_target else [])
        met = all(m is True for m, t in ((steps_met, steps_target), (rss_met, rss_target)) if t)
        target = ", ".join(goals) + (": met" if met else ": **not met**") if goals else "–"
        lines.append(f"| {label} | {steps} | {rss} | {target} |")
    return lines


def _provenance(data: dict, path: Path) -> str:
    about = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items() if v)
    machine = data.get("machine", {})
    if machine.get("cpus"):
        about += f"; {machine['cpus']} CPU cores"
    if machine.get("load_avg_start"):
        about += f", load average {machine['load_avg_start'][0]:.1f} at the start"
    return f"From `{path.as_posix()}` ({about})."


def render_vs_trl(path: Path) -> str:
    data = read_json(path)
    lines = _ratio_table(field(data, "ratios", path), VS_TRL_ROWS)
    agree = data.get("dpo_loss_agreement", {}).get("trl_dpo")
    lines.append("")
    if agree:
        lines.append(f"The DPO loss curves of the two libraries agree to {agree['max_abs_diff']:.2g} over the "
                     f"{agree['steps']} steps.")
    lines.append(_provenance(data, path))
    return "\n".join(lines) + "\n"


def render_vs_trl_135m(path: Path) -> str:
    data = read_json(path)
    lines = _ratio_table(field(data, "ratios", path), VS_TRL_135M_ROWS)
    phases, peak = field(data, "phases", path), data.get("matmul_peak", {})
    lines.append("")
    dpo = phases.get("prefopt_dpo_bf16", {})
    if dpo.get("frac_bf16_peak") is not None:
        met = dpo["frac_bf16_peak"] >= BF16_PEAK_TARGET
        lines.append(f"prefopt's bf16-mixed DPO step does {dpo['achieved_gflops']:.0f} GFLOP/s of weight matmuls, "
                     f"{dpo['frac_bf16_peak']:.0%} of the bf16 matmul peak measured in the same run "
                     f"({peak.get('bf16_gflops', 0):.0f} GFLOP/s; target ≥ {BF16_PEAK_TARGET:.0%}: "
                     f"{'met' if met else '**not met**'}).")
    lines.append(_provenance(data, path))
    return "\n".join(lines) + "\n"


RENDERERS = {"demo": render_demo, "vs_trl": render_vs_trl, "vs_trl_135m": render_vs_trl_135m}


def sources(runs: Path, demo: Path | None, vs_trl: Path | None) -> dict[str, tuple[Path | None, bool]]:
    """Block name -> (source file or None, whether it was named explicitly)."""
    return {"demo": (demo or latest("demo-*/summary.json", runs), demo is not None),
            "vs_trl": (vs_trl or (runs / "bench" / "vs_trl.json"), vs_trl is not None),
            "vs_trl_135m": (runs / "bench" / "vs_trl_135m.json", False)}


def update(text: str, srcs: dict[str, tuple[Path | None, bool]], note=print) -> str:
    """``text`` with every marked block rewritten from its source."""
    names = [m.group("name") for m in BLOCK.finditer(text)]
    unknown = sorted(set(names) - set(RENDERERS))
    if unknown:
        raise FiguresError(f"README: unknown figures block(s) {', '.join(unknown)} (known: {', '.join(RENDERERS)})")
    if len(names) != len(set(names)):
        raise FiguresError("README: a figures block appears twice")

    def replace(m: re.Match) -> str:
        name = m.group("name")
        path, named = srcs.get(name, (None, False))
        if path is None or not Path(path).is_file():
            if named:
                raise FiguresError(f"{path}: no such file (figures:{name})")
            note(f"figures:{name}: no source ({path or 'none found'}); left unchanged")
            return m.group(0)
        return m.group(1) + RENDERERS[name](Path(path)) + m.group(4)

    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", type=Path, default=Path("README.md"), help="file with the marked blocks")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="where the runs are (default runs/)")
    ap.add_argument("--demo", type=Path, help="a demo summary.json (default: the newest <runs>/demo-*/)")
    ap.add_argument("--vs-trl", type=Path, help="a vs_trl.json (default <runs>/bench/vs_trl.json)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README is stale")
    args = ap.parse_args(argv)
    try:
        old = args.readme.read_text(encoding="utf-8")
        if not BLOCK.search(old):
            raise FiguresError(f"{args.readme}: no <!-- figures:NAME --> ... <!-- /figures:NAME --> blocks")
        new = update(old, sources(args.runs, args.demo, args.vs_trl), note=lambda m: print(m, file=sys.stderr))
    except (FiguresError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if new == old:
        print(f"{args.readme}: figures up to date")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   str(args.readme), f"{args.readme} (regenerated)"))
        return 1
    tmp = args.readme.with_name(args.readme.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(args.readme)
    print(f"{args.readme}: figures rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
