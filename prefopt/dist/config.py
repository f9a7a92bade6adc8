"""The ``dist`` config section: how a run spreads over the processes ``torchrun`` starts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefopt.errors import ConfigError

STRATEGIES = ("none", "ddp", "fsdp2")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class DistConfig:
    strategy: Literal["none", "ddp", "fsdp2"] = field(default="ddp", metadata={"help": (
        "Data parallelism when launched by torchrun with several processes: 'ddp' (replicated weights, "
        "gradients summed over ranks once per step), 'fsdp2' (weights, gradients and optimizer state sharded "
        "with torch.distributed.fsdp.fully_shard) or 'none' (refuses a world size above 1). A single process "
        "ignores 'ddp'.")})
    backend: Literal["auto", "gloo", "nccl"] = field(default="auto", metadata={"help": (
        "Process-group backend: 'auto' = nccl when CUDA is available, else gloo.")})
    timeout_s: float = field(default=600.0, metadata={"help": (
        "Seconds a collective may wait for the other ranks before the run fails (a rank that died or hangs)."),
        "gt": 0})

    rollout_workers: int = field(default=0, metadata={"help": (
        "Ray actors that generate the online samples with the policy's current weights (0 = generate in the "
        "learner process); needs the 'ray' extra."), "min": 0})
    max_staleness: int = field(default=0, metadata={"help": (
        "Learner updates the rollout workers' weights may lag behind (0 = always sample with the newest)."),
        "min": 0})

    def validate(self, prefix: str = "dist.") -> None:
        """The choices (the YAML loader checks them too; this covers configs built in code)."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{prefix}strategy: got '{self.strategy}', expected one of {', '.join(STRATEGIES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"{prefix}backend: got '{self.backend}', expected one of {', '.join(BACKENDS)}")
