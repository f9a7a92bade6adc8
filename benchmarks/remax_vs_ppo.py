"""ReMax vs PPO: peak memory and time per step on the same task, side by side in one run.

The ReMax paper (Li et al. 2023) claims about half of PPO's GPU memory and about twice its speed
per iteration: ReMax drops the critic (a second trainable model with its optimizer state) at the
cost of one greedy generation per prompt. This script measures what prefopt's implementations
cost on the reviews lab task, each phase in its own process so peak RSS is that phase's alone:

- ``remax``: policy + frozen reference, one sampled and one greedy response per prompt;
- ``ppo``: value head on the policy trunk (``online.critic: shared``), one sampled response;
- ``ppo_separate``: a full critic model next to the policy (``online.critic: separate``), the
  setup the paper compares against.

Every phase runs the same prompts per step, one PPO epoch (one optimizer step per rollout, as
ReMax), and the same reward (gold positivity + 0.5 brevity, which varies even for an untrained
model). Reported per phase: mean step time (first step excluded), generation and learner time,
peak RSS, RSS above the after-import baseline, and an analytic model-state count (parameters,
gradients and AdamW moments of trainable weights plus frozen reference weights).

    python benchmarks/remax_vs_ppo.py --out runs/bench/remax_vs_ppo.json
    python benchmarks/remax_vs_ppo.py --model tiny:llama-5m --steps 4 --out /tmp/r.json   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = {
    "remax": {"algo": {"name": "remax"}},
    "ppo": {"algo": {"name": "ppo"}, "online": {"critic": "shared"}},
    "ppo_separate": {"algo": {"name": "ppo"}, "online": {"critic": "separate"}},
}


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run_phase(name: str, args) -> dict:
    import torch

    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.train.config import TrainConfig
    from prefopt.train.metrics import read_metrics

    torch.set_num_threads(args.threads)
    # import everything a run touches before the baseline reading
    import transformers  # noqa: F401
    from prefopt.cli.run import task_tokenizer
    task_tokenizer("reviews", {})
    baseline = _rss_mib()
    data = {
        "model": {"name_or_path": args.model},
        "data": {"task": "reviews", "eval_examples": 0},
        "optim": {"name": "adamw", "lr": 1e-5},
        "train": {"steps": args.steps, "progress": False, "lr_schedule": "constant", "threads": args.threads,
                  "seed": 0},
        "rollout": {"max_new_tokens": args.max_new_tokens, "batch_size": 64},
        "online": {"prompts_per_step": args.prompts, "num_generations": 1, "epochs": 1, "minibatches": 1,
                   "kl_coef": 0.05, "eval_kl": False,
                   "reward": [{"name": "gold", "weights": {"positivity": 1.0, "brevity": 0.5}}]},
        "output_dir": args.workdir, "run_name": name,
    }
    for section, values in PHASES[name].items():
        data.setdefault(section, {}).update(values)
    from prefopt.cli.config import apply_override
    for override in args.set or []:
        apply_override(data, override)
    cfg = from_dict(TrainConfig, data)
    t0 = time.perf_counter()
    out = run_train(cfg)
    wall = time.perf_counter() - t0
    rows = [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "loss" in r]
    timed = rows[1:] if len(rows) > 1 else rows
    mean = lambda key: sum(float(r.get(key, 0.0)) for r in timed) / len(timed)  # noqa: E731
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    # analytic model state: the trained model as saved + what the phase adds
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    n_policy = sum(p.numel() for p in load_model(ModelConfig(name_or_path=args.model), task_tokenizer("reviews", {})).parameters())
    n_trainable = n_policy * (2 if name == "ppo_separate" else 1)
    state_mib = (n_trainable * 4 * 4 + n_policy * 4) / 2 ** 20  # fp32 weights+grads+2 Adam moments; frozen reference
    return {"phase": name, "steps": len(rows), "time_per_step_s": mean("time/step_s"),
            "generation_s_per_step": mean("rollout/gen_seconds"), "learner_tokens_per_s": mean("learner/tokens_per_s"),
            "generation_tokens_per_s": mean("rollout/gen_tokens_per_s"), "peak_rss_mib": peak,
            "rss_above_baseline_mib": peak - baseline, "baseline_rss_mib": baseline,
            "model_state_mib": state_mib, "policy_parameters": n_policy, "trainable_parameters": n_trainable,
            "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:llama-25m", help="policy (tiny:NAME or a model directory)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per phase (the first is not timed)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step (one sample each)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ", ".join(PHASES))
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override for every phase, e.g. perf.padding_free=false (repeatable)")
    p.add_argument("--out", default="runs/bench/remax_vs_ppo.json")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.phase:  # child process: one phase, result as JSON on the last stdout line
        print(json.dumps(run_phase(args.phase, args)))
        return 0

    results = []
    with tempfile.TemporaryDirectory() as work:
        for phase in args.phases.split(","):
            cmd = [sys.executable, __file__, "--phase", phase, "--workdir", work, "--model", args.model,
                   "--steps", str(args.steps), "--prompts", str(args.prompts),
                   "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
            cmd += [f"--set={o}" for o in args.set or []]
            print(f"[{phase}] running {args.steps} steps on {args.model} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return proc.returncode
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"[{phase}] {res['time_per_step_s']:.2f} s/step, peak RSS {res['peak_rss_mib']:.0f} MiB "
                  f"({res['rss_above_baseline_mib']:.0f} above baseline), model state {res['model_state_mib']:.0f} MiB",
                  flush=True)
    by = {r["phase"]: r for r in results}
    summary = {"model": args.model, "prompts_per_step": args.prompts, "max_new_tokens": args.max_new_tokens,
               "threads": args.threads, "overrides": args.set or [], "phases": results}
    if "remax" in by:
        for ppo in ("ppo", "ppo_separate"):
            if ppo in by:
                summary[f"remax_vs_{ppo}"] = {
                    "memory_ratio_rss_above_baseline": by["remax"]["rss_above_baseline_mib"] / by[ppo]["rss_above_baseline_mib"],
                    "memory_ratio_model_state": by["remax"]["model_state_mib"] / by[ppo]["model_state_mib"],
                    "speedup_time_per_step": by[ppo]["time_per_step_s"] / by["remax"]["time_per_step_s"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("remax_vs")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
