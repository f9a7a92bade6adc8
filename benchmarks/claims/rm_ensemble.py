"""Claim: reward-model ensembles mitigate overoptimization in best-of-n (Coste et al. 2024).

    python benchmarks/claims/rm_ensemble.py [--quick] [--seeds 0,1,2]

Per seed: the cached reviews SFT start; 1024 train prompts × 2 SFT samples labelled by gold
positivity (Bradley-Terry, temperature 0.1) with 25% of the labels flipped; one single reward
model and one ensemble of 4 separately seeded models (100 steps of 32 pairs, lr 1e-3, from the
SFT start). Best-of-n on 128 held-out prompts × 16 SFT samples: each scorer picks its highest
proxy reward among the first n samples of a prompt; ``gold_bon<n>`` is the mean gold positivity
of the picks (the ensemble is scored by its mean, its worst member and mean − variance).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Claim, SeedContext, SeedResult, main  # noqa: E402
from stats import ByCondition, Greater  # noqa: E402

import lab  # noqa: E402


def bon_gold(proxy, gold, prompts: int, n: int) -> float:
    """Mean gold of the best-of-n pick per prompt (rows of a prompt consecutive, k per prompt)."""
    import torch

    k = len(proxy) // prompts
    p = torch.as_tensor(proxy, dtype=torch.float64).view(prompts, k)[:, :n]
    g = torch.as_tensor(gold, dtype=torch.float64).view(prompts, k)[:, :n]
    return float(g.gather(1, p.argmax(1, keepdim=True)).mean())


def run_seed(ctx: SeedContext) -> SeedResult:
    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train, task_tokenizer
    from prefopt.eval.lab import sample_policy
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.models.reward import aggregate, load_scorer
    from prefopt.rollout.engine import SamplingConfig
    from prefopt.tasks import get_task
    from prefopt.train.config import TrainConfig

    s = ctx.settings()
    sft_path = lab.sft_start(ctx.seed, s.get("sft"), log=ctx.log)
    rows, stats = lab.preference_pairs(ctx, sft_path, s["data"])
    path = lab.write_rows(ctx.work_dir / "prefs.jsonl", rows)
    task, tokenizer, bon = get_task("reviews"), task_tokenizer("reviews", {}), s["bon"]
    prompts = task.prompts("eval", bon["prompts"], seed=ctx.seed + 1)
    sampling = SamplingConfig(max_new_tokens=bon["max_new_tokens"], temperature=1.0, num_samples=max(bon["n"]),
                              seed=ctx.seed + 2, batch_size=256)
    samples = sample_policy(load_model(ModelConfig(name_or_path=str(sft_path))), tokenizer, task, prompts, sampling)
    trained: dict[str, tuple] = {}  # one reward model per distinct config
    arms = {}
    for arm in ctx.arms:
        data = ctx.train_dict(arm, {"model": {"name_or_path": str(sft_path)}, "data": {"path": str(path)},
                                    "output_dir": str(ctx.work_dir), "run_name": arm.name,
                                    "train": {"seed": ctx.seed, "threads": ctx.threads, "progress": False}})
        key = json.dumps({k: v for k, v in data.items() if k != "run_name"}, sort_keys=True)
        if key not in trained:
            run = run_train(from_dict(TrainConfig, data), overwrite=True)  # this claim run's own folder
            scorer = load_scorer(run.result.final_checkpoint / "model", tokenizer=tokenizer)
            members = scorer.member_rewards(samples.prompts, samples.texts)
            trained[key] = (members, run.result.eval_metrics.get("accuracy"), run.result.seconds)
        members, accuracy, seconds = trained[key]
        proxy = aggregate(members, arm.options.get("aggregation", "mean"), arm.options.get("uwo_lambda", 1.0)).tolist()
        gold = samples.gold[task.default_objective]
        arms[arm.name] = {**{f"gold_bon{n}": bon_gold(proxy, gold, len(prompts), n) for n in bon["n"]},
                          "heldout_accuracy": accuracy, "train_s": round(seconds, 1)}
        ctx.log(f"  {arm.name:>10s}: " + "  ".join(f"bon{n} {arms[arm.name][f'gold_bon{n}']:+.3f}" for n in bon["n"]))
    return SeedResult(arms, {"data": stats, "sft_gold_reward": samples.mean(task.default_objective)})


CLAIM = Claim(
    name="rm_ensemble",
    statement="best-of-16 by a reward-model ensemble (worst case or mean − variance) picks higher gold than by a single reward model",
    source="Coste et al. 2024, Reward model ensembles help mitigate overoptimization (arXiv 2310.02743)",
    metrics=("gold_bon1", "gold_bon4", "gold_bon16", "heldout_accuracy", "train_s"),
    rule=ByCondition((("worst case", Greater("gold_bon16", "ens_min", "single")),
                      ("mean − variance", Greater("gold_bon16", "ens_uwo", "single")))),
    run_seed=run_seed,
    setup=__doc__.split("\n\n", 2)[2].strip(),
)

if __name__ == "__main__":
    sys.exit(main(CLAIM))
