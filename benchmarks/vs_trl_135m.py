"""prefopt vs TRL 1.16 at a real model size: a randomly initialised 135M-parameter Llama.

The shape of a 135M instruct model (30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536, vocab
49152, tied embeddings), built from a config (no download), the inputs, phases and per-phase
subprocesses of ``vs_trl.py`` with realistic lengths: DPO 8 pairs/step (prompts 32-128 tokens,
responses 32-128), GRPO 4 prompts x 4 samples x 64 new tokens. Phases, interleaved A B C ..., C B A:

  trl_dpo            TRL default: bf16 autocast, gradient checkpointing, live reference model
  trl_dpo_tuned      TRL bf16, no gradient checkpointing, precompute_ref_log_probs
  trl_dpo_fp32       TRL fp32, no gradient checkpointing, precompute_ref_log_probs
  prefopt_dpo_bf16   prefopt train.precision=bf16-mixed, cached reference (algo.reference=precomputed)
  prefopt_dpo_fp32   prefopt default precision (fp32), cached reference
  prefopt_dpo_bf16_ckpt  bf16-mixed + model.gradient_checkpointing (TRL default's memory setting)
  trl_grpo           TRL default (bf16 autocast, gradient checkpointing), beta 0
  trl_grpo_fp32      TRL fp32, no gradient checkpointing
  prefopt_grpo_bf16  prefopt grpo, bf16-mixed (rollouts under autocast too)
  prefopt_grpo_fp32  prefopt grpo, fp32
  (matmul peaks)     bf16 and fp32 GFLOP/s of a 2048x2048 matmul at the phases' thread count, measured
                     in the driver before and after the phases (median)

Per phase: s/step (median of step intervals, the first step left out), real tokens/s (each
prompt once), peak RSS, and the achieved FLOP/s as a fraction of both matmul peaks. FLOPs count
the weight matmuls only (attention scores and element-wise work left out): 6·N per trained token
(forward + backward), + 2·N per token of a live reference pass, + 2·N per token of GRPO's sampling
(prefill and decode), with N = the matmul parameters (LM head included); the forward that gradient
checkpointing recomputes is not counted (it is not useful work). The numerator is the
same for both libraries (real tokens, not padding), so the fraction is useful work per second.

    .venv-bench/bin/python benchmarks/vs_trl_135m.py             # full: 1 round, ~15 min on 2 cores
    .venv-bench/bin/python benchmarks/vs_trl_135m.py --quick     # smoke run: tiny model, ~1 min
    make bench-135m
Writes runs/bench/vs_trl_135m.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import vs_trl  # noqa: E402  (the inputs, phases and subprocess driver)

LLAMA_135M = dict(hidden=576, layers=30, heads=9, kv_heads=3, inter=1536, vocab=49152)
FULL = dict(LLAMA_135M, steps=5, batch=8, prompt=(32, 128), response=(32, 128), grpo_steps=3, grpo_batch=16,
            grpo_prompt=(32, 128), new_tokens=64, rounds=1, peak_n=2048)
QUICK = dict(vs_trl.QUICK, kv_heads=1, grpo_batch=8, rounds=1, peak_n=512)

TRL_DEFAULT = {"precision": "bf16-mixed", "gradient_checkpointing": True}  # DPOConfig/GRPOConfig defaults on CPU
# phase -> (vs_trl base phase, settings it runs with)
PHASES = {
    "trl_dpo": ("trl_dpo", TRL_DEFAULT),
    "trl_dpo_tuned": ("trl_dpo_precomp", {"precision": "bf16-mixed"}),
    "trl_dpo_fp32": ("trl_dpo_precomp", {"precision": "fp32"}),
    "prefopt_dpo_bf16": ("prefopt_dpo", {"precision": "bf16-mixed"}),
    "prefopt_dpo_fp32": ("prefopt_dpo", {"precision": "fp32"}),
    "prefopt_dpo_bf16_ckpt": ("prefopt_dpo", {"precision": "bf16-mixed", "gradient_checkpointing": True}),
    "trl_grpo": ("trl_grpo", TRL_DEFAULT),
    "trl_grpo_fp32": ("trl_grpo", {"precision": "fp32"}),
    "prefopt_grpo_bf16": ("prefopt_grpo", {"precision": "bf16-mixed"}),
    "prefopt_grpo_fp32": ("prefopt_grpo", {"precision": "fp32"}),
}
COMPARISONS = [
    ("prefopt_dpo_fp32", "trl_dpo", "DPO: both defaults (prefopt fp32, TRL bf16 + checkpointing)"),
    ("prefopt_dpo_bf16", "trl_dpo", "DPO: prefopt bf16-mixed vs TRL default"),
    ("prefopt_dpo_bf16_ckpt", "trl_dpo", "DPO: bf16 + gradient checkpointing, prefopt vs TRL default"),
    ("prefopt_dpo_bf16", "trl_dpo_tuned", "DPO: bf16, prefopt vs TRL tuned (no ckpt, precomputed ref)"),
    ("prefopt_dpo_fp32", "trl_dpo_fp32", "DPO: fp32, prefopt vs TRL tuned"),
    ("prefopt_grpo_fp32", "trl_grpo", "GRPO: both defaults (prefopt fp32, TRL bf16 + checkpointing)"),
    ("prefopt_grpo_bf16", "trl_grpo", "GRPO: prefopt bf16-mixed vs TRL default"),
    ("prefopt_grpo_fp32", "trl_grpo_fp32", "GRPO: fp32, prefopt vs TRL"),
]


def matmul_params(s: dict) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections, the LM head."""
    h, head_dim = s["hidden"], s["hidden"] // s["heads"]
    kv = s.get("kv_heads", s["heads"]) * head_dim
    return s["layers"] * (2 * h * h + 2 * h * kv + 3 * h * s["inter"]) + h * s["vocab"]


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> dict:
    """Best-of-``reps`` GFLOP/s of an n x n matmul in bf16 and fp32."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(reps))
        out[f"{name}_gflops"] = 2 * n ** 3 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def flops_per_step(name: str, phase: dict, info: dict, s: dict) -> float | None:
    """Weight-matmul FLOPs of one median step (see the module docstring)."""
    n = matmul_params(s)
    tokens_per_s, step_s = phase.get("tokens_per_s"), phase.get("s_per_step")
    if not tokens_per_s or not step_s:
        return None
    tokens = tokens_per_s * step_s  # real tokens of one step
    passes = 6 + (2 if PHASES[name][0] == "trl_dpo" else 0)  # a live reference forward
    flops = passes * n * tokens
    if "grpo" in name:
        flops += 2 * n * tokens  # sampling: the prompt's prefill and one decode pass per generated token
    return flops


def summarize(results: dict, info: dict, s: dict, peaks: list[dict]) -> dict:
    base = vs_trl.summarize({k: v for k, v in results.items()}, info, s)
    peak = {k: statistics.median(p[k] for p in peaks) for k in peaks[0]} if peaks else {}
    for name, phase in base["phases"].items():
        flops = flops_per_step(name, phase, info, s) if "error" not in phase else None
        if flops and peak:
            achieved = flops / phase["s_per_step"] / 1e9
            phase.update(achieved_gflops=achieved, frac_bf16_peak=achieved / peak["bf16_gflops"],
                         frac_fp32_peak=achieved / peak["fp32_gflops"])
    ratios = []
    for mine, theirs, label in COMPARISONS:
        a, b = base["phases"].get(mine, {}), base["phases"].get(theirs, {})
        if a.get("s_per_step") and b.get("s_per_step"):
            ratios.append({"comparison": label, "prefopt": mine, "trl": theirs,
                           "steps_per_s_ratio": b["s_per_step"] / a["s_per_step"],
                           "tokens_per_s_ratio": a["tokens_per_s"] / b["tokens_per_s"],
                           "peak_rss_ratio": a["peak_rss_mib"] / b["peak_rss_mib"]})
    return {"phases": base["phases"], "ratios": ratios, "matmul_peak": peak, "matmul_params": matmul_params(s)}


def print_summary(summary: dict) -> None:
    peak = summary["matmul_peak"]
    print(f"\nmatmul peak: bf16 {peak.get('bf16_gflops', 0):.0f} GFLOP/s, fp32 {peak.get('fp32_gflops', 0):.0f}")
    print("phase                s/step  tokens/s  peak RSS MiB  GFLOP/s  of bf16 peak  of fp32 peak")
    for name, p in summary["phases"].items():
        if "error" in p:
            print(f"{name:19s} ERROR: {p['error'].splitlines()[0]}")
            continue
        print(f"{name:19s} {p['s_per_step']:7.2f} {p['tokens_per_s']:9.0f} {p['peak_rss_mib']:12.0f} "
              f"{p.get('achieved_gflops', 0):8.1f} {p.get('frac_bf16_peak', 0):12.1%} {p.get('frac_fp32_peak', 0):12.1%}")
    print("\nratio (prefopt / TRL)                                            steps/s  tokens/s  peak RSS")
    for r in summary["ratios"]:
        print(f"{r['comparison']:64s} {r['steps_per_s_ratio']:6.2f}x {r['tokens_per_s_ratio']:7.2f}x "
              f"{r['peak_rss_ratio']:7.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (the test suite's smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 1)")
    ap.add_argument("--only", default=None, help="comma list of phases (default: all)")
    ap.add_argument("--threads", default="auto", help="torch threads per phase ('auto': as vs_trl.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (JSON value)")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--out", default="runs/bench/vs_trl_135m.json")
    args = ap.parse_args(argv)

    s = dict(QUICK if args.quick else FULL)
    cores = os.cpu_count() or 1
    threads = (1 if os.getloadavg()[0] > cores else cores) if args.threads == "auto" else int(args.threads)
    s.update(threads=threads, lr=args.lr, profile=False, rounds=args.rounds or s["rounds"])
    for item in args.set:
        key, _, value = item.partition("=")
        s[key] = json.loads(value)
    names = [n for n in PHASES if not args.only or n in args.only.split(",")]
    work = Path(tempfile.mkdtemp(prefix="prefopt-vs-trl-135m-"))
    t0, load_start = time.perf_counter(), os.getloadavg()
    info = vs_trl.build_inputs(work, s)
    results: dict[str, list[dict]] = {n: [] for n in names}
    peaks = [matmul_peak(threads, s["peak_n"])]
    for r in range(s["rounds"]):
        for name in names if r % 2 == 0 else names[::-1]:
            base, over = PHASES[name]
            res = vs_trl._spawn(base, work, {**s, **over}, timeout=300 if args.quick else 1800)
            results[name].append(res)
            msg = res["error"].splitlines()[0] if "error" in res else f"{statistics.median(res['step_s'] or [0]):.2f} s/step"
            print(f"[round {r + 1}] {name}: {msg}", flush=True)
    peaks.append(matmul_peak(threads, s["peak_n"]))
    summary = summarize(results, info, s, peaks)
    report = {"settings": s, "inputs": {k: v for k, v in info.items() if k != "step_tokens"},
              "versions": vs_trl.versions(),
              "machine": {"cpus": cores, "platform": platform.platform(), "load_avg_start": load_start,
                          "load_avg_end": os.getloadavg()},
              "wall_s": time.perf_counter() - t0, "command": " ".join([Path(sys.executable).name] + sys.argv),
              **summary, "raw": results}
    print_summary(summary)
    vs_trl.write_report(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
