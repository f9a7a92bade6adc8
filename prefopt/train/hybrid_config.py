"""Config sections of the hybrid offline+online recipes: ``mix`` (a scheduled mixture of an offline
source into any online recipe), ``hypo`` (HyPO's online reverse-KL term) and ``reset`` (DR-PO's
dataset resets). Each section is read only by the algorithms the presets table lists for it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal



@dataclass
class MixConfig:
    path: str | None = field(default=None, metadata={"help": (
        "Offline data mixed into an online recipe (any format data.path accepts): pairs (prompt, chosen, "
        "rejected) or SFT rows (prompt, completion). Unset: no mixture.")})
    term: Literal["pairwise", "sft"] = field(default="pairwise", metadata={"help": (
        "What the offline rows train: 'pairwise' = the online recipe's pairwise loss on offline pairs (online_dpo); "
        "'sft' = NLL on the offline chosen / completion responses (any online recipe, e.g. GRPO + SFT).")})
    weight: float = field(default=1.0, metadata={"help": "Weight of the offline SFT term (mix.term: sft).", "min": 0})
    schedule: Literal["constant", "linear", "cosine", "step"] = field(default="constant", metadata={"help": (
        "How the offline fraction ρ(t) moves from mix.start to mix.end over mix.horizon steps.")})
    start: float = field(default=0.5, metadata={"help": "ρ at step 0: the fraction of each step's examples drawn offline.", "min": 0, "max": 1})
    end: float | None = field(default=None, metadata={"help": "ρ at the horizon (null = mix.start).", "min": 0, "max": 1})
    horizon: int = field(default=0, metadata={"help": "Steps over which ρ moves (0 = train.steps); 'step' switches here.", "min": 0})



@dataclass
class HypoConfig:
    kl_coef: float = field(default=0.1, metadata={"help": (
        "λ of λ·E_{x~D, y~π}[log π(y|x) - log π_ref(y|x)], the online reverse-KL term on fresh samples."), "min": 0})
    num_samples: int = field(default=4, metadata={"help": (
        "k fresh samples per online prompt (>= 2: the leave-one-out baseline compares them)."), "min": 2})
    prompts_per_step: int = field(default=4, metadata={"help": "Online prompts per step (drawn from the offline prompts).", "min": 1})



@dataclass
class ResetConfig:
    reset_prob: float = field(default=1.0, metadata={"help": (
        "Probability that a rollout starts from the prompt plus a prefix of an offline response (DR-PO: 1.0)."),
        "min": 0, "max": 1})
    column: Literal["auto", "chosen", "completion"] = field(default="auto", metadata={"help": (
        "Offline response the prefix is cut from: 'chosen' of pairs, 'completion' of SFT rows; auto = whichever exists.")})
    rl: Literal["ppo", "rloo", "grpo"] = field(default="ppo", metadata={"help": (
        "Policy-gradient optimizer under the resets (its preset defaults apply): ppo (the paper's), rloo, grpo.")})

