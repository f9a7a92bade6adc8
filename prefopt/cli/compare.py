"""``prefopt compare``: every P0 offline loss on the ``reviews`` lab under label noise.

One SFT model and one set of preference samples (2 responses per prompt from the SFT model,
labelled by gold positivity with Bradley-Terry) are shared by every run. For each flip rate ε
the labels are flipped with a fixed per-pair uniform draw u_i < ε, so the noisy sets are nested
(every pair flipped at 0.2 is also flipped at 0.4). Each loss then trains from the SFT model
with the same data, seed, steps, batch and learning rate, and is evaluated on held-out prompts:

- gold reward: mean gold positivity of sampled responses;
- win rate vs SFT: fraction of samples beating the SFT model's sample for the same prompt;
- KL to SFT: Monte-Carlo sequence KL(policy || SFT);
- ranking accuracy: on held-out pairs ordered by *gold* (no flips, ties dropped), how often the
  loss's own implicit reward (β·log-ratio; length-normalized log-prob for SimPO/ORPO; β·log-ratio
  for KTO) ranks the better response higher.

Reference-based losses use precomputed reference log-probs (computed once per ε and reused by
every loss through the on-disk cache). cdpo and robust_dpo are told the true ε
(``label_smoothing = ε``). KTO gets each pair as one desirable and one undesirable example and
twice the batch size, so every run takes gradients through the same number of sequences.

Writes ``results.json``, ``results.md`` (tables) and ``gold_vs_flip.png`` under the output dir.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefopt.cli.demo import reviews_sft_config
from prefopt.cli.run import run_train, task_tokenizer
from prefopt.data.config import DataConfig
from prefopt.data.loaders import write_jsonl
from prefopt.errors import ConfigError
from prefopt.eval.lab import compare_policies, sample_policy
from prefopt.models.config import ModelConfig
from prefopt.models.loading import load_model
from prefopt.optim.config import OptimConfig
from prefopt.rollout.engine import SamplingConfig
from prefopt.seeding import EVAL_PROMPTS, EVAL_SAMPLING, HELDOUT_PAIRS, LABEL_FLIPS, SEED_MAX, derive_seed
from prefopt.tasks import get_task
from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data
from prefopt.train.config import AlgoConfig, LoopConfig, TrainConfig
from prefopt.validation import bad_value, check_config

log = logging.getLogger("prefopt.compare")

P0_LOSSES = ["dpo", "cdpo", "robust_dpo", "ipo", "hinge", "rpo", "simpo", "orpo", "kto"]
DEFAULT_BETAS = {"dpo": 0.1, "cdpo": 0.1, "robust_dpo": 0.1, "ipo": 0.5, "hinge": 0.1, "rpo": 0.1,
                 "simpo": 2.0, "orpo": 0.1, "kto": 0.1}
NOISE_AWARE = ("cdpo", "robust_dpo")  # given label_smoothing = ε


@dataclass
class CompareConfig:
    """``prefopt compare [key=value ...]``: P0 losses × label-flip rates on the reviews lab."""

    losses: list[str] = field(default_factory=lambda: list(P0_LOSSES), metadata={"help": (
        "Losses to compare: any pairwise loss name, or 'kto'.")})
    flip_rates: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4], metadata={"help": (
        "Label-flip rates ε of the preference data (each < 0.5).")})
    betas: dict = field(default_factory=dict, metadata={"help": (
        "β per loss, overriding the defaults (dpo/cdpo/robust_dpo/hinge/rpo/orpo/kto 0.1, ipo 0.5, simpo 2.0).")})
    loss_hparams: dict = field(default_factory=dict, metadata={"help": (
        "Extra hyper-parameters per loss, e.g. {simpo: {gamma: 0.5}}.")})
    model: str = field(default="tiny:llama-1m", metadata={"help": "Tiny model the SFT stage starts from."})
    sft_model: str | None = field(default=None, metadata={"help": "An existing SFT model directory (skips SFT)."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage.", "min": 0, "max": SEED_MAX})
    sft_steps: int = field(default=300, metadata={"help": "SFT optimizer steps.", "min": 1})
    sft_lr: float = field(default=3e-3, metadata={"help": "SFT learning rate.", "gt": 0})
    sft_examples: int = field(default=6000, metadata={"help": "SFT demonstrations from the task corpus.", "min": 1})
    pref_prompts: int = field(default=1024, metadata={"help": "Training prompts (2 samples each → 1 pair).", "min": 1})
    bt_temperature: float = field(default=0.1, metadata={"help": "Bradley-Terry temperature of the clean labels.", "min": 0})
    steps: int = field(default=60, metadata={"help": "Optimizer steps per loss.", "min": 1})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate of every preference run.", "gt": 0})
    batch_size: int = field(default=32, metadata={"help": "Pairs per step (KTO: twice as many examples).", "min": 1})
    eval_prompts: int = field(default=128, metadata={"help": "Held-out prompts for gold reward / win rate / KL.", "min": 1})
    eval_samples: int = field(default=2, metadata={"help": "Samples per held-out prompt.", "min": 1})
    heldout_pairs: int = field(default=256, metadata={"help": "Held-out prompts for gold-ordered ranking pairs.", "min": 1})
    max_new_tokens: int = field(default=40, metadata={"help": "Longest sampled response.", "min": 1})
    output_dir: str = field(default="runs", metadata={"help": "Results go to <output_dir>/compare-<timestamp>."})
    progress: bool = field(default=False, metadata={"help": "Show progress bars."})
    threads: int = field(default=0, metadata={"help": (
        "torch CPU threads (0 = torch's default; 1 is fastest on a machine shared with other jobs)."), "min": 0})

    def validate(self, prefix: str = "") -> None:
        """The list entries (scalar fields are range-checked from their metadata)."""
        for i, eps in enumerate(self.flip_rates):
            if not 0.0 <= eps < 0.5:
                raise bad_value(f"{prefix}flip_rates[{i}]", eps, "a number in [0, 0.5)")
        if not self.losses:
            raise bad_value(f"{prefix}losses", self.losses, "at least one loss")
        from prefopt.losses import get_pairwise_loss
        for i, name in enumerate(self.losses):
            try:
                if name != "kto":
                    get_pairwise_loss(name)
            except ValueError as exc:
                raise ConfigError(f"{prefix}losses[{i}]: {exc}") from None


def relabel(base_rows: list[dict], flip_rate: float, seed: int) -> tuple[list[dict], dict]:
    """Flip pair i when u_i < ε, with u_i fixed by ``seed`` (nested noise across ε)."""
    rng = random.Random(derive_seed(seed, LABEL_FLIPS))
    rows, flipped = [], 0
    for row in base_rows:
        u = rng.random()
        new = dict(row)
        if u < flip_rate:
            new["chosen"], new["rejected"] = row["rejected"], row["chosen"]
            new["scores"] = {k: [v[1], v[0]] for k, v in row["scores"].items()}
            new["flipped"] = True
            flipped += 1
        rows.append(new)
    return rows, {"pairs": len(rows), "flipped": flipped}


def _agreement(rows: list[dict], objective: str) -> float:
    return sum(r["scores"][objective][0] >= r["scores"][objective][1] for r in rows) / max(1, len(rows))


def run_compare(cfg: CompareConfig, out_dir: Path | None = None, log_fn=print) -> dict:
    from prefopt.cli.builders.offline import resolve_loss
    from prefopt.data.prepare import encode_pairwise
    from prefopt.losses import get_pairwise_loss
    from prefopt.models.reference import pair_reference_logps
    from prefopt.train.algorithms.preference import PairwisePreference, pair_logps

    check_config(cfg)
    t0 = time.perf_counter()
    out = Path(out_dir or Path(cfg.output_dir) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    task = get_task("reviews")
    objective = task.default_objective
    tokenizer = task_tokenizer("reviews", {})
    loop = dict(batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress, threads=cfg.threads)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)

    # 1. one SFT model -------------------------------------------------------------------
    if cfg.sft_model:
        sft_path = Path(cfg.sft_model)
    else:
        log_fn(f"[1/4] SFT of {cfg.model} ({cfg.sft_steps} steps)")
        sft = run_train(reviews_sft_config(cfg.model, seed=cfg.seed, steps=cfg.sft_steps, lr=cfg.sft_lr,
                                           examples=cfg.sft_examples, output_dir=out, loop=loop, eval_examples=64))
        sft_path = sft.result.final_checkpoint / "model"
    sft_model = load_model(ModelConfig(name_or_path=str(sft_path)))
    sft_model.requires_grad_(False).eval()
    t_sft = time.perf_counter() - t0

    # 2. one set of samples, relabelled per ε --------------------------------------------
    log_fn(f"[2/4] preference samples: {cfg.pref_prompts} prompts × 2 from the SFT model")
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, batch_size=128)
    base_rows, pstats = make_preference_data(sft_model, tokenizer, task, PrefDataConfig(
        num_prompts=cfg.pref_prompts, samples_per_prompt=2, objective=objective, flip_rate=0.0,
        bt_temperature=cfg.bt_temperature, seed=cfg.seed, sampling=sampling))
    held_rows, _ = make_preference_data(sft_model, tokenizer, task, PrefDataConfig(
        num_prompts=cfg.heldout_pairs, split="eval", samples_per_prompt=2, objective=objective, flip_rate=0.0,
        bt_temperature=0.0, seed=derive_seed(cfg.seed, HELDOUT_PAIRS), sampling=sampling))
    held_rows = [r for r in held_rows if r["scores"][objective][0] != r["scores"][objective][1]]
    write_jsonl(out / "heldout_pairs.jsonl", held_rows)
    held, _ = encode_pairwise(tokenizer, [{**r, "conversational": False} for r in held_rows],
                              max_length=128, max_prompt_length=64, source="held-out pairs")
    held_ref = pair_reference_logps(sft_model, held, tokenizer.pad_token_id, 64, pair_logps=pair_logps)
    datasets = {}
    for eps in cfg.flip_rates:
        rows, st = relabel(base_rows, eps, cfg.seed)
        path = out / f"prefs-eps{eps:g}.jsonl"
        write_jsonl(path, rows)
        datasets[eps] = (path, {**st, "agree_with_gold": _agreement(rows, objective)})

    eval_prompts = task.prompts("eval", cfg.eval_prompts, seed=derive_seed(cfg.seed, EVAL_PROMPTS))
    eval_sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                                   num_samples=cfg.eval_samples, seed=derive_seed(cfg.seed, EVAL_SAMPLING), batch_size=256)
    sft_samples = sample_policy(sft_model, tokenizer, task, eval_prompts, eval_sampling)
    t_data = time.perf_counter() - t0 - t_sft

    def ranking_accuracy(model, loss: str) -> float:
        fn = get_pairwise_loss("dpo" if loss == "kto" else loss)
        hp = {} if loss == "kto" else _hparams(cfg, loss, 0.0)
        beta = _beta(cfg, loss)
        algo = PairwisePreference(held, held, loss_fn=fn, beta=beta, hparams=hp, pad_id=tokenizer.pad_token_id,
                                  batch_size=64, reference=None, ref_store=held_ref)
        return float(algo.evaluate(model).get("rewards/accuracy", float("nan")))

    # 3. every loss × every ε ------------------------------------------------------------
    results = []
    n_runs = len(cfg.losses) * len(cfg.flip_rates)
    log_fn(f"[3/4] {n_runs} runs: {', '.join(cfg.losses)} × ε ∈ {cfg.flip_rates} ({cfg.steps} steps each)")
    for eps in cfg.flip_rates:
        path, dstats = datasets[eps]
        for loss in cfg.losses:
            t_run = time.perf_counter()
            is_kto = loss == "kto"
            algo_cfg = AlgoConfig(name="kto" if is_kto else "dpo", loss="dpo" if is_kto else loss,
                                  beta=_beta(cfg, loss), loss_hparams=_hparams(cfg, loss, eps))
            probe = TrainConfig(algo=algo_cfg)
            ref_free = (not is_kto) and getattr(resolve_loss(probe)[0], "reference_free", False)
            algo_cfg.reference = "none" if ref_free else "precomputed"
            final: dict = {}

            def evaluator(model, loss=loss):
                r = compare_policies(model, sft_model, tokenizer, task, eval_prompts, objective, eval_sampling,
                                     sft_samples)
                final.update(r)
                final["ranking_accuracy"] = ranking_accuracy(model, loss)
                return {"gold_reward": r["gold_reward"], "win_rate_vs_sft": r["win_rate_vs_ref"],
                        "kl_to_sft": r["kl_to_ref"], "ranking_accuracy": final["ranking_accuracy"]}

            run = run_train(TrainConfig(
                model=ModelConfig(name_or_path=str(sft_path)),
                data=DataConfig(task="reviews", path=str(path), eval_examples=0),
                optim=OptimConfig(name="adamw", lr=cfg.lr),
                train=LoopConfig(steps=cfg.steps, warmup_steps=min(10, cfg.steps // 5), save_every=0,
                                 keep_checkpoints=1,
                                 **{**loop, "batch_size": cfg.batch_size * (2 if is_kto else 1)}),
                algo=algo_cfg, output_dir=str(out), run_name=f"{loss}-eps{eps:g}"), evaluators=[evaluator])
            row = {"loss": loss, "flip_rate": eps, "beta": algo_cfg.beta, "hparams": algo_cfg.loss_hparams,
                   "reference": algo_cfg.reference,
                   "gold_reward": final["gold_reward"], "win_rate_vs_sft": final["win_rate_vs_ref"],
                   "kl_to_sft": final["kl_to_ref"], "ranking_accuracy": final["ranking_accuracy"],
                   "response_tokens": final["response_tokens"],
                   "final_train_loss": run.result.last_metrics.get("loss"),
                   "seconds": round(time.perf_counter() - t_run, 1)}
            results.append(row)
            log_fn(f"  {loss:>10s} ε={eps:<4g} gold {row['gold_reward']:+.3f}  win {row['win_rate_vs_sft']:.3f}  "
                   f"KL {row['kl_to_sft']:.2f}  rank-acc {row['ranking_accuracy']:.3f}  ({row['seconds']} s)")

    # 4. tables and plot ------------------------------------------------------------------
    sft_gold = sft_samples.mean(objective)
    summary = {
        "task": "reviews", "objective": objective, "config": {k: v for k, v in cfg.__dict__.items()},
        "sft": {"model": str(sft_path), "gold_reward": sft_gold},
        "data": {"pairs": pstats.pairs, "identical_skipped": pstats.identical_skipped,
                 "heldout_pairs": len(held), **{f"eps{e:g}": st for e, (_, st) in datasets.items()}},
        "results": results,
        "seconds": {"sft": round(t_sft, 1), "data": round(t_data, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(markdown_table(summary))
    _plot(summary, out / "gold_vs_flip.png")
    log_fn(f"[4/4] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'gold_vs_flip.png'}")
    return summary


def _beta(cfg: CompareConfig, loss: str) -> float:
    return float(cfg.betas.get(loss, DEFAULT_BETAS.get(loss, 0.1)))


def _hparams(cfg: CompareConfig, loss: str, eps: float) -> dict:
    hp = dict(cfg.loss_hparams.get(loss, {}))
    if loss in NOISE_AWARE:
        hp.setdefault("label_smoothing", eps)
    return hp


def markdown_table(summary: dict) -> str:
    res = summary["results"]
    eps_list = sorted({r["flip_rate"] for r in res})
    losses = list(dict.fromkeys(r["loss"] for r in res))
    by = {(r["loss"], r["flip_rate"]): r for r in res}
    lines = [f"SFT gold {summary['objective']}: {summary['sft']['gold_reward']:.3f}", ""]
    for title, key, fmt in (("gold reward", "gold_reward", "{:+.3f}"), ("win rate vs SFT", "win_rate_vs_sft", "{:.3f}"),
                            ("KL to SFT (nats/seq)", "kl_to_sft", "{:.2f}"),
                            ("held-out ranking accuracy", "ranking_accuracy", "{:.3f}")):
        lines.append(f"| {title} | " + " | ".join(f"ε={e:g}" for e in eps_list) + " |")
        lines.append("|---|" + "---:|" * len(eps_list))
        for loss in losses:
            cells = [fmt.format(by[(loss, e)][key]) if (loss, e) in by else "" for e in eps_list]
            lines.append(f"| {loss} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("| loss | ε | gold reward | win rate vs SFT | KL to SFT | ranking acc | seconds |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in res:
        lines.append(f"| {r['loss']} | {r['flip_rate']:g} | {r['gold_reward']:+.3f} | {r['win_rate_vs_sft']:.3f} | "
                     f"{r['kl_to_sft']:.2f} | {r['ranking_accuracy']:.3f} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict, path: Path) -> None:
    from prefopt.report.plots import _plt

    plt = _plt()
    res = summary["results"]
    losses = list(dict.fromkeys(r["loss"] for r in res))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for loss in losses:
        pts = sorted((r["flip_rate"], r["gold_reward"], r["ranking_accuracy"]) for r in res if r["loss"] == loss)
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker="o", ms=3, lw=1.2, label=loss)
        axes[1].plot(xs, [p[2] for p in pts], marker="o", ms=3, lw=1.2, label=loss)
    axes[0].axhline(summary["sft"]["gold_reward"], color="k", ls="--", lw=1, label="SFT")
    axes[0].set_ylabel(f"gold {summary['objective']}")
    axes[1].set_ylabel("held-out ranking accuracy")
    for ax in axes:
        ax.set_xlabel("label flip rate ε")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
