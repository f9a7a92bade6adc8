"""The ``prefopt train`` config: one dataclass per section, a help text per field."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefopt.data.config import DataConfig
from prefopt.models.config import ModelConfig
from prefopt.optim.config import OptimConfig


@dataclass
class LoopConfig:
    steps: int = field(default=100, metadata={"help": "Optimizer steps to run."})
    batch_size: int = field(default=16, metadata={"help": "Examples per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches accumulated per optimizer step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0 = off)."})
    lr_schedule: Literal["constant", "linear", "cosine"] = field(default="cosine", metadata={"help": "LR decay after warmup."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final LR as a fraction of the base LR (linear/cosine)."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, dropout and sampling."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate every N steps (0 = only at the end)."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = only at the end)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many newest checkpoints to keep."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    tensorboard: bool = field(default=False, metadata={"help": "Also log to TensorBoard under <run>/tensorboard."})
    wandb_project: str | None = field(default=None, metadata={"help": "Also log to this Weights & Biases project."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)."})


@dataclass
class AlgoConfig:
    name: str = field(default="dpo", metadata={"help": "Algorithm: sft, dpo (any pairwise loss below)."})
    loss: str = field(default="dpo", metadata={"help": "Pairwise loss for preference algorithms (dpo, ipo, simpo, ...)."})
    beta: float = field(default=0.1, metadata={"help": "KL strength β of preference losses."})
    loss_hparams: dict = field(default_factory=dict, metadata={"help": "Extra hyper-parameters of the loss, e.g. {label_smoothing: 0.1}."})
    reference: Literal["copy", "none"] = field(default="copy", metadata={"help": (
        "Reference policy: 'copy' (frozen copy of the initial policy) or 'none' (reference-free losses).")})


@dataclass
class TrainConfig:
    """``prefopt train CONFIG.yaml [key=value ...]``."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The policy model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and evaluation data."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimizer and learning rate."})
    train: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "The training loop."})
    algo: AlgoConfig = field(default_factory=AlgoConfig, metadata={"help": "Algorithm, loss and reference."})
    output_dir: str = field(default="runs", metadata={"help": "Runs are written to <output_dir>/<run_name>."})
    run_name: str | None = field(default=None, metadata={"help": "Run folder name; default '<algo>-<timestamp>'."})
