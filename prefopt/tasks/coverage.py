"""Preference data with controlled coverage: pairs drawn only from a low-scoring slice of a policy's samples.

The HyPO claim (Song et al. 2024) is that online samples matter when the offline data does not
cover the responses the gold reward prefers. This module builds such data exactly:

1. sample ``samples_per_prompt`` responses per prompt from the policy (the SFT model);
2. score each with the task's gold ``objective``;
3. keep only the non-empty responses scoring ``<= max_score`` (the *slice*; ``None`` keeps
   every non-empty one: the full-coverage control built from the same samples);
4. pair the kept responses of each prompt in sample order (the first two with different text,
   then the next two, up to ``pairs_per_prompt``), labelled by Bradley-Terry on the gold score.

With ``max_score`` below the ``near_optimal`` level no response in the data is near gold-optimal:
:class:`CoverageStats` reports that share in the data and, for comparison, among all samples.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from prefopt.rollout.engine import SamplingConfig
from prefopt.tasks.base import Task
from prefopt.tasks.prefdata import bt_prob


@dataclass
class CoverageConfig:
    """Preference pairs restricted to a low-scoring slice of a policy's samples."""

    num_prompts: int = field(default=512, metadata={"help": "Prompts to sample responses for."})
    split: str = field(default="train", metadata={"help": "Task split the prompts come from (train or eval)."})
    samples_per_prompt: int = field(default=8, metadata={"help": "Responses sampled per prompt before slicing."})
    objective: str = field(default="", metadata={"help": "Gold objective that slices and labels (default: the task's)."})
    max_score: float | None = field(default=0.0, metadata={"help": (
        "Keep only responses whose gold objective is <= this (null = keep every response: full coverage).")})
    pairs_per_prompt: int = field(default=1, metadata={"help": "At most this many disjoint pairs per prompt."})
    bt_temperature: float = field(default=0.1, metadata={"help": "Bradley-Terry temperature of the labels (0 = hard max)."})
    near_optimal: float = field(default=0.9, metadata={"help": (
        "A response scoring at least this counts as near gold-optimal in the coverage statistics.")})
    seed: int = field(default=0, metadata={"help": "Seed for prompts, sampling and labels."})
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=40, temperature=1.0),
                                     metadata={"help": "How responses are sampled (num_samples is set from samples_per_prompt)."})

    def validate(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt: got {self.samples_per_prompt}, expected >= 2")
        if self.pairs_per_prompt < 1:
            raise ValueError(f"pairs_per_prompt: got {self.pairs_per_prompt}, expected >= 1")
        if self.bt_temperature < 0:
            raise ValueError(f"bt_temperature: got {self.bt_temperature}, expected >= 0")


@dataclass
class CoverageStats:
    samples: int = 0                  # responses sampled
    kept_samples: int = 0             # responses inside the slice
    empty_skipped: int = 0            # empty responses (never kept: training drops them anyway)
    pairs: int = 0
    prompts_without_pair: int = 0     # fewer than two distinct kept responses
    identical_skipped: int = 0        # kept responses equal to the one waiting for a partner
    agree_with_gold: float = 0.0      # share of pairs whose chosen scores >= rejected
    max_data_score: float = float("nan")   # best gold score of any response in the data
    sample_near_optimal_frac: float = 0.0  # share of all samples scoring >= near_optimal
    data_near_optimal_frac: float = 0.0    # share of the data's responses (chosen and rejected) doing so


@dataclass
class Samples:
    """k responses per prompt (rows of a prompt consecutive) and their gold scores."""

    prompts: list[str]            # one per prompt
    texts: list[str]              # len(prompts) * k
    gold: dict[str, list[float]]  # objective -> one score per text
    k: int


def sample_responses(model, tokenizer, task: Task, cfg: CoverageConfig) -> Samples:
    from prefopt.rollout.text import sample_texts

    cfg.validate()
    prompts = task.prompts(cfg.split, cfg.num_prompts, seed=cfg.seed)
    k = cfg.samples_per_prompt
    sampling = SamplingConfig(**{**cfg.sampling.__dict__, "num_samples": k, "seed": cfg.seed})
    _, texts = sample_texts(model, tokenizer, prompts, sampling)
    return Samples(prompts, texts, task.gold([p for p in prompts for _ in range(k)], texts), k)


def slice_pairs(samples: Samples, cfg: CoverageConfig, objectives: tuple[str, ...], objective: str) -> tuple[list[dict], CoverageStats]:
    """Pairs from the responses scoring ``<= cfg.max_score`` on ``objective`` (pure: no model)."""
    cfg.validate()
    score = samples.gold[objective]
    empty = [not t.strip() for t in samples.texts]
    inside = [not e and (cfg.max_score is None or s <= cfg.max_score) for s, e in zip(score, empty)]
    rng = random.Random(cfg.seed + 7919)
    rows, agree = [], 0
    st = CoverageStats(samples=len(samples.texts), kept_samples=sum(inside), empty_skipped=sum(empty))
    for p_idx, prompt in enumerate(samples.prompts):
        pending, made = None, 0
        for i in range(p_idx * samples.k, (p_idx + 1) * samples.k):
            if not inside[i] or made == cfg.pairs_per_prompt:
                continue
            if pending is None:
                pending = i
            elif samples.texts[i] == samples.texts[pending]:
                st.identical_skipped += 1
            else:
                a_wins = rng.random() < bt_prob(score[pending], score[i], cfg.bt_temperature)
                c, r = (pending, i) if a_wins else (i, pending)
                agree += score[c] >= score[r]
                rows.append({"prompt": prompt, "chosen": samples.texts[c], "rejected": samples.texts[r],
                             "scores": {o: [samples.gold[o][c], samples.gold[o][r]] for o in objectives}})
                pending, made = None, made + 1
        st.prompts_without_pair += made == 0
    st.pairs = len(rows)
    st.agree_with_gold = agree / max(1, len(rows))
    data_scores = [s for r in rows for s in r["scores"][objective]]
    st.max_data_score = max(data_scores) if data_scores else float("nan")
    st.sample_near_optimal_frac = sum(s >= cfg.near_optimal for s in score) / max(1, len(score))
    st.data_near_optimal_frac = sum(s >= cfg.near_optimal for s in data_scores) / max(1, len(data_scores))
    return rows, st


def make_sliced_preference_data(model, tokenizer, task: Task, cfg: CoverageConfig) -> tuple[list[dict], CoverageStats]:
    """Sample from ``model``, keep the slice, pair and label it (see the module docstring)."""
    objective = cfg.objective or task.default_objective
    if objective not in task.objectives:
        raise ValueError(f"objective '{objective}' is not one of task '{task.name}' objectives {task.objectives}")
    return slice_pairs(sample_responses(model, tokenizer, task, cfg), cfg, task.objectives, objective)
