"""Claim: online data matters when the offline data's coverage is poor (HyPO, Song et al. 2024).

    python benchmarks/claims/hypo_coverage.py [--quick] [--seeds 0,1,2]

Per seed: the cached reviews SFT start; 512 train prompts × 8 SFT samples scored by gold
positivity; the *poor* set keeps only responses with positivity <= 0 (``max_score``) and pairs
them (2 pairs per prompt, Bradley-Terry labels at temperature 0.1), so no response in it is
near gold-optimal; the *full* control pairs the same samples without the slice, cut to the same
number of pairs. Arms (configs/hypo_coverage.yaml), 60 gradient steps of 32 pairs each: DPO on the
poor set, DPO on the full set, online DPO (fresh pairs from the policy, gold-labelled), and HyPO
on the poor set when this build has ``algo.name: hypo``. Evaluated on 128 held-out prompts × 2
samples: gold positivity, win rate vs the SFT samples, KL to SFT.
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
    sets, stats = lab.coverage_sets(ctx, sft_path, s["data"])
    paths = {name: lab.write_rows(ctx.work_dir / f"prefs-{name}.jsonl", rows) for name, rows in sets.items()}
    ev = lab.reviews_eval(sft_path, ctx.seed, **s["eval"])
    ctx.log(f"  data: poor {stats['poor']['pairs']} pairs (max gold {stats['poor']['max_data_score']:+.2f}, "
            f"near-optimal share {stats['poor']['data_near_optimal_frac']:.3f}); full {stats['full']['pairs']} pairs "
            f"(near-optimal share {stats['full']['data_near_optimal_frac']:.3f}); SFT gold {ev.sft_samples.mean(ev.objective):+.3f}")
    arms = lab.run_arms(ctx, sft_path, paths, ev)
    return SeedResult(arms, {"data": stats, "sft_gold_reward": ev.sft_samples.mean(ev.objective)})


CLAIM = Claim(
    name="hypo_coverage",
    statement="online data matters when the offline data's coverage is poor",
    source="HyPO, Song et al. 2024 (arXiv 2406.01462)",
    metrics=("gold_reward", "win_rate_vs_sft", "kl_to_sft", "response_tokens", "train_s"),
    rule=AllOf((
        Greater("gold_reward", "online_dpo", "dpo_poor"),   # fresh on-policy pairs beat the poor offline pairs
        Greater("gold_reward", "hypo", "dpo_poor"),         # HyPO's on-policy KL term fixes DPO on the same pairs
        Greater("gold_reward", "dpo_full", "dpo_poor"),     # and it is coverage that hurts DPO
    ), label="at equal gradient steps"),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
