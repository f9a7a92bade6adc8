"""Scaling report: DPO training throughput and peak memory vs prompt length, response length and
batch size, and the step's achieved FLOP/s as a fraction of a matmul peak measured in the same run.

Every measurement is one subprocess (so its peak RSS is its own) training a tiny Llama with prefopt's
DPO (sigmoid, beta 0.1, AdamW, precomputed reference log-probs, fp32) for a few steps, in two
modes: ``shared`` (the defaults: prefix sharing + padding-free packing) and ``padded`` (both off:
2B right-padded rows, each prompt computed twice). Lengths vary +-25% around the point's value.
Each (point, mode) is measured ``--rounds`` times, the two modes of a point back to back and the
order reversed every other round; the report gives medians.

Achieved FLOP/s counts useful work only: per real token (each prompt once) 6 x the matmul
parameters of the decoder layers (forward + backward), the LM head on label positions, and causal
attention over each token's real context; divided by the median step time. The peak is the best
of a few square fp32 matmuls (and one shaped like the model's widest projection) timed with the
same thread count, interleaved with the points.

Run:  .venv/bin/python benchmarks/scaling.py            # ~5 min on 2 CPU cores
      .venv/bin/python benchmarks/scaling.py --quick    # smoke run
Writes runs/bench/scaling.json and runs/bench/scaling.png (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

MODEL = dict(hidden=128, layers=4, heads=4, inter=344, vocab=1024)
BASE = dict(prompt=64, response=32, batch=16)
SWEEPS = {"prompt": [16, 64, 192], "response": [8, 32, 96], "batch": [4, 16, 48]}
QUICK_MODEL = dict(hidden=32, layers=1, heads=2, inter=64, vocab=128)
QUICK_BASE = dict(prompt=8, response=4, batch=2)
QUICK_SWEEPS = {"prompt": [8], "response": [4], "batch": [2]}  # only the base point, measured once
MODES = {"shared": (True, True), "padded": (False, False)}


# ------------------------------------------------------------------------------------------ child
def _rss_now_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _pairs(p: dict, vocab: int, n: int, seed: int = 0):
    from prefopt.data.tokenize import EncodedPair

    rng = random.Random(seed)
    vary = lambda L: max(1, rng.randint(round(0.75 * L), round(1.25 * L)))  # noqa: E731
    toks = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    return [EncodedPair(toks(vary(p["prompt"])), toks(vary(p["response"])) + [1], toks(vary(p["response"])) + [1], i)
            for i in range(n)]


def useful_flops(pairs, m: dict) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one pass over ``pairs``, real tokens only."""
    h, L, i, V = m["hidden"], m["layers"], m["inter"], m["vocab"]
    per_token_layer = 2 * (4 * h * h + 3 * h * i)  # q, k, v, o + gate, up, down (multiply-add = 2 FLOPs)
    fwd = 0.0
    for pr in pairs:
        P = len(pr.prompt_ids)
        tokens = P + len(pr.chosen_ids) + len(pr.rejected_ids)
        fwd += tokens * L * per_token_layer
        # causal attention (QK^T and AV): each token attends to its real context
        ctx = sum(range(1, P + 1)) + sum(P + j for j in range(1, len(pr.chosen_ids) + 1)) \
            + sum(P + j for j in range(1, len(pr.rejected_ids) + 1))
        fwd += L * 4 * h * ctx
        fwd += 2 * h * V * (len(pr.chosen_ids) + len(pr.rejected_ids))  # LM head on label positions
    return 3.0 * fwd


def run_point(p: dict, m: dict, mode: str, steps: int, threads: int) -> dict:
    import functools

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.losses import get_pairwise_loss
    from prefopt.models.reference import pair_reference_logps
    from prefopt.train.algorithms.preference import PairwisePreference, pair_logps
    from prefopt.train.config import LoopConfig
    from prefopt.train.loop import train

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=m["vocab"], hidden_size=m["hidden"], intermediate_size=m["inter"],
                      num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["heads"],
                      max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    model = LlamaForCausalLM(cfg)
    shared, padding_free = MODES[mode]
    B = p["batch"]
    pairs = _pairs(p, m["vocab"], B * (steps + 1))
    rss_model = _rss_now_mib()
    store = pair_reference_logps(model, pairs, 0, B, use_cache=False, pair_logps=functools.partial(
        pair_logps, prefix_sharing=shared, padding_free=padding_free))
    algo = PairwisePreference(pairs, [], loss_fn=get_pairwise_loss("dpo"), beta=0.1, hparams={}, pad_id=0,
                              batch_size=B, reference=None, ref_store=store, shuffle=False,
                              prefix_sharing=shared, padding_free=padding_free)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stamps: list[float] = []

    class Clock:
        def log(self, record):
            if "time/step_s" in record:
                stamps.append(time.perf_counter())

        def close(self):
            pass

    loop_cfg = LoopConfig(steps=steps + 1, batch_size=B, lr_schedule="constant", progress=False, threads=threads)
    with tempfile.TemporaryDirectory() as run_dir:
        train(model, algo, opt, loop_cfg, Path(run_dir), logger=Clock())
    dts = [b - a for a, b in zip(stamps, stamps[1:])]  # step 1 is warm-up
    step_s = statistics.median(dts)
    timed = pairs[B:]
    tokens = sum(len(x.prompt_ids) + len(x.chosen_ids) + len(x.rejected_ids) for x in timed)
    flops = useful_flops(timed, m) / steps
    return {"step_s": step_s, "tokens_per_s": tokens / sum(dts), "flops_per_s": flops / step_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "rss_model_mib": rss_model, "tokens_per_step": tokens / steps}


def matmul_peak(threads: int, m: dict, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s... in FLOP/s: square 1024/2048 matmuls and the model's widest projection."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, m["hidden"], m["inter"])]
    for M, K, N in shapes:
        a, b = torch.randn(M, K), torch.randn(K, N)
        a @ b
        for _ in range(repeats):
            n = max(1, int(2e9 // (2 * M * K * N)))
            t0 = time.perf_counter()
            for _ in range(n):
                a @ b
            best = max(best, 2 * M * K * N * n / (time.perf_counter() - t0))
    return best


# ------------------------------------------------------------------------------------------ driver
def _spawn(args: list[str], timeout: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, str(HERE), *args, "--child-out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-2000:]}
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for col, (axis, values) in enumerate(report["sweeps"].items()):
        for mode, style in (("shared", "o-"), ("padded", "s--")):
            pts = [report["points"][f"{axis}={v}/{mode}"] for v in values]
            ok = [(v, q) for v, q in zip(values, pts) if "error" not in q]
            xs = [v for v, _ in ok]
            axes[0, col].plot(xs, [q["tokens_per_s"] for _, q in ok], style, label=mode)
            axes[1, col].plot(xs, [q["peak_rss_mib"] for _, q in ok], style, label=mode)
        axes[0, col].set_title(f"tokens/s vs {axis}")
        axes[1, col].set_title(f"peak RSS (MiB) vs {axis}")
        for ax in axes[:, col]:
            ax.set_xlabel({"prompt": "prompt tokens", "response": "response tokens", "batch": "pairs per step"}[axis])
            ax.legend()
            ax.grid(alpha=0.3)
    peak = report["matmul_peak_flops"]
    fig.suptitle(f"prefopt DPO on {report['threads']} thread(s); matmul peak {peak / 1e9:.1f} GFLOP/s; "
                 f"shared = prefix sharing + padding-free, padded = both off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (the test suite's smoke run)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per point (default 4; --quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="measurements of each point, interleaved (default 2; --quick 1)")
    ap.add_argument("--threads", default="1", help=(
        "torch threads for every point and the matmul peak (default 1: the sweep's points stay comparable "
        "when other jobs share the machine; 'auto' = the cores, or 1 when the load average exceeds them)"))
    ap.add_argument("--out", default="runs/bench/scaling.json")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # one point or the matmul peak
        job = json.loads(args.child)
        if job["kind"] == "peak":
            res = {"flops_per_s": matmul_peak(job["threads"], job["model"])}
        else:
            res = run_point(job["point"], job["model"], job["mode"], job["steps"], job["threads"])
        Path(args.child_out).write_text(json.dumps(res))
        return 0

    cores = os.cpu_count() or 1
    threads = (1 if os.getloadavg()[0] > cores else cores) if args.threads == "auto" else int(args.threads)
    model, base, sweeps = (QUICK_MODEL, QUICK_BASE, QUICK_SWEEPS) if args.quick else (MODEL, BASE, SWEEPS)
    steps = args.steps or (2 if args.quick else 4)
    rounds = args.rounds or (1 if args.quick else 2)
    timeout = 120 if args.quick else 600
    t0 = time.perf_counter()
    peaks, points = [], {}
    jobs = []
    for axis, values in sweeps.items():
        for v in values:
            for mode in MODES:
                jobs.append((f"{axis}={v}/{mode}", {**base, axis: v}, mode))
    unique: dict[str, tuple[str, dict, str]] = {}  # the base point appears in every sweep: measured once
    for key, p, mode in jobs:
        job = json.dumps({"kind": "point", "point": p, "model": model, "mode": mode, "steps": steps,
                          "threads": threads}, sort_keys=True)
        unique.setdefault(job, (key, p, mode))
    runs: dict[str, list[dict]] = {job: [] for job in unique}
    order = list(unique)
    for r in range(rounds):  # shared and padded of a point run back to back; later rounds reversed
        peaks.append(_spawn(["--child", json.dumps({"kind": "peak", "threads": threads, "model": model})],
                            timeout).get("flops_per_s"))
        for job in (order if r % 2 == 0 else order[::-1]):
            key, p, mode = unique[job]
            res = _spawn(["--child", job], timeout)
            runs[job].append(res)
            msg = res["error"].strip().splitlines()[-1] if "error" in res else (
                f"{res['tokens_per_s']:8.0f} tok/s  {res['peak_rss_mib']:6.0f} MiB  "
                f"{res['flops_per_s'] / 1e9:5.2f} GFLOP/s")
            print(f"[round {r + 1}] {key:22s} {msg}", flush=True)
    done = {}
    for job, rs in runs.items():
        ok = [x for x in rs if "error" not in x]
        if not ok:
            done[job] = {"error": rs[0]["error"], "point": unique[job][1]}
            continue
        med = {k: statistics.median(x[k] for x in ok) for k in ("step_s", "tokens_per_s", "flops_per_s",
                                                                "peak_rss_mib", "tokens_per_step")}
        done[job] = {**med, "point": unique[job][1], "runs": ok}
    for key, p, mode in jobs:
        job = json.dumps({"kind": "point", "point": p, "model": model, "mode": mode, "steps": steps,
                          "threads": threads}, sort_keys=True)
        points[key] = done[job]
    peak = max(x for x in peaks if x)
    for res in points.values():
        if "error" not in res:
            res["flops_fraction_of_peak"] = res["flops_per_s"] / peak
    report = {"model": model, "base": base, "sweeps": sweeps, "steps": steps, "rounds": rounds, "threads": threads,
              "matmul_peak_flops": peak, "matmul_peaks": peaks, "points": points,
              "load_avg": os.getloadavg(), "wall_s": time.perf_counter() - t0,
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    speedups = {}
    for axis, values in sweeps.items():
        for v in values:
            a, b = points.get(f"{axis}={v}/shared", {}), points.get(f"{axis}={v}/padded", {})
            if "tokens_per_s" in a and "tokens_per_s" in b:
                speedups[f"{axis}={v}"] = {"throughput": a["tokens_per_s"] / b["tokens_per_s"],
                                           "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"]}
    report["shared_vs_padded"] = speedups
    print(f"\nmatmul peak: {peak / 1e9:.1f} GFLOP/s ({threads} thread(s))")
    print("point                   shared/padded throughput   peak RSS   shared FLOP/s of peak")
    for key, sp in speedups.items():
        frac = points[f"{key}/shared"].get("flops_fraction_of_peak", float("nan"))
        print(f"{key:22s}  {sp['throughput']:10.2f}x            {sp['peak_rss']:6.2f}x   {frac:8.1%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        plot(report, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    else:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
