"""``prefopt demo``: tokenizer + tiny model → SFT → preference data → DPO → evaluation, on ``reviews``.

Preference pairs are sampled from the SFT model and labelled by gold positivity (Bradley-Terry)
with 10% of labels flipped. Everything is written to ``runs/demo-<timestamp>/``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path


from prefopt.cli.run import run_train, task_tokenizer
from prefopt.data.loaders import write_jsonl
from prefopt.data.config import DataConfig
from prefopt.eval.lab import compare_policies, sample_policy
from prefopt.models.config import ModelConfig
from prefopt.models.loading import load_model
from prefopt.optim.config import OptimConfig
from prefopt.rollout.engine import SamplingConfig
from prefopt.seeding import EVAL_PROMPTS, EVAL_SAMPLING, SEED_MAX, derive_seed
from prefopt.tasks import get_task
from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data
from prefopt.report.build import ReportConfig, build_report
from prefopt.report.data import SAMPLES_FILE
from prefopt.report.environment import write_environment
from prefopt.train.config import AlgoConfig, LoopConfig, TrainConfig
from prefopt.validation import check_config


@dataclass
class DemoConfig:
    """``prefopt demo [key=value ...]``: the end-to-end pipeline on the lab task ``reviews``."""

    model: str = field(default="tiny:llama-1m", metadata={"help": "Tiny built-in model to start from."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage (the demo is deterministic for a seed).", "min": 0, "max": SEED_MAX})
    sft_steps: int = field(default=300, metadata={"help": "SFT optimizer steps.", "min": 1})
    sft_lr: float = field(default=3e-3, metadata={"help": "SFT learning rate.", "gt": 0})
    sft_examples: int = field(default=6000, metadata={"help": "SFT demonstrations drawn from the task corpus.", "min": 1})
    pref_prompts: int = field(default=1024, metadata={"help": "Prompts for preference data (2 samples each → 1 pair).", "min": 1})
    flip_rate: float = field(default=0.1, metadata={"help": "Fraction of preference labels flipped.", "min": 0, "lt": 0.5})
    loss: str = field(default="dpo", metadata={"help": "Pairwise loss for the preference stage."})
    beta: float = field(default=0.1, metadata={"help": "DPO β.", "gt": 0})
    dpo_steps: int = field(default=80, metadata={"help": "DPO optimizer steps.", "min": 1})
    dpo_lr: float = field(default=1e-3, metadata={"help": "DPO learning rate.", "gt": 0})
    batch_size: int = field(default=32, metadata={"help": "Examples (SFT) or pairs (DPO) per step.", "min": 1})
    eval_prompts: int = field(default=128, metadata={"help": "Held-out prompts for the final evaluation.", "min": 1})
    eval_samples: int = field(default=4, metadata={"help": "Samples per held-out prompt.", "min": 1})
    curve_points: int = field(default=4, metadata={"help": "Reward-vs-KL evaluations during DPO (0 = only the end).", "min": 0})
    max_new_tokens: int = field(default=40, metadata={"help": "Longest sampled response.", "min": 1})
    output_dir: str = field(default="runs", metadata={"help": "The run goes to <output_dir>/demo-<timestamp>."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def reviews_sft_config(model: str, *, seed: int, steps: int, lr: float, examples: int, output_dir: Path,
                       loop: dict, eval_examples: int = 128) -> TrainConfig:
    """The lab's SFT stage on the ``reviews`` corpus (shared by the demo and ``prefopt compare``)."""
    return TrainConfig(
        model=ModelConfig(name_or_path=model, init_seed=seed),
        data=DataConfig(task="reviews", num_examples=examples, eval_examples=eval_examples),
        optim=OptimConfig(name="adamw", lr=lr),
        train=LoopConfig(steps=steps, warmup_steps=min(20, steps // 10), **loop),
        algo=AlgoConfig(name="sft"), output_dir=str(output_dir), run_name="sft")


def run_demo(cfg: DemoConfig, run_dir: Path | None = None, log=print) -> dict:
    check_config(cfg)
    t0 = time.perf_counter()
    run_dir = Path(run_dir or Path(cfg.output_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    task = get_task("reviews")
    objective = task.default_objective
    tokenizer = task_tokenizer("reviews", {})
    loop = dict(batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress)

    log(f"[1/4] SFT of {cfg.model} on the reviews corpus ({cfg.sft_steps} steps)")
    sft = run_train(reviews_sft_config(cfg.model, seed=cfg.seed, steps=cfg.sft_steps, lr=cfg.sft_lr,
                                       examples=cfg.sft_examples, output_dir=run_dir, loop=loop))
    sft_path = sft.result.final_checkpoint / "model"

    log(f"[2/4] preference data: {cfg.pref_prompts} prompts × 2 samples from the SFT model, "
        f"labelled by gold {objective}, {cfg.flip_rate:.0%} flipped")
    sft_model = load_model(ModelConfig(name_or_path=str(sft_path)))
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, batch_size=128)
    rows, pstats = make_preference_data(sft_model, tokenizer, task, PrefDataConfig(
        num_prompts=cfg.pref_prompts, samples_per_prompt=2, objective=objective, flip_rate=cfg.flip_rate,
        seed=cfg.seed, sampling=sampling))
    write_jsonl(run_dir / "preferences.jsonl", rows)

    eval_prompts = task.prompts("eval", cfg.eval_prompts, seed=derive_seed(cfg.seed, EVAL_PROMPTS))
    eval_sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                                   num_samples=cfg.eval_samples, seed=derive_seed(cfg.seed, EVAL_SAMPLING), batch_size=256)
    sft_samples = sample_policy(sft_model, tokenizer, task, eval_prompts, eval_sampling)
    curve_prompts = eval_prompts[: max(16, cfg.eval_prompts // 4)]
    curve_sampling = SamplingConfig(**{**eval_sampling.__dict__, "num_samples": 2})
    curve_ref = sample_policy(sft_model, tokenizer, task, curve_prompts, curve_sampling)

    def lab_eval(model) -> dict:
        r = compare_policies(model, sft_model, tokenizer, task, curve_prompts, objective, curve_sampling, curve_ref)
        return {"kl_to_sft": r["kl_to_ref"], **{f"gold/{k}": r[f"gold/{k}"] for k in task.objectives}}

    log(f"[3/4] {cfg.loss} on {pstats.pairs} pairs ({cfg.dpo_steps} steps, β={cfg.beta})")
    every = max(1, cfg.dpo_steps // cfg.curve_points) if cfg.curve_points else 0
    dpo_cfg = TrainConfig(
        model=ModelConfig(name_or_path=str(sft_path)),
        data=DataConfig(task="reviews", path=str(run_dir / "preferences.jsonl"), eval_examples=64),
        optim=OptimConfig(name="adamw", lr=cfg.dpo_lr),
        train=LoopConfig(steps=cfg.dpo_steps, warmup_steps=10, eval_every=every, eval_on_start=bool(every), **loop),
        algo=AlgoConfig(name="dpo", loss=cfg.loss, beta=cfg.beta), output_dir=str(run_dir), run_name="dpo")
    dpo = run_train(dpo_cfg, evaluators=[lab_eval])
    dpo_model = load_model(ModelConfig(name_or_path=str(dpo.result.final_checkpoint / "model")))

    log(f"[4/4] evaluation on {cfg.eval_prompts} held-out prompts × {cfg.eval_samples} samples")
    result = compare_policies(dpo_model, sft_model, tokenizer, task, eval_prompts, objective, eval_sampling, sft_samples)
    dpo_samples = sample_policy(dpo_model, tokenizer, task, eval_prompts, eval_sampling)
    summary = {
        "task": "reviews", "objective": objective, "loss": cfg.loss, "seed": cfg.seed,
        "sft": {"gold_reward": sft_samples.mean(objective),
                "gold": {k: sft_samples.mean(k) for k in task.objectives},
                "eval_loss": sft.result.eval_metrics.get("loss")},
        "dpo": {"gold_reward": result["gold_reward"], "win_rate_vs_sft": result["win_rate_vs_ref"],
                "kl_to_sft": result["kl_to_ref"],
                "gold": {k: result[f"gold/{k}"] for k in task.objectives},
                "eval_reward_accuracy": dpo.result.eval_metrics.get("rewards/accuracy")},
        "preference_data": {"pairs": pstats.pairs, "flipped": pstats.flipped,
                            "identical_skipped": pstats.identical_skipped,
                            "labels_agreeing_with_gold": pstats.agree_with_gold},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_samples(run_dir / SAMPLES_FILE, {"SFT": sft_samples, cfg.loss.upper(): dpo_samples})
    write_environment(run_dir)
    build_report([run_dir], ReportConfig(title=f"prefopt demo: SFT → {cfg.loss.upper()} on reviews"))
    return summary


def write_samples(path: Path, policies: dict) -> None:
    """Every held-out sample of each policy with its gold scores (what the report shows as before/after)."""
    rows = []
    for policy, samples in policies.items():
        seen: dict[str, int] = {}
        for i, (prompt, text) in enumerate(zip(samples.prompts, samples.texts)):
            seen[prompt] = seen.get(prompt, -1) + 1
            rows.append({"policy": policy, "prompt": prompt, "index": seen[prompt], "response": text,
                         "scores": {k: v[i] for k, v in samples.gold.items()}})
    write_jsonl(path, rows)
