"""Benchmark: every optimizer on the lab's SFT → DPO pipeline (``reviews``) with a tiny Llama.

For each optimizer it reports

* **optimizer-state bytes** as a fraction of AdamW's, on the 2-D weight matrices only
  (``optimizer_state_bytes(opt, params=<the 'matrix' group>)``) and in total, measured on the
  optimizer after the SFT run;
* **time per step**: the median ``time/step_s`` of its SFT steps (first step of each run left
  out), and its ratio to AdamW's measured in the same invocation. SFT runs are interleaved
  (round r runs every optimizer's r-th learning rate, AdamW first) so slow drifts of machine
  load hit all optimizers alike;
* **SFT quality**: the held-out SFT loss (per token) after ``--sft-steps`` steps at the best
  learning rate of a small per-optimizer grid (``--lr-sweep``), and its gap to AdamW's;
* **DPO quality**: to isolate the optimizer, every optimizer's DPO run starts from ONE shared
  checkpoint (AdamW's best SFT run) and trains on ONE shared preference set sampled from it;
  the result is the gold positivity of samples on held-out prompts
  (``prefopt.eval.lab.compare_policies``), the win rate against the SFT model and the KL to it.

It writes ``results.json``, ``results.md`` (the table) and ``plot.png`` under ``--out`` and
prints the table and the command that reproduces it.

Run (the documented run in docs/optimizers.md, ~25M parameters, ~35 min on one CPU core)::

    python benchmarks/optimizers.py --lr-sweep targets

Quick check (~1M parameters, a few steps; used by tests/test_bench_optimizers.py)::

    python benchmarks/optimizers.py --quick --optimizers adamw,lion
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefopt.cli.run import run_train, task_tokenizer  # noqa: E402
from prefopt.data.config import DataConfig  # noqa: E402
from prefopt.data.loaders import write_jsonl  # noqa: E402
from prefopt.errors import TrainingError  # noqa: E402
from prefopt.eval.lab import compare_policies, sample_policy  # noqa: E402
from prefopt.models.config import ModelConfig  # noqa: E402
from prefopt.models.loading import load_model  # noqa: E402
from prefopt.models.tiny import TINY_MODELS, TINY_PREFIX  # noqa: E402
from prefopt.optim import OptimConfig, available_optimizers, optimizer_state_bytes  # noqa: E402
from prefopt.rollout.engine import SamplingConfig  # noqa: E402
from prefopt.tasks import get_task  # noqa: E402
from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data  # noqa: E402
from prefopt.train.config import AlgoConfig, LoopConfig, TrainConfig  # noqa: E402
from prefopt.train.metrics import read_metrics  # noqa: E402

ORDER = ("adamw", "adamw_8bit", "galore_adamw", "apollo", "apollo_mini", "lion", "lion_8bit", "muon",
         "adafactor", "sophia", "sgd_sai")

# Learning-rate grids. Without --lr-sweep only the first value is run. The first value is the
# known-good default for a ~25M model; the others bracket it.
LR_GRID: dict[str, list[float]] = {
    "adamw": [1e-3, 3e-3],
    "adamw_8bit": [1e-3, 3e-3],
    "galore_adamw": [3e-3, 1e-2],   # GaLore's update is scaled by 0.25 (paper: lr 1e-2 at 60M)
    "apollo": [3e-3, 1e-3],
    "apollo_mini": [3e-3, 1e-2],
    "lion": [3e-4, 1e-4],           # Lion: 3-10x lower than AdamW
    "lion_8bit": [3e-4, 1e-4],
    "muon": [1e-3, 3e-3],           # adjusted_lr: AdamW-like rate for both parts (Moonlight's rule)
    "adafactor": [3e-2, 1e-2],      # cap of the relative step size
    "sophia": [6e-2, 2e-2],         # largest step per element = lr * clip (0.01)
    "sgd_sai": [1e-3, 3e-3],
}
# Optimizers whose SFT quality the targets compare with AdamW's (within 5%).
QUALITY_TARGETS = ("galore_adamw", "apollo", "adamw_8bit", "lion", "muon")
# Matrix-state targets: name -> (relation, bound)
STATE_TARGETS = {"galore_adamw": ("<=", 0.35), "adamw_8bit": ("<=", 0.3), "apollo_mini": ("<=", 0.05),
                 "lion": ("==", 0.5)}


def optimizer_options(name: str, hidden: int, proj_gap: int) -> dict:
    """Options per optimizer for a model of hidden size ``hidden`` (ranks at d/4)."""
    if name == "galore_adamw":
        return {"rank": max(1, hidden // 4), "update_proj_gap": proj_gap, "scale": 0.25}
    if name == "apollo":
        return {"rank": max(1, hidden // 4), "update_proj_gap": proj_gap}
    if name == "apollo_mini":
        return {"update_proj_gap": proj_gap}
    return {}


def optimizer_betas(name: str):
    if name in ("lion", "lion_8bit"):
        return (0.9, 0.99)  # the Lion paper's
    if name == "sophia":
        return (0.965, 0.99)  # the Sophia paper's
    return None


def make_optim(name: str, lr: float, hidden: int, proj_gap: int, weight_decay: float) -> OptimConfig:
    cfg = OptimConfig(name=name, lr=lr, weight_decay=weight_decay,
                      options=optimizer_options(name, hidden, proj_gap))
    betas = optimizer_betas(name)
    if betas is not None:
        cfg.betas = betas
    return cfg


def median_step_s(metrics_path: Path, skip_first: int = 1) -> list[float]:
    rows = [m for m in read_metrics(metrics_path) if "time/step_s" in m]
    return [m["time/step_s"] for m in rows if m["step"] > skip_first] or [m["time/step_s"] for m in rows]


def _drop_checkpoints(run_dir: Path) -> None:
    for ckpt in run_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)


def _fmt_lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny:llama-25m", help="tiny built-in model")
    p.add_argument("--optimizers", default="all", help="comma-separated names, or 'all' (adamw is always run)")
    p.add_argument("--sft-steps", type=int, default=50)
    p.add_argument("--dpo-steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16, help="SFT examples / DPO pairs per step")
    p.add_argument("--max-length", type=int, default=64, help="prompt+response tokens (reviews needs ~40)")
    p.add_argument("--sft-examples", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=5, help="SFT warmup steps (DPO: half)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-sweep", nargs="?", const="all", default="",
                   help="run the LR grid (and keep the best SFT eval loss) of: 'all', 'targets' (adamw and the "
                        "five optimizers with a quality target), or a comma-separated list; the others run the "
                        "grid's first rate")
    p.add_argument("--lr", action="append", default=[], metavar="NAME=LR[,LR...]",
                   help="override an optimizer's grid, e.g. --lr lion=1e-4,3e-4 (repeatable)")
    p.add_argument("--proj-gap", type=int, default=25, help="GaLore/APOLLO projection refresh interval (steps)")
    p.add_argument("--dpo-lr-scale", type=float, default=0.3,
                   help="DPO learning rate = this x the optimizer's tuned SFT rate")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument("--pref-prompts", type=int, default=256, help="prompts for the shared preference set (1 pair each)")
    p.add_argument("--flip-rate", type=float, default=0.1)
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts for the DPO gold reward")
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steadier timings on a shared machine; 0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-dpo", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="reduced run for smoke tests: tiny:llama-1m and a few steps (overrides sizes)")
    p.add_argument("--out", default="runs/bench/optimizers")
    args = p.parse_args(argv)
    if args.quick:
        args.model = "tiny:llama-1m"
        args.sft_steps, args.dpo_steps, args.batch_size = 4, 2, 4
        args.sft_examples, args.pref_prompts, args.eval_prompts, args.eval_samples = 64, 16, 8, 1
        args.max_new_tokens, args.warmup, args.proj_gap = 16, 1, 2
    return args


def grids(args) -> dict[str, list[float]]:
    names = list(ORDER) if args.optimizers == "all" else [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in LR_GRID]
    if unknown:
        raise SystemExit(f"unknown optimizer(s) {unknown}; known: {', '.join(ORDER)}")
    installed = set(available_optimizers())
    missing = [n for n in names if n not in installed]
    if missing:
        print(f"skipping optimizers whose library is not installed: {missing}", file=sys.stderr)
    names = ["adamw"] + [n for n in names if n != "adamw" and n in installed]
    sweep = set(ORDER) if args.lr_sweep == "all" else {"adamw", *QUALITY_TARGETS} if args.lr_sweep == "targets" \
        else {n.strip() for n in args.lr_sweep.split(",") if n.strip()}
    out = {n: (LR_GRID[n] if n in sweep else LR_GRID[n][:1]) for n in names}
    for item in args.lr:
        name, _, values = item.partition("=")
        if name not in out:
            raise SystemExit(f"--lr {item}: {name!r} is not among the optimizers run")
        out[name] = [float(v) for v in values.split(",")]
    return out


def run_benchmark(args, log=print) -> dict:
    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = args.model[len(TINY_PREFIX):] if args.model.startswith(TINY_PREFIX) else args.model
    hidden = TINY_MODELS[key][1]
    grid = grids(args)
    task = get_task("reviews")
    objective = task.default_objective
    tokenizer = task_tokenizer("reviews", {})
    loop = dict(batch_size=args.batch_size, seed=args.seed, progress=False, threads=args.threads,
                keep_checkpoints=1)
    data = dict(task="reviews", max_length=args.max_length)

    # ---- SFT: every optimizer × its LR grid, interleaved round by round ----
    sft_runs: dict[str, list[dict]] = {n: [] for n in grid}
    adamw_ckpt: dict[float, Path] = {}
    n_params = None
    for r in range(max(len(v) for v in grid.values())):
        for name, lrs in grid.items():
            if r >= len(lrs):
                continue
            lr = lrs[r]
            run_name = f"sft-{name}-lr{_fmt_lr(lr)}"
            cfg = TrainConfig(
                model=ModelConfig(name_or_path=args.model, init_seed=args.seed),
                data=DataConfig(num_examples=args.sft_examples, eval_examples=128, **data),
                optim=make_optim(name, lr, hidden, args.proj_gap, args.weight_decay),
                train=LoopConfig(steps=args.sft_steps, warmup_steps=args.warmup, **loop),
                algo=AlgoConfig(name="sft"), output_dir=str(out), run_name=run_name)
            shutil.rmtree(out / run_name, ignore_errors=True)
            t0 = time.perf_counter()
            rec = {"lr": lr, "options": cfg.optim.options, "betas": list(cfg.optim.betas), "run_dir": str(out / run_name)}
            try:
                res = run_train(cfg)
            except TrainingError as e:  # diverged (non-finite loss / gradient)
                rec.update(diverged=str(e), eval_loss=math.inf)
                log(f"  SFT {name:13s} lr={lr:.0e}: diverged ({e})")
                sft_runs[name].append(rec)
                _drop_checkpoints(out / run_name)
                continue
            opt = res.optimizer
            matrix = [p for g in opt.param_groups if g.get("kind") == "matrix" for p in g["params"]]
            if n_params is None:
                n_params = {"total": sum(p.numel() for g in opt.param_groups for p in g["params"]),
                            "matrix": sum(p.numel() for p in matrix)}
            steps_s = median_step_s(res.run_dir / "metrics.jsonl")
            rec.update(eval_loss=res.result.eval_metrics.get("loss", math.nan),
                       train_loss=res.result.last_metrics.get("loss"),
                       state_bytes_total=optimizer_state_bytes(opt),
                       state_bytes_matrix=optimizer_state_bytes(opt, params=matrix),
                       step_times=steps_s, median_step_s=statistics.median(steps_s),
                       seconds=round(time.perf_counter() - t0, 1))
            del res, opt, matrix
            if name == "adamw":
                adamw_ckpt[lr] = latest = max((out / run_name).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                rec["checkpoint"] = str(latest)
            else:
                _drop_checkpoints(out / run_name)
            sft_runs[name].append(rec)
            log(f"  SFT {name:13s} lr={lr:.0e}: eval loss {rec['eval_loss']:.4f}, "
                f"{rec['median_step_s']:.2f} s/step, state {rec['state_bytes_total'] / 2**20:.1f} MiB "
                f"({rec['seconds']:.0f} s)")

    results: dict[str, dict] = {}
    for name, runs in sft_runs.items():
        ok = [r for r in runs if math.isfinite(r["eval_loss"])]
        best = min(ok, key=lambda r: r["eval_loss"]) if ok else None
        results[name] = {"sft_runs": runs, "tuned_lr": best["lr"] if best else None, "sft": best}
    base = results["adamw"]["sft"]
    if base is None:
        raise SystemExit("AdamW diverged at every learning rate; nothing to compare with")
    for name, res in results.items():
        s = res["sft"]
        if s is None:
            continue
        times = [t for r in res["sft_runs"] for t in r.get("step_times", [])]
        base_times = [t for r in results["adamw"]["sft_runs"] for t in r.get("step_times", [])]
        res["time_per_step_s"] = statistics.median(times)
        res["time_vs_adamw"] = res["time_per_step_s"] / statistics.median(base_times)
        res["state_matrix_vs_adamw"] = s["state_bytes_matrix"] / base["state_bytes_matrix"]
        res["state_total_vs_adamw"] = s["state_bytes_total"] / base["state_bytes_total"]
        res["sft_eval_loss"] = s["eval_loss"]
        res["sft_loss_vs_adamw"] = s["eval_loss"] / base["eval_loss"] - 1.0
    # AdamW's shared SFT checkpoint: its best run; drop the others.
    shared_ckpt = Path(base["checkpoint"])
    for lr, ckpt in adamw_ckpt.items():
        if ckpt != shared_ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)

    # ---- DPO: every optimizer from the one AdamW SFT checkpoint on one preference set ----
    dpo_info = None
    if not args.skip_dpo:
        sft_path = shared_ckpt / "model"
        sft_model = load_model(ModelConfig(name_or_path=str(sft_path)))
        t0 = time.perf_counter()
        rows, pstats = make_preference_data(sft_model, tokenizer, task, PrefDataConfig(
            num_prompts=args.pref_prompts, samples_per_prompt=2, objective=objective, flip_rate=args.flip_rate,
            seed=args.seed, sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0,
                                                    batch_size=128)))
        write_jsonl(out / "preferences.jsonl", rows)
        eval_prompts = task.prompts("eval", args.eval_prompts, seed=args.seed + 1)
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0,
                                  num_samples=args.eval_samples, seed=args.seed + 2, batch_size=256)
        sft_samples = sample_policy(sft_model, tokenizer, task, eval_prompts, sampling)
        dpo_info = {"sft_checkpoint": str(shared_ckpt), "pairs": pstats.pairs, "flipped": pstats.flipped,
                    "labels_agreeing_with_gold": pstats.agree_with_gold,
                    "sft_gold_reward": sft_samples.mean(objective), "objective": objective,
                    "eval_prompts": args.eval_prompts, "eval_samples": args.eval_samples,
                    "seconds_data": round(time.perf_counter() - t0, 1)}
        log(f"  preference data: {pstats.pairs} pairs from AdamW's SFT model (lr {base['lr']:.0e}); "
            f"SFT gold {objective} {dpo_info['sft_gold_reward']:.3f}")
        for name, res in results.items():
            if res["tuned_lr"] is None:
                continue
            lr = res["tuned_lr"] * args.dpo_lr_scale
            run_name = f"dpo-{name}"
            cfg = TrainConfig(
                model=ModelConfig(name_or_path=str(sft_path)),
                data=DataConfig(path=str(out / "preferences.jsonl"), eval_examples=64, **data),
                optim=make_optim(name, lr, hidden, args.proj_gap, args.weight_decay),
                train=LoopConfig(steps=args.dpo_steps, warmup_steps=max(0, args.warmup // 2), **loop),
                algo=AlgoConfig(name="dpo", loss="dpo", beta=args.beta), output_dir=str(out), run_name=run_name)
            shutil.rmtree(out / run_name, ignore_errors=True)
            t0 = time.perf_counter()
            try:
                run = run_train(cfg)
            except TrainingError as e:
                res["dpo"] = {"lr": lr, "diverged": str(e)}
                log(f"  DPO {name:13s} lr={lr:.0e}: diverged ({e})")
                _drop_checkpoints(out / run_name)
                continue
            final = run.result.final_checkpoint
            steps_s = median_step_s(run.run_dir / "metrics.jsonl")
            acc = run.result.eval_metrics.get("rewards/accuracy")
            del run
            policy = load_model(ModelConfig(name_or_path=str(final / "model")))
            cmp = compare_policies(policy, sft_model, tokenizer, task, eval_prompts, objective, sampling, sft_samples)
            del policy
            _drop_checkpoints(out / run_name)
            res["dpo"] = {"lr": lr, "gold_reward": cmp["gold_reward"], "win_rate_vs_sft": cmp["win_rate_vs_ref"],
                          "kl_to_sft": cmp["kl_to_ref"], "eval_reward_accuracy": acc,
                          "median_step_s": statistics.median(steps_s), "seconds": round(time.perf_counter() - t0, 1)}
            log(f"  DPO {name:13s} lr={lr:.0e}: gold {objective} {cmp['gold_reward']:.3f} "
                f"(SFT {dpo_info['sft_gold_reward']:.3f}), win rate {cmp['win_rate_vs_ref']:.2f}, "
                f"KL {cmp['kl_to_ref']:.2f}")
        del sft_model
    shutil.rmtree(shared_ckpt, ignore_errors=True)  # the shared SFT checkpoint (~0.3 GB at 25M)

    summary = {
        "command": reproduce_command(args),
        "model": args.model, "parameters": n_params, "hidden_size": hidden,
        "settings": {k: v for k, v in vars(args).items() if k != "lr"} | {"lr_grid": grid},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine()},
        "dpo": dpo_info,
        "optimizers": results,
        "targets": check_targets(results),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    table = markdown_table(summary)
    (out / "results.md").write_text(table + "\n\n" + targets_markdown(summary["targets"]) +
                                    f"\n\nCommand: `{summary['command']}`\n")
    try:
        plot(summary, out / "plot.png")
    except Exception as e:  # the plot is a convenience; the numbers are in results.json
        log(f"plot failed: {e}")
    return summary


def check_targets(results: dict) -> dict:
    out = {}
    for name, (rel, bound) in STATE_TARGETS.items():
        v = results.get(name, {}).get("state_matrix_vs_adamw")
        if v is None:
            continue
        ok = v <= bound + 1e-9 if rel == "<=" else abs(v - bound) <= 0.01
        out[f"state/{name}"] = {"target": f"{rel} {bound}x", "measured": v, "met": ok}
    for name in QUALITY_TARGETS:
        v = results.get(name, {}).get("sft_loss_vs_adamw")
        if v is None:
            continue
        out[f"sft_quality/{name}"] = {"target": "SFT eval loss within 5% of AdamW's", "measured": v,
                                      "met": v <= 0.05}
    return out


def markdown_table(summary: dict) -> str:
    dpo = summary["dpo"]
    head = ["optimizer", "SFT lr (tuned)", "state 2-D / AdamW", "state total / AdamW", "s/step (SFT)",
            "time / AdamW", "SFT eval loss", "vs AdamW"]
    if dpo:
        head += ["DPO lr", f"DPO gold {dpo['objective']}", "win rate vs SFT", "KL to SFT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in summary["optimizers"].items():
        if r["sft"] is None:
            lines.append(f"| {name} | diverged at " + ", ".join(_fmt_lr(x["lr"]) for x in r["sft_runs"]) +
                         " |" + " |" * (len(head) - 2))
            continue
        grid = [x["lr"] for x in r["sft_runs"]]
        lr = _fmt_lr(r["tuned_lr"]) + (f" of {{{', '.join(_fmt_lr(x) for x in grid)}}}" if len(grid) > 1 else "")
        row = [name, lr, f"{r['state_matrix_vs_adamw']:.3f}", f"{r['state_total_vs_adamw']:.3f}",
               f"{r['time_per_step_s']:.2f}", f"{r['time_vs_adamw']:.2f}x", f"{r['sft_eval_loss']:.4f}",
               f"{100 * r['sft_loss_vs_adamw']:+.1f}%"]
        if dpo:
            d = r.get("dpo") or {}
            if "gold_reward" in d:
                row += [_fmt_lr(d["lr"]), f"{d['gold_reward']:.3f}", f"{d['win_rate_vs_sft']:.2f}",
                        f"{d['kl_to_sft']:.2f}"]
            else:
                row += [_fmt_lr(d["lr"]) if d else "", "diverged" if d else "", "", ""]
        lines.append("| " + " | ".join(row) + " |")
    if dpo:
        lines.append(f"| (SFT model, before DPO) | | | | | | | | | {dpo['sft_gold_reward']:.3f} | 0.50 | 0.00 |")
    return "\n".join(lines)


def targets_markdown(targets: dict) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for key, t in targets.items():
        kind, name = key.split("/")
        measured = f"{t['measured']:.3f}x" if kind == "state" else f"{100 * t['measured']:+.1f}%"
        what = f"{name}: state on 2-D weights {t['target']} AdamW's" if kind == "state" else f"{name}: {t['target']}"
        lines.append(f"| {what} | {measured} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = {n: r for n, r in summary["optimizers"].items() if r["sft"] is not None}
    names = list(res)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for n in names:
        x, y = res[n]["state_matrix_vs_adamw"], res[n]["sft_eval_loss"]
        ax.scatter([x], [y])
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer state on 2-D weights / AdamW (log)")
    ax.set_ylabel("SFT eval loss (tuned lr)")
    ax.set_title("memory vs SFT quality")
    ax = axes[1]
    ax.bar(names, [res[n]["time_vs_adamw"] for n in names])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("time per step / AdamW")
    ax.set_title("SFT step time (median)")
    ax.tick_params(axis="x", rotation=60)
    ax = axes[2]
    if summary["dpo"]:
        vals = [(res[n].get("dpo") or {}).get("gold_reward", float("nan")) for n in names]
        ax.bar(names, vals)
        ax.axhline(summary["dpo"]["sft_gold_reward"], color="k", lw=0.8, ls="--", label="SFT model")
        ax.set_ylabel(f"gold {summary['dpo']['objective']} after DPO")
        ax.legend()
    ax.set_title("DPO from one shared SFT checkpoint")
    ax.tick_params(axis="x", rotation=60)
    fig.suptitle(f"{summary['model']}: SFT {summary['settings']['sft_steps']} steps, "
                 f"DPO {summary['settings']['dpo_steps']} steps, batch {summary['settings']['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reproduce_command(args) -> str:
    parts = ["python", "benchmarks/optimizers.py"]
    if args.quick:
        parts.append("--quick")
    else:
        parts += ["--model", args.model, "--sft-steps", str(args.sft_steps), "--dpo-steps", str(args.dpo_steps),
                  "--batch-size", str(args.batch_size)]
    if args.optimizers != "all":
        parts += ["--optimizers", args.optimizers]
    if args.lr_sweep:
        parts += ["--lr-sweep", args.lr_sweep]
    for item in args.lr:
        parts += ["--lr", item]
    defaults = parse_args([] if not args.quick else ["--quick"])
    for flag in ("max_length", "sft_examples", "warmup", "weight_decay", "proj_gap", "dpo_lr_scale", "beta",
                 "pref_prompts", "flip_rate", "eval_prompts", "eval_samples", "max_new_tokens", "threads", "seed"):
        if getattr(args, flag) != getattr(defaults, flag):
            parts += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.skip_dpo:
        parts.append("--skip-dpo")
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    summary = run_benchmark(args)
    print()
    print(markdown_table(summary))
    print()
    print(targets_markdown(summary["targets"]))
    print(f"\nwrote {args.out}/results.json, results.md, plot.png ({summary['seconds']:.0f} s)")
    print(f"reproduce: {summary['command']}")
    return summary


if __name__ == "__main__":
    main()
