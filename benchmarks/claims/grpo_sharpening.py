"""Claim: GRPO with a verifiable reward sharpens: sampled exact match rises, pass@8 does not (Yue et al. 2025).

    python benchmarks/claims/grpo_sharpening.py [--quick] [--seeds 0,1,2]

The arithmetic result of docs/online.md over seeds: one cached SFT start (configs/sft/arithmetic.yaml,
seed 0; three 2400-step SFT runs do not fit the budget), then per seed GRPO on gold ``correct``
(64 prompts × 8 samples per step, 120 steps, freeze tuning of the final RMSNorm at lr 0.1, own train
seed and held-out prompts). ``sft`` is the same run's step-0 evaluation. Held-out: 512 prompts × 8
samples at T = 1 (``exact_match`` = mean over samples; ``pass_at_k`` = pass@8, the share of prompts
with a correct sample) and the greedy answer.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Claim, SeedContext, SeedResult, main  # noqa: E402
from stats import AllOf, Greater  # noqa: E402

import lab  # noqa: E402

EVAL_KEYS = {"exact_match": "eval/gold/correct", "greedy_exact_match": "eval/greedy/gold/correct",
             "kl_to_sft": "eval/kl_to_ref"}


def _figures(row: dict, k: int) -> dict:
    out = {name: float(row[key]) for name, key in EVAL_KEYS.items() if key in row}
    out["pass_at_k"] = float(row[f"eval/gold/correct/pass@{k}"])
    return out


def run_seed(ctx: SeedContext) -> SeedResult:
    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.train.config import TrainConfig
    from prefopt.train.metrics import read_metrics

    s = ctx.settings()
    sft = {**s["sft"], "train": {**s["sft"]["train"], "seed": s["sft_seed"], "threads": ctx.threads}}
    sft["model"] = {**sft["model"], "init_seed": s["sft_seed"]}
    sft_path = lab.cached_sft(sft, log=ctx.log)
    arms = {}
    for arm in ctx.arms:
        data = ctx.train_dict(arm, {"model": {"name_or_path": str(sft_path)}, "output_dir": str(ctx.work_dir),
                                    "run_name": arm.name,
                                    "train": {"seed": ctx.seed, "threads": ctx.threads, "progress": False}})
        run = run_train(from_dict(TrainConfig, data), overwrite=True)  # this claim run's own folder
        k = data["online"]["eval_num_samples"]
        evals = [m for m in read_metrics(run.run_dir / "metrics.jsonl") if "eval/gold/correct" in m]
        arms["sft"] = {**_figures(evals[0], k), "kl_to_sft": 0.0}
        arms[arm.name] = {**_figures(evals[-1], k), "train_s": round(run.result.seconds, 1)}
        ctx.log(f"  {arm.name}: exact match {arms['sft']['exact_match']:.3f} -> {arms[arm.name]['exact_match']:.3f}, "
                f"pass@{k} {arms['sft']['pass_at_k']:.3f} -> {arms[arm.name]['pass_at_k']:.3f}")
    return SeedResult(arms, {"sft_model": str(sft_path)})


CLAIM = Claim(
    name="grpo_sharpening",
    statement="GRPO raises sampled exact match (pass@1) while pass@8 does not rise (it falls)",
    source="Yue et al. 2025, Does RL really incentivize reasoning capacity beyond the base model? (arXiv 2504.13837)",
    metrics=("exact_match", "pass_at_k", "greedy_exact_match", "kl_to_sft", "train_s"),
    rule=AllOf((Greater("exact_match", "grpo", "sft"), Greater("pass_at_k", "sft", "grpo"))),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
