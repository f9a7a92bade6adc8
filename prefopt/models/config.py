"""Model section of every training config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefopt.seeding import SEED_MAX

DtypeName = Literal["float32", "bfloat16", "float16"]  # names of torch dtypes (models.loading.DTYPES)


@dataclass
class ModelConfig:
    name_or_path: str = field(default="tiny:llama-1m", metadata={"help": (
        "Hugging Face hub name, local directory of a saved model, or a built-in tiny model "
        "('tiny:llama-1m', 'tiny:llama-5m', 'tiny:llama-25m', 'tiny:gpt2-1m', ...) created from a config.")})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "Tokenizer name or path; defaults to the model's. Tiny models use the lab task's tokenizer.")})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub repo (off: safer)."})
    dtype: DtypeName = field(default="float32", metadata={"help": "Parameter dtype (float32, bfloat16 or float16)."})
    init_seed: int = field(default=0, metadata={"help": "Seed for the random initialization of tiny models.",
                                                  "min": 0, "max": SEED_MAX})
    max_positions: int = field(default=256, metadata={"help": "Context length of tiny models.", "min": 1})
    attn_implementation: str | None = field(default=None, metadata={"help": (
        "Attention kernel ('eager', 'sdpa', ...); default: transformers' choice. "
        "The sophia optimizer needs 'eager' (double backward) and selects it itself.")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "Recompute each decoder layer's activations during backward instead of keeping them (transformers' "
        "non-reentrant gradient checkpointing): most of the activation memory for ~1/3 more compute per "
        "step; the same loss and gradients.")})
    trainable: list[str] = field(default_factory=list, metadata={"help": (
        "Freeze tuning: regular expressions over parameter names (re.search); only matching parameters "
        "train, the rest stay frozen, e.g. ['^model\\.norm\\.', 'layers\\.(6|7)\\.']. Empty: train all. "
        "Not with lora.enabled (adapters choose their own parameters).")})


@dataclass
class LoraConfig:
    """LoRA / QLoRA adapters through PEFT (off unless ``enabled``)."""

    enabled: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    r: int = field(default=8, metadata={"help": "LoRA rank.", "min": 1})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r).", "gt": 0})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input.", "min": 0, "lt": 1})
    target_modules: list[str] | str = field(default="all-linear", metadata={"help": (
        "Modules that get adapters: 'all-linear' (every linear layer but the output head) or a list of "
        "module names, e.g. [q_proj, v_proj].")})
    modules_to_save: list[str] = field(default_factory=list, metadata={"help": (
        "Modules trained and saved in full next to the adapters (e.g. [score] for a reward head).")})
    quantize: Literal["none", "4bit", "8bit"] = field(default="none", metadata={"help": (
        "QLoRA: load the frozen base weights in 4-bit NF4 or 8-bit (needs bitsandbytes; not for tiny models).")})
    save: Literal["adapter", "merged", "both"] = field(default="adapter", metadata={"help": (
        "What a finished run keeps: the adapter checkpoints, a merged full model in <run>/merged, or both.")})

    def validate(self, prefix: str = "lora.") -> None:
        """Normalise a single module name to a list (the ranges are checked from the field metadata)."""
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [self.target_modules]
