"""Claim: robust DPO keeps more gold reward than DPO under label noise (rDPO, Chowdhury et al. 2024).

    python benchmarks/claims/rdpo_noise.py [--quick] [--seeds 0,1,2]

The ``prefopt compare`` setup of docs/offline.md, repeated over seeds: per seed the cached reviews
SFT start, 1024 train prompts × 2 SFT samples labelled by gold positivity (Bradley-Terry,
temperature 0.1), labels flipped where a fixed per-pair draw u < ε (``prefopt.cli.compare.relabel``:
the noisy sets are nested), ε ∈ {0.2, 0.4}. DPO and robust DPO (told the true ε) train 60 steps of
32 pairs, lr 1e-3, β = 0.1, precomputed reference. Evaluated on 128 held-out prompts × 2 samples:
gold positivity, win rate vs the SFT samples, KL to SFT.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Claim, SeedContext, SeedResult, main  # noqa: E402
from stats import ByCondition, Greater  # noqa: E402

import lab  # noqa: E402


def run_seed(ctx: SeedContext) -> SeedResult:
    from prefopt.cli.compare import relabel

    s = ctx.settings()
    sft_path = lab.sft_start(ctx.seed, s.get("sft"), log=ctx.log)
    rows, stats = lab.preference_pairs(ctx, sft_path, s["data"])
    paths, info = {}, {"clean": stats}
    for eps in s["flip_rates"]:
        noisy, st = relabel(rows, eps, ctx.seed)
        agree = sum(r["scores"]["positivity"][0] >= r["scores"]["positivity"][1] for r in noisy) / max(1, len(noisy))
        paths[f"eps{eps:g}"] = lab.write_rows(ctx.work_dir / f"prefs-eps{eps:g}.jsonl", noisy)
        info[f"eps{eps:g}"] = {**st, "agree_with_gold": agree}
    ev = lab.reviews_eval(sft_path, ctx.seed, **s["eval"])
    arms = lab.run_arms(ctx, sft_path, paths, ev)
    return SeedResult(arms, {"data": info, "sft_gold_reward": ev.sft_samples.mean(ev.objective)})


CLAIM = Claim(
    name="rdpo_noise",
    statement="robust DPO (told ε) keeps more gold reward than DPO under label noise",
    source="rDPO, Chowdhury et al. 2024 (arXiv 2403.00409)",
    metrics=("gold_reward", "win_rate_vs_sft", "kl_to_sft", "train_s"),
    rule=ByCondition((("ε=0.2", Greater("gold_reward", "robust_dpo_eps0.2", "dpo_eps0.2")),
                      ("ε=0.4", Greater("gold_reward", "robust_dpo_eps0.4", "dpo_eps0.4")))),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
