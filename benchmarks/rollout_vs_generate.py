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

Run:  python benchmarks/rollout_vs_generate.py [--model-size small] [--batch 32] [--new-tokens 64]
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

SIZES = {  # name -> (vocab, hidden, intermediate, layers, heads)
    "tiny": (4096, 128, 344, 4, 4),     # ~1.9M params
    "small": (8192, 256, 688, 4, 4),    # ~7.4M params
    "medium": (16384, 384, 1024, 6, 6), # ~22M params
}


def build_model(size: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, inter, layers, heads = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                      initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    return model, sum(p.numel() for p in model.parameters())


def make_prompts(batch: int, vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 33, (batch,), generator=g).tolist()
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batch", type=int, default=32, help="prompts per batch")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="A/B pairs per case (median reported)")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt in the k_samples case")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--eos-frac", type=float, default=0.02,
                    help="fraction of the vocab used as stop tokens in the eos_heavy case")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    ap.add_argument("--cases", default="no_eos,eos_heavy,k_samples")
    ap.add_argument("--out", default="runs/bench/rollout_vs_generate.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, n_params = build_model(args.model_size)
    vocab = model.config.vocab_size
    prompts = make_prompts(args.batch, vocab)
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

    cmd = "python benchmarks/rollout_vs_generate.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    print(f"model: Llama {args.model_size} ({n_params / 1e6:.1f}M params), batch {args.batch}, "
          f"new tokens {args.new_tokens}, repeats {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'case':<11} {'rows':>5} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6}")
    for name, r in results.items():
        print(f"{name:<11} {r['rows']:>5} {r['generate_median']:>15.0f} {r['engine_median']:>13.0f} {r['ratio']:>6.2f}x")
    print("reproduce:", cmd)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import transformers

    out.write_text(json.dumps({
        "args": vars(args), "command": cmd, "params": n_params, "results": results,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }, indent=2))
    print("wrote", out)
    return results


if __name__ == "__main__":
    main()
