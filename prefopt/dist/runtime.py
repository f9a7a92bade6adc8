"""The distributed runtime: one small object that says where this process is (rank, world size,
device, ``is_main``) and how ranks combine (all-reduce, gather, agreement on errors).

One :class:`Runtime` is current per process (:func:`current`); a plain single process gets the
default one (rank 0 of 1), so every caller works unchanged without ``torchrun``. The loop, the
samplers, checkpoints, metrics and the rollout sources ask it instead of ``torch.distributed``.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from prefopt.dist.config import DistConfig
from prefopt.errors import ConfigError, StopTraining, TrainingError

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


@dataclass
class Runtime:
    """This process's place in the run. ``world_size == 1``: every collective is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    strategy: str = "none"
    # Stands in for prefopt.rollout.engine.generate when set (e.g. Ray rollout workers).
    generator: Callable | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """Parameters are FSDP2 DTensors (state dicts must be gathered, generation unsharded)."""
        return self.strategy == "fsdp2" and self.backend is not None

    # ------------------------------------------------------------------ collectives
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """A reduced copy of ``tensor`` over ranks (``op``: sum, max, min); the input is untouched."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        t = tensor.detach().to(self._comm_device(), copy=True)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, _OPS[op]))
        return t.to(tensor.device)

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            dist.barrier()

    def sum_dicts(self, values: dict[str, float]) -> dict[str, float]:
        """Key-wise sums over ranks (a key missing on a rank counts 0 there)."""
        if not self.distributed:
            return dict(values)
        out: dict[str, float] = {}
        for part in self.all_gather_object(dict(values)):
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def mean_dicts(self, values: dict[str, float]) -> dict[str, float]:
        """Key-wise means over the ranks that report each key (per-rank source metrics)."""
        if not self.distributed:
            return dict(values)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for part in self.all_gather_object(dict(values)):
            for k, v in part.items():
                sums[k], counts[k] = sums.get(k, 0.0) + float(v), counts.get(k, 0) + 1
        return {k: sums[k] / counts[k] for k in sums}

    def weighted_mean(self, value: float, weight: float) -> float:
        """Σ_r w_r·v_r / Σ_r w_r over ranks (e.g. a rollout's KL weighted by its samples)."""
        if not self.distributed:
            return float(value)
        t = self.all_reduce(torch.tensor([float(value) * weight, float(weight)], dtype=torch.float64))
        return float(t[0] / t[1]) if t[1] > 0 else float(value)

    def check_all(self, error: BaseException | None) -> None:
        """Collective agreement: every rank reports whether its part failed; if any did, every rank
        raises — the failing rank its own error, the others a :class:`TrainingError` naming the rank
        and its message (or :class:`StopTraining` when every failure was a clean stop)."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        report = None if error is None else (type(error).__name__, str(error), isinstance(error, StopTraining))
        failed = [(r, rep) for r, rep in enumerate(self.all_gather_object(report)) if rep is not None]
        if not failed:
            return
        if all(rep[2] for _, rep in failed):
            if error is not None:
                raise error
            raise StopTraining(f"rank {failed[0][0]}: {failed[0][1][1]}")
        if error is not None and not isinstance(error, StopTraining):
            raise error
        rank, (name, message, _) = next((r, rep) for r, rep in failed if not rep[2])
        raise TrainingError(f"rank {rank} failed: {name}: {message}")

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The user's module under any wrapper (``.module`` of DDP-style wrappers). FSDP2 shards in
        place, so its model is already the user's class."""
        while hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module):
            model = model.module
        return model


_CURRENT = Runtime()


def current() -> Runtime:
    """The process's runtime (rank 0 of 1 unless :func:`init_runtime` joined a process group)."""
    return _CURRENT


def set_current(runtime: Runtime) -> Runtime:
    global _CURRENT
    _CURRENT = runtime
    return runtime


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_runtime(cfg: DistConfig | None = None) -> Runtime:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
    and make the runtime current. Without torchrun (world size 1) no group is created unless
    ``fsdp2`` asks for one (a mesh of one rank)."""
    import torch.distributed as dist

    from prefopt.validation import check_config

    cfg = cfg or DistConfig()
    check_config(cfg, "dist.")
    world = launched_world_size()
    if world > 1 and cfg.strategy == "none":
        raise ConfigError(f"dist.strategy: 'none' with {world} processes; use ddp or fsdp2 (or one process)")
    backend = _backend(cfg.backend)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("dist.backend: nccl needs CUDA GPUs; none is visible (use gloo on CPU)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    needs_group = world > 1 or cfg.strategy == "fsdp2"
    if needs_group and not dist.is_initialized():
        if world == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    strategy = cfg.strategy if needs_group else "none"
    return set_current(Runtime(rank, world, local_rank, device, backend if needs_group else None, strategy))


def shutdown() -> None:
    """Leave the process group (end of a torchrun run) and fall back to the single-process runtime."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    set_current(Runtime())


def _backend(name: str) -> str:
    if name == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return name


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
