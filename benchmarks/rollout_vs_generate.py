"""Benchmark: prefopt's rollout engine vs ``model.generate`` on the same batch, on CPU.

Both sample (``do_sample=True``) with the same settings from the same tiny random Llama, on
the same left-padded batch of prompts of varied lengths, interleaved A B A B in one process.
Throughput counts *useful* generated tokens: every token up to and including the stop
token (tokens ``generate`` emits as padding after a row finished do not count).

Cases:
* ``no_eos``     -- no stop tokens: every row generates ``--new-tokens`` tokens.
* ``eos_heavy``  -- a set of frequent stop tokens, so rows finish at very different times
                   (dropping finished rows matters here).
* ``k_samples``  -- ``--k`` samples per prompt (``num_return_sequences`` for generate).

Decode against its limits (``--no-roofline`` skips it): the engine's decode rate on the whole batch
(tokens/s after the prefill: a 1-token run timed next to the full one) beside the two bounds a
decode step has, measured in the same process -- the memory-bandwidth bound (every step reads all
weights once for ``batch`` tokens: batch x copy bandwidth / weight bytes, bandwidth by STREAM's
convention, bytes read + written) and the compute bound (matmul GFLOP/s of the weights' dtype /
2 FLOPs per matmul weight per token). The lower one is the roofline.

Run:  python benchmarks/rollout_vs_generate.py [--model-size small] [--batch 32] [--new-tokens 64]
      python benchmarks/rollout_vs_generate.py --model-size 135m --dtype bfloat16 --batch 16 --cases k_samples
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefopt.rollout import SamplingConfig, generate  # noqa: E402

SIZES = {  # name -> (vocab, hidden, intermediate, layers, heads, kv heads, tied embeddings)
    "tiny": (4096, 128, 344, 4, 4, 4, False),       # ~1.9M params
    "small": (8192, 256, 688, 4, 4, 4, False),      # ~7.4M params
    "medium": (16384, 384, 1024, 6, 6, 6, False),   # ~22M params
    "135m": (49152, 576, 1536, 30, 9, 3, True),     # a 135M instruct model's shape
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(size: str, dtype: str = "float32"):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, inter, layers, heads, kv_heads, tied = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                      max_position_embeddings=1024, initializer_range=0.1 if size != "135m" else 0.02,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    if dtype != "float32":
        for p in model.parameters():  # the weights only: rotary frequencies stay fp32
            p.data = p.data.to(DTYPES[dtype])
    return model, sum(p.numel() for p in model.parameters())


def copy_bandwidth(mib: int = 512, reps: int = 7) -> float:
    """Best-of-``reps`` memory bandwidth of a large tensor copy in GB/s, STREAM's convention
    (bytes read + bytes written)."""
    x = torch.ones(mib * 2 ** 20 // 4)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t0)
    return 2 * x.numel() * x.element_size() / best / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def decode_bounds(model, rows: int, bandwidth_gbs: float, peak_gflops: float) -> dict:
    """Decode tokens/s bounds of ``rows`` rows: every decode step reads every weight once (tied
    weights once) and produces one token per row, and costs 2 FLOPs per matmul weight per row."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    matmul_weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    if getattr(model.config, "tie_word_embeddings", False):
        matmul_weights += model.get_input_embeddings().weight.numel()  # the LM head reads the tied matrix
    return {"weight_bytes": weight_bytes, "matmul_weights": matmul_weights,
            "bandwidth_bound_tokens_per_s": rows * bandwidth_gbs * 1e9 / weight_bytes,
            "compute_bound_tokens_per_s": peak_gflops * 1e9 / (2 * matmul_weights)}


def engine_decode_rate(model, prompts, args, k: int, seed: int) -> tuple[float, float]:
    """(decode tokens/s, prefill seconds) of the engine: a run of 1 new token (prefill + the first
    sample) timed next to a full run; decode = the difference, over rows x (new tokens - 1)."""
    one = argparse.Namespace(**{**vars(args), "new_tokens": 1})
    _, t_prefill = run_ours(model, prompts, one, [], k, seed)
    n, t_full = run_ours(model, prompts, args, [], k, seed)
    rows = len(prompts) * k
    return rows * (args.new_tokens - 1) / max(t_full - t_prefill, 1e-9), t_prefill


def make_prompts(batch: int, vocab: int, seed: int = 1, lengths: tuple[int, int] = (8, 32)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lengths[0], lengths[1] + 1, (batch,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def count_useful(new_tokens: torch.Tensor, stop_ids: list[int]) -> int:
    """Tokens up to and including the first stop token of each row (all tokens if none)."""
    if not stop_ids:
        return int(new_tokens.numel())
    is_stop = torch.isin(new_tokens, torch.tensor(stop_ids))
    after = (is_stop.cumsum(-1) - is_stop.long()) > 0  # strictly after the first stop
    return int((~after).sum())


def run_hf(model, prompts, args, stop_ids, k, seed):
    pad = 0
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad, dtype=torch.long)
    am = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        am[i, L - len(p):] = 1
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=am, do_sample=True, temperature=args.temperature,
                             top_k=args.top_k, top_p=1.0, max_new_tokens=args.new_tokens, num_return_sequences=k,
                             pad_token_id=pad, eos_token_id=(stop_ids or None))
    dt = time.perf_counter() - t0
    return count_useful(out[:, L:], stop_ids), dt


def run_ours(model, prompts, args, stop_ids, k, seed):
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=args.temperature, top_k=args.top_k,
                         num_samples=k, seed=seed, batch_size=max(64, len(prompts) * k))
    t0 = time.perf_counter()
    r = generate(model, prompts, cfg, pad_token_id=0, eos_token_id=(stop_ids or None))
    dt = time.perf_counter() - t0
    return int(r.response_mask.sum()), dt


def measure_roofline(model, prompts, args) -> dict:
    """The engine's decode rate on the whole batch (no stop tokens) next to both of its bounds,
    all measured in this process: median decode rate over ``--repeats`` runs."""
    rates, prefill = [], []
    for rep in range(args.repeats):
        rate, t = engine_decode_rate(model, prompts, args, 1, seed=rep)
        rates.append(rate)
        prefill.append(t)
    bandwidth = copy_bandwidth()
    peak = matmul_gflops(next(model.parameters()).dtype)
    out = {"rows": len(prompts), "decode_tokens_per_s": statistics.median(rates), "decode_runs": rates,
           "prefill_s": statistics.median(prefill), "copy_bandwidth_gbs": bandwidth, "matmul_gflops": peak,
           **decode_bounds(model, len(prompts), bandwidth, peak)}
    out["frac_of_bandwidth_bound"] = out["decode_tokens_per_s"] / out["bandwidth_bound_tokens_per_s"]
    out["frac_of_compute_bound"] = out["decode_tokens_per_s"] / out["compute_bound_tokens_per_s"]
    out["binding"] = ("memory bandwidth" if out["bandwidth_bound_tokens_per_s"] < out["compute_bound_tokens_per_s"]
                      else "matmul compute")
    return out


def measure_weight_dtypes(model, prompts, args) -> dict:
    """The engine on the same batch with the fp32 weights, the fp32 weights under bf16 autocast, and
    a bf16 copy (``rollout.dtype: auto`` under bf16-mixed), interleaved; median tokens/s each."""
    import contextlib

    from prefopt.rollout.weights import LowPrecisionCopy

    copy = LowPrecisionCopy(model, torch.bfloat16)
    variants = {"fp32": (model, contextlib.nullcontext), "fp32_autocast": (
        model, lambda: torch.autocast("cpu", dtype=torch.bfloat16)), "bf16_copy": (copy.refreshed(), contextlib.nullcontext)}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.repeats):
        for name, (m, ctx) in variants.items():
            with ctx():
                n, dt = run_ours(m, prompts, args, [], args.k, seed=rep)
            rates[name].append(n / dt)
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {"rows": len(prompts) * args.k, "tokens_per_s": rates, "median": med,
            "bf16_copy_vs_fp32": med["bf16_copy"] / med["fp32"],
            "bf16_copy_vs_autocast": med["bf16_copy"] / med["fp32_autocast"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batch", type=int, default=32, help="prompts per batch")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=lambda v: tuple(int(x) for x in v.split(",")), default=(8, 32),
                    metavar="MIN,MAX", help="prompt lengths, uniform in [MIN, MAX]")
    ap.add_argument("--repeats", type=int, default=3, help="A/B pairs per case (median reported)")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt in the k_samples case")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--eos-frac", type=float, default=0.02,
                    help="fraction of the vocab used as stop tokens in the eos_heavy case")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights of the model")
    ap.add_argument("--cases", default="no_eos,eos_heavy,k_samples")
    ap.add_argument("--no-roofline", action="store_true",
                    help="skip the decode rate vs its memory-bandwidth and compute bounds")
    ap.add_argument("--weights", action="store_true",
                    help="also compare the engine with fp32 weights, fp32 under bf16 autocast and a bf16 copy "
                         "(k samples of batch/k prompts; needs --dtype float32)")
    ap.add_argument("--out", default="runs/bench/rollout_vs_generate.json")
    args = ap.parse_args(argv)
    if args.weights and args.dtype != "float32":
        ap.error("--weights compares copies of fp32 weights: use --dtype float32")
    if args.threads:
        torch.set_num_threads(args.threads)

    model, n_params = build_model(args.model_size, args.dtype)
    vocab = model.config.vocab_size
    prompts = make_prompts(args.batch, vocab, lengths=args.prompt_tokens)
    eos_heavy = list(range(3, 3 + max(1, int(args.eos_frac * vocab))))
    cases = {
        "no_eos": dict(stop_ids=[], k=1, prompts=prompts),
        "eos_heavy": dict(stop_ids=eos_heavy, k=1, prompts=prompts),
        "k_samples": dict(stop_ids=[], k=args.k, prompts=prompts[: max(1, args.batch // args.k)]),
    }
    selected = [c.strip() for c in args.cases.split(",") if c.strip()]

    # warm-up (allocator, lazy imports)
    run_hf(model, prompts[:4], argparse.Namespace(**{**vars(args), "new_tokens": 4}), [], 1, 0)
    run_ours(model, prompts[:4], argparse.Namespace(**{**vars(args), "new_tokens": 4}), [], 1, 0)

    results = {}
    for name in selected:
        case = cases[name]
        hf_tps, our_tps, hf_tok, our_tok = [], [], [], []
        for rep in range(args.repeats):  # interleaved A B A B
            n, dt = run_hf(model, case["prompts"], args, case["stop_ids"], case["k"], seed=rep)
            hf_tps.append(n / dt); hf_tok.append(n)
            n, dt = run_ours(model, case["prompts"], args, case["stop_ids"], case["k"], seed=rep)
            our_tps.append(n / dt); our_tok.append(n)
        hf_med, our_med = statistics.median(hf_tps), statistics.median(our_tps)
        results[name] = {
            "rows": len(case["prompts"]) * case["k"], "k": case["k"], "num_stop_ids": len(case["stop_ids"]),
            "generate_tokens_per_s": hf_tps, "engine_tokens_per_s": our_tps,
            "generate_tokens": hf_tok, "engine_tokens": our_tok,
            "generate_median": hf_med, "engine_median": our_med, "ratio": our_med / hf_med,
        }

    roofline = None if args.no_roofline else measure_roofline(model, prompts, args)
    weights = measure_weight_dtypes(model, cases["k_samples"]["prompts"], args) if args.weights else None
    cmd = " ".join(["python benchmarks/rollout_vs_generate.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"model: Llama {args.model_size} ({n_params / 1e6:.1f}M params), batch {args.batch}, "
          f"new tokens {args.new_tokens}, repeats {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'case':<11} {'rows':>5} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6}")
    for name, r in results.items():
        print(f"{name:<11} {r['rows']:>5} {r['generate_median']:>15.0f} {r['engine_median']:>13.0f} {r['ratio']:>6.2f}x")
    if roofline:
        r = roofline
        print(f"decode ({r['rows']} rows, {args.dtype}): {r['decode_tokens_per_s']:.0f} tok/s; memory-bandwidth bound "
              f"{r['bandwidth_bound_tokens_per_s']:.0f} tok/s ({r['weight_bytes'] / 2**20:.0f} MiB of weights per step "
              f"at {r['copy_bandwidth_gbs']:.1f} GB/s copy bandwidth): {r['frac_of_bandwidth_bound']:.0%}; compute bound "
              f"{r['compute_bound_tokens_per_s']:.0f} tok/s ({r['matmul_gflops']:.0f} GFLOP/s matmul): "
              f"{r['frac_of_compute_bound']:.0%}; the binding bound: {r['binding']}")
    if weights:
        med = weights["median"]
        print(f"weights ({weights['rows']} rows): fp32 {med['fp32']:.0f} tok/s, fp32 under bf16 autocast "
              f"{med['fp32_autocast']:.0f}, bf16 copy {med['bf16_copy']:.0f}: the copy is "
              f"{weights['bf16_copy_vs_fp32']:.2f}x fp32 and {weights['bf16_copy_vs_autocast']:.2f}x autocast")
    print("reproduce:", cmd)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import transformers

    out.write_text(json.dumps({
        "args": vars(args), "command": cmd, "params": n_params, "results": results, "decode_roofline": roofline, "weights": weights,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }, indent=2))
    print("wrote", out)
    return results


if __name__ == "__main__":
    main()
