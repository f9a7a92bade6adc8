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
        "Training data: a JSONL/JSON/Parquet/CSV file, a `datasets.save_to_disk` directory, a directory of data "
        "files or a hub dataset name. SFT without a path trains on the task's corpus.")})
    eval_path: str | None = field(default=None, metadata={"help": "Held-out data file; default: a slice of the training data."})
    num_examples: int = field(default=2000, metadata={"help": "SFT examples drawn from the task corpus when no path is given.", "min": 1})
    eval_examples: int = field(default=128, metadata={"help": "Held-out examples used for evaluation (0 = none).", "min": 0})
    max_length: int = field(default=128, metadata={"help": "Maximum prompt+response tokens; prompts are trimmed from the left first.", "min": 2})
    max_prompt_length: int = field(default=64, metadata={"help": "Maximum prompt tokens (trimmed from the left).", "min": 1})
    on_bad_row: Literal["error", "skip"] = field(default="error", metadata={"help": (
        "'error' stops at the first malformed row naming file, row and field; 'skip' drops and counts them.")})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle training examples each epoch (seeded)."})
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "tsv", "datasets"] = field(default="auto", metadata={"help": (
        "Format of data.path: by default from the suffix; a directory (datasets.save_to_disk or data files) or a "
        "hub name loads through `datasets`.")})
    split: str | None = field(default=None, metadata={"help": (
        "Split of a `datasets` source for training, e.g. 'train' or 'train[:1000]' (default: the only or 'train').")})
    eval_split: str | None = field(default=None, metadata={"help": (
        "Split of the same source used for evaluation, e.g. 'test' (default: eval_path, else a slice of training).")})
    columns: dict = field(default_factory=dict, metadata={"help": (
        "Column mapping, schema field -> source column, e.g. {prompt: question, chosen: good, rejected: bad}. "
        "Fields: prompt, chosen, rejected, completion, label, weight, margin, messages.")})
    score_columns: dict = field(default_factory=dict, metadata={"help": (
        "Per-objective score columns: objective -> [chosen column, rejected column] (pairwise) or column (unpaired).")})
    chat_template: str | None = field(default=None, metadata={"help": (
        "Chat template for conversational rows when the tokenizer has none (or to replace it): 'simple', "
        "a Jinja file, or Jinja text.")})
