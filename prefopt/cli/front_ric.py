"""The rewards-in-context model of a front: offline RiC SFT, then ``ric.rounds`` online rounds.

A round (the reference's online stage): sample ``ric.round_prompts`` training prompts, each with
random targets (:func:`sample_targets`), generate one response per conditioned prompt, score it
on the original prompt, keep the samples above ``ric.quantile`` on any objective, merge them with
the offline rows (all as scored SFT rows) and continue the SFT for ``ric.round_steps`` steps. The
score statistics stay those of the first training (they travel in the model's config), so targets
mean the same in every round.
"""
from __future__ import annotations

import json
import time

import torch

from prefopt.objectives.front import Cost

def ric_section(ctx):
    """The base config's ``ric`` section as a validated RicConfig (defaults from one place)."""
    from prefopt.cli.config import from_dict
    from prefopt.objectives.config import RicConfig
    return from_dict(RicConfig, ctx.base.get("ric", {}), prefix="ric.")


def _sft_form(rows: list[dict], objectives: list[str]) -> list[dict]:
    """Scored SFT rows from pairs (two each) or SFT rows, keeping only the conditioned objectives."""
    out = []
    for r in rows:
        scores = r.get("scores") or {}
        if "chosen" in r:
            for i, key in enumerate(("chosen", "rejected")):
                out.append({"prompt": r["prompt"], "completion": r[key], "scores": {o: scores[o][i] for o in objectives}})
        else:
            out.append({"prompt": r["prompt"], "completion": r["completion"],
                        "scores": {o: scores[o] for o in objectives}})
    return out


def _round_rows(ctx, model_path: str, stats, round_index: int) -> tuple[list[dict], int]:
    """(kept scored SFT rows, sampled tokens) of one online round."""
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.objectives.ric import condition_prompt, rows_above_quantile, sample_targets
    from prefopt.rollout.engine import SamplingConfig
    from prefopt.rollout.text import sample_texts

    ric = ric_section(ctx)
    n = ric.round_prompts
    from prefopt.seeding import RIC_ROUND, derive_seed
    seed = derive_seed(int(ctx.base.get("train", {}).get("seed", 0)), RIC_ROUND, round_index, bits=32)
    prompts = ctx.task.prompts("train", n, seed=seed)
    targets = sample_targets(n, stats, torch.Generator().manual_seed(seed))
    seen = [condition_prompt(p, t.tolist(), response_split=ric.response_split) for p, t in zip(prompts, targets)]
    model = load_model(ModelConfig(name_or_path=model_path), ctx.tokenizer)
    sampling = SamplingConfig(max_new_tokens=ctx.cfg.max_new_tokens, temperature=ctx.cfg.temperature,
                              num_samples=1, seed=seed, batch_size=256)
    rollout, texts = sample_texts(model, ctx.tokenizer, seen, sampling)
    scores = ctx.scorer(prompts, texts)
    rows = [{"prompt": p, "completion": t, "scores": {o: scores[o][i] for o in stats.objectives}}
            for i, (p, t) in enumerate(zip(prompts, texts))]
    return rows_above_quantile(rows, list(stats.objectives), ric.quantile), \
        int(rollout.response_mask.sum())


def train_ric(ctx):
    """(model path, ScoreStats, mapping, shared cost) of the front's RiC policy."""
    from prefopt.cli.builders.multiobjective import load_ric_stats
    from prefopt.cli.front_methods import train_once
    from prefopt.data.loaders import read_records, write_jsonl
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model

    ric = ric_section(ctx)
    updates = {"ric.objectives": list(ctx.objectives)}
    first = train_once(ctx.base, updates, ctx.out / "shared" / "ric")
    stats = load_ric_stats(load_model(ModelConfig(name_or_path=first.model), ctx.tokenizer), first.model)
    model, cost = first.model, first.cost
    if ric.rounds:
        data = ctx.base.get("data", {})
        offline = _sft_form(read_records(data["path"], fmt=data.get("format", "auto")).rows, list(ctx.objectives))
    for r in range(ric.rounds):
        round_dir = ctx.out / "shared" / f"ric-round-{r + 1}"
        round_dir.mkdir(parents=True, exist_ok=True)
        rows_file, info_file = round_dir / "rows.jsonl", round_dir / "round.json"
        if not info_file.exists():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            kept, tokens = _round_rows(ctx, model, stats, r)
            write_jsonl(rows_file, offline + kept)
            info_file.write_text(json.dumps({"kept": len(kept), "sampled_tokens": tokens,
                                             "wall_seconds": round(time.perf_counter() - wall0, 2),
                                             "cpu_seconds": round(time.process_time() - cpu0, 2)}) + "\n")
        info = json.loads(info_file.read_text())
        sampling = Cost(0, info["sampled_tokens"], info["wall_seconds"], info["cpu_seconds"])
        t = train_once(ctx.base, {**updates, "model.name_or_path": model, "data.path": str(rows_file),
                                  "train.steps": ric.round_steps}, round_dir / "train")
        model, cost = t.model, cost + t.cost + sampling
    return model, stats, ric.mapping, cost
