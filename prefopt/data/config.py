"""Data section of every training config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    task: str | None = field(default="reviews", metadata={"help": (
        "Lab task ('reviews', 'arithmetic'): provides prompts, the SFT corpus, gold rewards and the "
        "tokenizer for tiny models. Set to null for real data only.")})
    task_options: dict = field(default_factory=dict, metadata={"help": "Options of the lab task, e.g. {digits: 3}."})
    path: str | None = field(default=None, metadata={"help": (
        "Training data file (JSONL). SFT without a path trains on the task's corpus.")})
    eval_path: str | None = field(default=None, metadata={"help": "Held-out data file; default: a slice of the training data."})
    num_examples: int = field(default=2000, metadata={"help": "SFT examples drawn from the task corpus when no path is given."})
    eval_examples: int = field(default=128, metadata={"help": "Held-out examples used for evaluation."})
    max_length: int = field(default=128, metadata={"help": "Maximum prompt+response tokens; prompts are trimmed from the left first."})
    max_prompt_length: int = field(default=64, metadata={"help": "Maximum prompt tokens (trimmed from the left)."})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={"help": (
        "'error' stops at the first malformed row naming file, row and field; 'skip' drops and counts them.")})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle training examples each epoch (seeded)."})
