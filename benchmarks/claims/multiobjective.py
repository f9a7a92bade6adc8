"""Claims of issue 11 on the reviews lab, informativeness × brevity (self-contained: the shared
claims harness was not in main when this was written).

1. soups trace a front close to MORLHF's at a fraction of its cost (hypervolume ratio, cost ratio);
2. MODPO reaches MORLHF's front at ~3x less compute (Zhou et al. 2024);
3. rewards-in-context: one model covers the front (hypervolume vs soups) at its cost.

One SFT start and one informativeness-labelled pairs file are made once (seed 0) and shared by
every seed; each seed then runs the four fronts (``prefopt front``) with its own training seed and
compares their hypervolumes at one common reference point per seed.

    python benchmarks/claims/multiobjective.py --seeds 0 1 2 --out runs/claims-mo
    python benchmarks/claims/multiobjective.py --quick --out /tmp/claims-mo   # seconds, for tests
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OBJECTIVES = ["informativeness", "brevity"]
FULL = dict(sft_steps=200, pref_prompts=384, rl_steps=20, modpo_steps=40, ric_steps=120, eval_prompts=48,
            prompts_per_step=16, ric_rounds=1, ric_round_prompts=256, ric_round_steps=40)
QUICK = dict(sft_steps=4, pref_prompts=16, rl_steps=1, modpo_steps=1, ric_steps=1, eval_prompts=4,
             prompts_per_step=2, ric_rounds=1, ric_round_prompts=4, ric_round_steps=1)


def base_models(out: Path, s: dict) -> tuple[str, str]:
    """(SFT model dir, pairs file) shared by every seed; reused when present."""
    from prefopt.cli.demo import reviews_sft_config
    from prefopt.cli.run import run_train, task_tokenizer
    from prefopt.data.loaders import write_jsonl
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.rollout.engine import SamplingConfig
    from prefopt.tasks import get_task
    from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data

    sft_model = out / "base" / "sft" / f"checkpoint-{s['sft_steps']}" / "model"
    pairs = out / "base" / "pairs.jsonl"
    if not sft_model.exists():
        run_train(reviews_sft_config("tiny:llama-1m", seed=0, steps=s["sft_steps"], lr=3e-3, examples=6000,
                                     output_dir=out / "base", loop=dict(batch_size=32, progress=False, threads=1)))
    if not pairs.exists():
        tokenizer = task_tokenizer("reviews", {})
        rows, _ = make_preference_data(load_model(ModelConfig(name_or_path=str(sft_model))), tokenizer,
                                       get_task("reviews"), PrefDataConfig(
                                           num_prompts=s["pref_prompts"], objective="informativeness", seed=0,
                                           sampling=SamplingConfig(max_new_tokens=40, temperature=1.0,
                                                                   batch_size=128)))
        write_jsonl(pairs, rows)
    return str(sft_model), str(pairs)


def train_configs(out: Path, sft: str, pairs: str, s: dict, seed: int) -> dict[str, Path]:
    common = {"model": {"name_or_path": sft}, "data": {"task": "reviews", "eval_examples": 8}}
    loop = {"batch_size": 32, "seed": seed, "threads": 1, "warmup_steps": 0, "lr_schedule": "constant"}
    configs = {
        "online": {**common, "optim": {"lr": 1e-3}, "train": {**loop, "steps": s["rl_steps"]},
                   "algo": {"name": "rloo"}, "rollout": {"max_new_tokens": 40},
                   "online": {"prompts_per_step": s["prompts_per_step"], "num_generations": 4, "kl_coef": 0.05,
                              "eval_num_samples": 1}},
        "modpo": {**common, "data": {**common["data"], "path": pairs}, "optim": {"lr": 1e-3},
                  "train": {**loop, "steps": s["modpo_steps"]}, "algo": {"name": "modpo", "beta": 0.1},
                  "modpo": {"weights": [0.5, 0.5], "margins": ["scores:brevity"],
                            # the pairs' labels are Bradley-Terry at temperature 0.1 on gold scores: the
                            # brevity margin goes on that implicit-reward scale (x 1/0.1)
                            "margin_scales": [10.0]}},
        "ric": {**common, "data": {**common["data"], "path": pairs}, "optim": {"lr": 1e-3},
                "train": {**loop, "steps": s["ric_steps"]}, "algo": {"name": "ric"},
                "ric": {"objectives": OBJECTIVES, "rounds": s["ric_rounds"], "round_prompts": s["ric_round_prompts"],
                        "round_steps": s["ric_round_steps"]}},
    }
    paths = {}
    for name, data in configs.items():
        paths[name] = out / f"seed-{seed}" / f"{name}.yaml"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(yaml.safe_dump(data, sort_keys=False))
    return paths


def run_seed(out: Path, sft: str, pairs: str, s: dict, seed: int) -> dict:
    from prefopt.cli.front import FrontConfig, run_front
    from prefopt.objectives.front import Front, common_reference
    from prefopt.objectives.pareto import hypervolume

    paths = train_configs(out, sft, pairs, s, seed)
    plans = {"morlhf": dict(train_config=str(paths["online"]), grid=2),
             "soups": dict(train_config=str(paths["online"]), grid=4),
             "modpo": dict(train_config=str(paths["modpo"]), weights=[[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]]),
             "ric": dict(train_config=str(paths["ric"]), grid=4)}
    fronts = {}
    for method, plan in plans.items():
        cfg = FrontConfig(method=method, objectives=OBJECTIVES, eval_prompts=s["eval_prompts"], eval_samples=2,
                          eval_seed=1000 + seed, progress=False, **plan)
        run_front(cfg, out / f"seed-{seed}" / method, log=lambda *_: None)
        fronts[method] = Front.load(out / f"seed-{seed}" / method / "front.json")
    ref = common_reference(list(fronts.values()))
    result = {"reference": list(ref)}
    for method, front in fronts.items():
        total = front.total_cost()
        result[method] = {"hypervolume": hypervolume(front.matrix(), ref), "wall_seconds": total.wall_seconds,
                          "cpu_seconds": total.cpu_seconds,
                          "sampled_tokens": total.sampled_tokens, "gradient_steps": total.gradient_steps,
                          "points": [p.vector(front.objectives) for p in front.points]}
    return result


def plot_seed(out: Path, seed: int, path: Path) -> Path:
    """The four fronts of one seed in one panel, hypervolumes at their common reference point."""
    from prefopt.objectives.front import Front, common_reference
    from prefopt.report.front_plot import plot_fronts

    fronts = [Front.load(out / f"seed-{seed}" / m / "front.json") for m in ("morlhf", "soups", "modpo", "ric")]
    ref = common_reference(fronts)
    for front in fronts:
        front.refresh(ref)
    plot_fronts(fronts, path, title=f"reviews: informativeness x brevity (seed {seed})")
    return path


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def claims(per_seed: list[dict]) -> dict:
    """Per-claim figures (lists over seeds)."""
    def col(fn):
        return [fn(r) for r in per_seed]
    return {
        "soups_vs_morlhf": {
            "hv_ratio": col(lambda r: _ratio(r["soups"]["hypervolume"], r["morlhf"]["hypervolume"])),
            "cost_ratio": col(lambda r: _ratio(r["soups"]["cpu_seconds"], r["morlhf"]["cpu_seconds"]))},
        "modpo_vs_morlhf": {
            "hv_ratio": col(lambda r: _ratio(r["modpo"]["hypervolume"], r["morlhf"]["hypervolume"])),
            "compute_saving": col(lambda r: _ratio(r["morlhf"]["cpu_seconds"], r["modpo"]["cpu_seconds"]))},
        "ric_vs_soups": {
            "hv_ratio": col(lambda r: _ratio(r["ric"]["hypervolume"], r["soups"]["hypervolume"])),
            "cost_ratio": col(lambda r: _ratio(r["ric"]["cpu_seconds"], r["soups"]["cpu_seconds"]))},
    }


# Thresholds of the verdicts: "close to / reaches / covers the front" = hypervolume ratio >= 0.9;
# "a fraction of the cost" = cost ratio <= 0.75; "~3x less compute" = saving >= 2.5; "at its cost" <= 1.
CLOSE_HV, FRACTION, SAVING, AT_COST = 0.9, 0.75, 2.5, 1.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def verdicts(c: dict) -> dict[str, str]:
    """holds / partly / does not hold per claim, from the means over seeds."""
    def say(front_ok: bool, cost_ok: bool, front: str, cost: str) -> str:
        if front_ok and cost_ok:
            return "holds"
        if front_ok or cost_ok:
            return f"partly ({front if front_ok else cost} holds, {cost if front_ok else front} does not)"
        return "does not hold"
    s, m, r = c["soups_vs_morlhf"], c["modpo_vs_morlhf"], c["ric_vs_soups"]
    return {
        "soups_vs_morlhf": say(_mean(s["hv_ratio"]) >= CLOSE_HV, _mean(s["cost_ratio"]) <= FRACTION,
                               "front", "cost"),
        "modpo_vs_morlhf": say(_mean(m["hv_ratio"]) >= CLOSE_HV, _mean(m["compute_saving"]) >= SAVING,
                               "front", "3x saving"),
        "ric_vs_soups": say(_mean(r["hv_ratio"]) >= CLOSE_HV, _mean(r["cost_ratio"]) <= AT_COST, "front", "cost"),
    }


def mean_se(values: list[float]) -> str:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return f"{m:.2f} (1 seed)"
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)
    return f"{m:.2f} ± {se:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test, figures meaningless)")
    p.add_argument("--out", default="runs/claims-multiobjective")
    p.add_argument("--figure", help="also draw the first seed's four fronts to this PNG")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    s = QUICK if args.quick else FULL
    out = Path(args.out)
    t0 = time.perf_counter()
    sft, pairs = base_models(out, s)
    per_seed = [run_seed(out, sft, pairs, s, seed) for seed in args.seeds]
    figures = claims(per_seed)
    summary = {"settings": s, "seeds": args.seeds, "per_seed": per_seed, "claims": figures,
               "verdicts": verdicts(figures), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.figure:
        plot_seed(out, args.seeds[0], Path(args.figure))
    for claim, figures in summary["claims"].items():
        print(claim, {k: mean_se(v) for k, v in figures.items()}, summary["verdicts"][claim])
    print(f"wall time {summary['seconds']} s; {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
