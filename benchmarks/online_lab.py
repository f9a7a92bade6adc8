"""Collect the online lab results: before/after numbers and the reward–KL curve of each run.

Each run directory (written by ``prefopt train configs/online/...``) holds its config and its
``metrics.jsonl`` with evaluations every ``train.eval_every`` steps (gold reward, KL to the
initial policy). The starting point (step 0: the SFT model, KL 0) is evaluated here with the same
code path (the algorithm's own ``evaluate``), once per distinct config.

    python benchmarks/online_lab.py runs/ppo-reviews runs/rloo-reviews runs/remax-reviews \\
        runs/online-dpo-reviews --objective positivity --plot docs/figures/online_reward_kl.png \\
        --out runs/bench/online_reviews.json
    python benchmarks/online_lab.py runs/grpo-arithmetic runs/rloo-arithmetic --objective correct \\
        --out runs/bench/online_arithmetic.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def start_point(run_dir: Path) -> dict:
    """Evaluate the run's initial policy exactly as the run evaluates (same prompts, seeds, reference)."""
    import torch

    from prefopt.cli.builders import build_algorithm, build_model
    from prefopt.cli.config import load_config
    from prefopt.cli.run import resolve_tokenizer
    from prefopt.train.config import TrainConfig

    cfg = load_config(TrainConfig, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    tokenizer = resolve_tokenizer(cfg)
    model = build_model(cfg, tokenizer)
    algorithm, _ = build_algorithm(cfg, model, tokenizer)
    return algorithm.evaluate(model)


def read_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r], [r for r in rows if any(k.startswith("eval/") for k in r)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--objective", default="positivity", help="gold objective on the y axis")
    p.add_argument("--plot", help="write the reward-vs-KL figure here (PNG)")
    p.add_argument("--out", help="write the summary JSON here")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    key = f"gold/{args.objective}"
    summary, curves, starts = {}, {}, {}
    for run in map(Path, args.runs):
        train_rows, evals = read_run(run)
        import yaml
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        start_key = json.dumps([cfg["model"], cfg["data"], cfg["rollout"], cfg["online"]["eval_num_samples"],
                                cfg["online"]["eval_greedy"], cfg["train"]["seed"]], sort_keys=True, default=str)
        if evals and int(evals[0]["step"]) == 0:  # train.eval_on_start: the run evaluated its start itself
            starts[start_key] = {k[5:]: v for k, v in evals.pop(0).items() if k.startswith("eval/")}
        elif start_key not in starts:
            print(f"evaluating the starting policy of {run} ...", flush=True)
            starts[start_key] = start_point(run)
        start = {k: float(v) for k, v in starts[start_key].items()}
        start["kl_to_ref"] = 0.0
        points = [(0, start)] + [(int(r["step"]), {k[5:]: v for k, v in r.items() if k.startswith("eval/")}) for r in evals]
        name = cfg["algo"]["name"] if cfg["algo"]["name"] not in summary else cfg["run_name"]
        curves[name] = [(float(m.get("kl_to_ref", float("nan"))), float(m[key])) for _, m in points if key in m]
        times = [r["time/step_s"] for r in train_rows[1:]] or [r["time/step_s"] for r in train_rows]
        summary[name] = {
            "run": str(run), "steps": len(train_rows), "before": start, "after": points[-1][1],
            "curve": [{"step": s, "kl_to_ref": m.get("kl_to_ref"), args.objective: m.get(key),
                       **({"greedy_" + args.objective: m["greedy/" + key]} if "greedy/" + key in m else {})}
                      for s, m in points],
            "mean_step_s": sum(times) / len(times), "peak_rss_mib": max(r["memory/peak_rss_mib"] for r in train_rows),
            "samples_per_step": train_rows[0].get("rollout/samples"),
        }
        b, a = start.get(key), points[-1][1].get(key)
        extra = ""
        for other in sorted(k for k in start if k.startswith(key + "/pass@")):
            extra += f"; {other[len(key) + 1:]} {start[other]:.3f} -> {points[-1][1].get(other, float('nan')):.3f}"
        if "greedy/" + key in start:
            extra += f"; greedy {start['greedy/' + key]:.3f} -> {points[-1][1].get('greedy/' + key, float('nan')):.3f}"
        print(f"{name:14s} {args.objective} {b:.3f} -> {a:.3f}{extra}  KL {points[-1][1].get('kl_to_ref', float('nan')):.3f}"
              f"  ({len(train_rows)} steps, {summary[name]['mean_step_s']:.2f} s/step)")
    if args.plot:
        from prefopt.report.plots import reward_vs_kl
        fig = reward_vs_kl(curves, ylabel=f"gold {args.objective} (held-out prompts)")
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
