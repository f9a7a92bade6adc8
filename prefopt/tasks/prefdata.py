"""Preference-data generator: sample k responses per prompt, label pairs by Bradley-Terry on a gold objective.

P(a ≻ b) = σ((g(a) - g(b)) / temperature); a label is then flipped with probability ``flip_rate``.
Rows follow the standard pairwise schema (prompt, chosen, rejected) plus per-objective scores.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from prefopt.rollout.engine import SamplingConfig
from prefopt.rollout.text import sample_texts
from prefopt.seeding import PREFDATA_LABELS, PREFDATA_SAMPLING, SEED_WORD_MAX, derive_seed
from prefopt.tasks.base import Split, Task
from prefopt.validation import bad_value, check_config


@dataclass
class PrefDataConfig:
    """``prefopt data make TASK``: how preference pairs are sampled and labelled."""

    num_prompts: int = field(default=512, metadata={"help": "Prompts to sample responses for.", "min": 1})
    split: Split = field(default="train", metadata={"help": "Task split the prompts come from."})
    samples_per_prompt: int = field(default=2, metadata={"help": "k responses per prompt; they form k//2 disjoint pairs.", "min": 2})
    objective: str = field(default="", metadata={"help": "Gold objective that labels pairs (default: the task's)."})
    bt_temperature: float = field(default=0.1, metadata={"help": "Bradley-Terry temperature (0 = always prefer the higher gold score).", "min": 0})
    flip_rate: float = field(default=0.0, metadata={"help": "Probability ε of flipping each label (label noise).", "min": 0, "lt": 0.5})
    seed: int = field(default=0, metadata={"help": "Seed for prompts, sampling and labels.", "min": 0, "max": SEED_WORD_MAX})
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=1.0),
                                     metadata={"help": "How responses are sampled."})



@dataclass
class PrefDataStats:
    pairs: int = 0
    identical_skipped: int = 0
    flipped: int = 0
    agree_with_gold: float = 0.0


def bt_prob(score_a: float, score_b: float, temperature: float) -> float:
    """Bradley-Terry probability that a is preferred (ties are 0.5; temperature 0 is a hard max)."""
    diff = score_a - score_b
    if temperature == 0 or diff == 0:
        return 0.5 if diff == 0 else float(diff > 0)
    return 1.0 / (1.0 + math.exp(-diff / temperature))


def make_preference_data(model, tokenizer, task: Task, cfg: PrefDataConfig) -> tuple[list[dict], PrefDataStats]:
    check_config(cfg)
    objective = cfg.objective or task.default_objective
    if objective not in task.objectives:
        raise bad_value("objective", objective, f"one of task '{task.name}' objectives {', '.join(task.objectives)}")
    prompts = task.prompts(cfg.split, cfg.num_prompts, seed=cfg.seed)
    k = cfg.samples_per_prompt
    sampling = SamplingConfig(**{**cfg.sampling.__dict__, "num_samples": k,
                                 "seed": derive_seed(cfg.seed, PREFDATA_SAMPLING)})
    _, texts = sample_texts(model, tokenizer, prompts, sampling)
    row_prompts = [p for p in prompts for _ in range(k)]
    gold = task.gold(row_prompts, texts)
    rng = random.Random(derive_seed(cfg.seed, PREFDATA_LABELS))
    rows, stats, agree = [], PrefDataStats(), 0
    for p_idx, prompt in enumerate(prompts):
        for j in range(0, k - 1, 2):
            a, b = p_idx * k + j, p_idx * k + j + 1
            if texts[a] == texts[b]:
                stats.identical_skipped += 1
                continue
            a_wins = rng.random() < bt_prob(gold[objective][a], gold[objective][b], cfg.bt_temperature)
            flipped = rng.random() < cfg.flip_rate
            if flipped:
                a_wins = not a_wins
                stats.flipped += 1
            c, r = (a, b) if a_wins else (b, a)
            agree += gold[objective][c] >= gold[objective][r]
            rows.append({"prompt": prompt, "chosen": texts[c], "rejected": texts[r],
                         "scores": {o: [gold[o][c], gold[o][r]] for o in task.objectives},
                         "flipped": flipped})
    stats.pairs = len(rows)
    stats.agree_with_gold = agree / max(1, len(rows))
    return rows, stats
