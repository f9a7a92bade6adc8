"""Model section of every training config."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    name_or_path: str = field(default="tiny:llama-1m", metadata={"help": (
        "Hugging Face hub name, local directory of a saved model, or a built-in tiny model "
        "('tiny:llama-1m', 'tiny:llama-5m', 'tiny:llama-25m', 'tiny:gpt2-1m', ...) created from a config.")})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "Tokenizer name or path; defaults to the model's. Tiny models use the lab task's tokenizer.")})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub repo (off: safer)."})
    dtype: str = field(default="float32", metadata={"help": "Parameter dtype: float32, bfloat16 or float16."})
    init_seed: int = field(default=0, metadata={"help": "Seed for the random initialization of tiny models."})
    max_positions: int = field(default=256, metadata={"help": "Context length of tiny models."})
