"""Data-parallel scaling on this machine: 1 process vs ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each measurement is one ``prefopt train`` run (a subprocess; the 2-process ones under torchrun) of
a tiny Llama with the SAME per-rank batch, so 2 processes do twice the work per step: DPO on lab
pairs (DDP and FSDP2) and GRPO on reviews prompts (DDP; generation included). Reported per run:
the median step time over the steps after ``--warmup``, steps/s and global tokens/s (the loop's
``tokens/s``: tokens of all ranks over rank 0's step time); per setting the median over
``--rounds`` rounds, the settings of a round run back to back in an order reversed every other
round. Scaling efficiency = tokens/s(2 processes) / (2 × tokens/s(1 process)).

Run:  .venv/bin/python benchmarks/distributed.py            # ~6 min on 2 idle CPU cores
      .venv/bin/python benchmarks/distributed.py --quick    # smoke run
Writes runs/bench/distributed.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the lab pairs the tests use (gold-labelled reviews pairs)


def _config(kind: str, out: Path, pairs: Path, steps: int, strategy: str) -> dict:
    cfg = {"model": {"name_or_path": "tiny:llama-1m"}, "optim": {"lr": 1e-3},
           "train": {"steps": steps, "batch_size": 8, "progress": False, "lr_schedule": "constant", "threads": 1},
           "algo": {"name": kind}, "dist": {"strategy": strategy}, "output_dir": str(out)}
    if kind == "dpo":
        cfg["data"] = {"task": "reviews", "path": str(pairs), "eval_examples": 4, "max_length": 96,
                       "max_prompt_length": 32}
    else:
        cfg["data"] = {"task": "reviews", "eval_examples": 2}
        cfg.update(rollout={"max_new_tokens": 16},
                   online={"prompts_per_step": 4, "num_generations": 4, "num_prompts": 64, "eval_num_samples": 1,
                           "loss_aggregation": "token_mean", "reward": [{"name": "dist_reward_fns:words"}]})
    return cfg


def run_one(kind: str, procs: int, strategy: str, work: Path, pairs: Path, steps: int, warmup: int,
            tag: str) -> dict:
    run = work / tag
    config = work / f"{tag}.yaml"
    config.write_text(yaml.safe_dump(_config(kind, work, pairs, steps, strategy) | {"run_name": tag}))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cli = ["-m", "prefopt.cli.main", "train", str(config)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cli]
           if procs > 1 else [sys.executable, *cli])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps_ = [r for r in rows if "loss" in r and "time/step_s" in r][warmup:]
    step_s = statistics.median(r["time/step_s"] for r in steps_)
    return {"step_s": step_s, "steps_per_s": 1.0 / step_s,
            "tokens_per_s": statistics.median(r["tokens/s"] for r in steps_)}


SETTINGS = [("dpo", 1, "ddp"), ("dpo", 2, "ddp"), ("dpo", 2, "fsdp2"), ("grpo", 1, "ddp"), ("grpo", 2, "ddp")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--quick", action="store_true", help="1 round of 4 steps")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "distributed.json"))
    args = p.parse_args(argv)
    rounds, steps = (1, 4) if args.quick else (args.rounds, args.steps)
    from offline_fixtures import lab_pairs, write_jsonl

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = write_jsonl(work / "pairs.jsonl", lab_pairs(96))
        for r in range(rounds):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            for kind, procs, strategy in order:
                key = f"{kind}/{procs}x/{strategy}" if procs > 1 else f"{kind}/1x"
                results.setdefault(key, []).append(
                    run_one(kind, procs, strategy, work, pairs, steps, min(args.warmup, steps - 1), f"{key}-{r}"
                            .replace("/", "_")))
                print(key, results[key][-1], flush=True)
    table = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    for kind in ("dpo", "grpo"):
        one = table[f"{kind}/1x"]["tokens_per_s"]
        for key in [k for k in table if k.startswith(f"{kind}/2x")]:
            table[key]["efficiency"] = table[key]["tokens_per_s"] / (2 * one)
    report = {"machine": f"{os.cpu_count()} CPU cores (shared)", "rounds": rounds, "steps": steps,
              "per_rank_batch": {"dpo": "8 pairs", "grpo": "4 prompts x 4 samples"}, "results": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for key, row in table.items():
        eff = f"  efficiency {row['efficiency']:.2f}" if "efficiency" in row else ""
        print(f"{key:16s} step {row['step_s']:.3f} s  {row['steps_per_s']:.2f} steps/s  "
              f"{row['tokens_per_s']:.0f} tokens/s{eff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
