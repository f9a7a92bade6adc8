"""Claim: mixing offline pairs into online DPO trades gold reward against KL along ρ (a curve).

    python benchmarks/claims/mixture_ratio.py [--quick] [--seeds 0,1,2]

Per seed: the cached reviews SFT start and the poor-coverage pairs of ``hypo_coverage`` (SFT
samples with gold positivity <= 0 only). Arm ``rho_<ρ>`` draws a fraction ρ of each step's 32
pairs from those offline pairs and the rest fresh from the policy (gold-labelled), 60 steps,
lr 3e-4. ρ = 0 is online DPO and ρ = 1 offline DPO on the pairs, which run on every build; the
intermediate ρ ∈ {0.25, 0.5, 0.75} run when this build has the mixture config key named in
configs/mixture_ratio.yaml. Evaluated on 128 held-out prompts × 2 samples: gold positivity, win
rate vs the SFT samples, KL to SFT. The plot is gold reward and KL against ρ.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Claim, SeedContext, SeedResult, main, plt_agg  # noqa: E402
from stats import AllOf, ByCondition, Greater  # noqa: E402

import lab  # noqa: E402

INTERMEDIATE = ("rho_0.25", "rho_0.5", "rho_0.75")


def run_seed(ctx: SeedContext) -> SeedResult:
    s = ctx.settings()
    sft_path = lab.sft_start(ctx.seed, s.get("sft"), log=ctx.log)
    sets, stats = lab.coverage_sets(ctx, sft_path, s["data"])
    path = lab.write_rows(ctx.work_dir / "prefs-poor.jsonl", sets["poor"])
    ev = lab.reviews_eval(sft_path, ctx.seed, **s["eval"])
    arms = lab.run_arms(ctx, sft_path, {"poor": path}, ev)
    return SeedResult(arms, {"data": stats["poor"], "sft_gold_reward": ev.sft_samples.mean(ev.objective)})


def curve_plot(report: dict, path: Path) -> None:
    """Gold reward and KL against ρ, mean ± SE; a ρ whose arm did not run is marked on the axis."""
    plt = plt_agg()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, metric in zip(axes, ("gold_reward", "kl_to_sft")):
        xs, ys, es, missing = [], [], [], []
        for arm, meta in report["arms"].items():
            s = report["summary"].get(arm, {}).get(metric)
            if s and s["n"]:
                xs.append(meta["options"]["rho"])
                ys.append(s["mean"])
                es.append(0.0 if s["se"] is None or math.isnan(s["se"]) else s["se"])
            else:
                missing.append(meta["options"]["rho"])
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
        for x in missing:
            ax.axvline(x, color="0.8", ls=":", lw=1)
            ax.annotate("n/a", (x, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7)
        ax.set_xlabel("offline fraction ρ")
        ax.set_ylabel(metric)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['claim']}: {report['verdict']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rule():
    # each intermediate ρ: lower KL than pure online (ρ = 0) and more gold than pure offline (ρ = 1)
    return ByCondition(tuple(
        (arm, AllOf((Greater("kl_to_sft", arm, "rho_0", lower_is_better=True),
                     Greater("gold_reward", arm, "rho_1"))))
        for arm in INTERMEDIATE))


CLAIM = Claim(
    name="mixture_ratio",
    statement="an offline fraction 0 < ρ < 1 lowers KL below online DPO's and keeps more gold reward than offline DPO",
    source="scheduled mixtures (issue 10; HNPG-style on-policy + off-policy mixing)",
    metrics=("gold_reward", "win_rate_vs_sft", "kl_to_sft", "response_tokens", "train_s"),
    rule=_rule(),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
    plot=curve_plot,
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
