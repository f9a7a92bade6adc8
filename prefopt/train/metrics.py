"""Metrics sinks: ``metrics.jsonl`` every step, plus TensorBoard and W&B when configured."""
from __future__ import annotations

import json
import math
import os
import resource
from pathlib import Path

import torch


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def to_float(value) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else float("nan")
    return float(value)


class MetricsLogger:
    """Appends one JSON object per record to ``<run_dir>/metrics.jsonl`` and mirrors to optional sinks."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, wandb_project: str | None = None,
                 run_name: str = "", config: dict | None = None, resume: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a" if resume else "w", encoding="utf-8")
        self._tb = None
        self._tb_dir = Path(run_dir) / "tensorboard" if tensorboard else None
        self._purge_step: int | None = None  # resume: TensorBoard hides events from this step on
        self._wandb = None
        if wandb_project:
            import wandb
            self._wandb = wandb.init(project=wandb_project, name=run_name, config=config or {}, resume="allow")

    def log(self, record: dict) -> None:
        clean = {k: (v if isinstance(v, (str, int)) and not isinstance(v, bool) else to_float(v))
                 for k, v in record.items()}
        self._fh.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                   for k, v in clean.items()}) + "\n")
        self._fh.flush()
        step = int(clean.get("step", 0))
        if self._tb_dir is not None and self._tb is None:  # opened on first use: after a resume's cut_back
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self._tb_dir), purge_step=self._purge_step)
        if self._tb is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if k != "step"}, step=step)

    def tell(self) -> int:
        """Bytes of ``metrics.jsonl`` written so far (checkpoints record it to cut the file back on resume)."""
        self._fh.flush()
        return self.path.stat().st_size

    def cut_back(self, nbytes: int | None, step: int) -> int:
        """Drop what was logged after a checkpoint: keep the first ``nbytes`` (the size when the
        checkpoint was written) or, without it, the records up to ``step``; TensorBoard purges its events
        after ``step`` when it next writes. Returns records dropped."""
        self._fh.flush()
        self._purge_step = step + 1
        text = self.path.read_bytes()
        if nbytes is not None and nbytes <= len(text):
            kept = text[:nbytes]
            os.truncate(self.path, nbytes)
        else:
            kept = b"".join(line for line in text.splitlines(keepends=True) if _step_of(line) <= step)
            self.path.write_bytes(kept)
        return text.count(b"\n") - kept.count(b"\n")

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _step_of(line: bytes) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return float("inf")  # a torn last line: drop it


def read_metrics(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def last_eval(path: Path) -> dict:
    """The newest evaluation record of a ``metrics.jsonl`` (``eval/`` prefix removed), or {}."""
    if not Path(path).exists():
        return {}
    for record in reversed(read_metrics(path)):
        found = {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
        if found:
            return found
    return {}
