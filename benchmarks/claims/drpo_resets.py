"""Claim: dataset resets help (DR-PO, Chang et al. 2024): PPO vs DR-PO vs DPO at equal sampled tokens.

    python benchmarks/claims/drpo_resets.py [--quick] [--seeds 0,1,2]

Per seed: the cached reviews SFT start; 1280 train prompts × 2 SFT samples labelled by gold
positivity (Bradley-Terry, temperature 0.1): DR-PO's reset source and DPO's data. Budget: PPO
samples 40 rollout batches × 64 responses; DPO trains on the first of those pairs whose response
tokens add up to PPO's sampled tokens in the same seed; every arm gets 80 gradient steps
(configs/drpo_resets.yaml). DR-PO (``algo.name: drpo``, when this build
has it) gets PPO's settings and rollouts, each starting from a prefix of an offline chosen
response. ``sampled_tokens`` (tokens the policy generated during training) and ``data_tokens``
(tokens in the offline data) are reported so the budgets can be checked. Evaluated on 128
held-out prompts × 2 samples: gold positivity, win rate vs the SFT samples, KL to SFT.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Claim, SeedContext, SeedResult, main  # noqa: E402
from stats import AllOf, Greater  # noqa: E402

import lab  # noqa: E402


def run_seed(ctx: SeedContext) -> SeedResult:
    s = ctx.settings()
    sft_path = lab.sft_start(ctx.seed, s.get("sft"), log=ctx.log)
    rows, stats = lab.preference_pairs(ctx, sft_path, s["data"])
    path = lab.write_rows(ctx.work_dir / "prefs.jsonl", rows)
    ev = lab.reviews_eval(sft_path, ctx.seed, **s["eval"])
    ctx.log(f"  data: {stats['pairs']} pairs, labels agreeing with gold {stats['agree_with_gold']:.3f}; "
            f"SFT gold {ev.sft_samples.mean(ev.objective):+.3f}")
    arms = lab.run_arms(ctx, sft_path, {"pairs": path}, ev)
    return SeedResult(arms, {"data": stats, "sft_gold_reward": ev.sft_samples.mean(ev.objective)})


CLAIM = Claim(
    name="drpo_resets",
    statement="dataset resets help: DR-PO beats PPO and DPO at equal sampled tokens",
    source="DR-PO, Chang et al. 2024 (arXiv 2404.08495)",
    metrics=("gold_reward", "win_rate_vs_sft", "kl_to_sft", "sampled_tokens", "data_tokens", "data_pairs", "train_s"),
    rule=AllOf((Greater("gold_reward", "drpo", "ppo"), Greater("gold_reward", "drpo", "dpo")),
               label="at equal sampled tokens"),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
