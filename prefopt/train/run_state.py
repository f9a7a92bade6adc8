"""The loop's checkpoint bookkeeping: resuming, regular saves, and the save made on a signal.

Besides weights, optimizer, scheduler, algorithm and RNG state, a checkpoint's ``loop`` entry holds
``metrics_bytes`` (the size of ``metrics.jsonl`` when it was taken: resuming cuts the file back to
it, so no step is logged twice), ``eval_pending`` (a signal came during the evaluation of that
step: the resumed run evaluates it first) and ``stopped`` (the algorithm ended the run early).

Under data parallelism every rank calls ``save`` (full state is gathered, see
``prefopt.train.distributed``) and rank 0 alone writes; any world size resumes the checkpoint.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from prefopt.dist import current
from prefopt.train.checkpoint import (CheckpointError, load_model_weights, load_trainer_state, read_manifest,
                                      remove_leftovers, rng_state, save_checkpoint, select_resume_checkpoint,
                                      set_rng_state)
from prefopt.train.distributed import checkpoint_state, restore_state
from prefopt.train.interrupt import GUARD
from prefopt.train.schedule import apply_current_lr


class RunState:
    """What the loop can save at any moment: ``safe`` is the newest state that a checkpoint of a
    completed step may hold (updated at the points where the loop's state is consistent)."""

    def __init__(self, run_dir: Path, cfg, model, tokenizer, optimizer, scheduler, algorithm, logger, precision=None):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.model, self.tokenizer, self.optimizer = model, tokenizer, optimizer
        self.scheduler, self.algorithm, self.logger = scheduler, algorithm, logger
        self.precision = precision  # its loss scaler's state (fp16-mixed) goes into every checkpoint
        self.run_id = uuid.uuid4().hex
        self.saved_step: int | None = None
        self.final: Path | None = None
        self.loop: dict = {}
        self.safe: dict | None = None

    def start(self, resume) -> int:
        """The first step to run after: 0 for a new run, the checkpoint's step on resume.
        ``resume``: True (the newest intact checkpoint) or the path of a verified checkpoint."""
        if current().is_main:
            remove_leftovers(self.run_dir)
        if not resume:
            return 0
        if isinstance(resume, (str, Path)):
            ckpt = Path(resume)
        else:
            ckpt = select_resume_checkpoint(self.run_dir, fallback=getattr(self.cfg, "checkpoint_fallback", True))
        state = load_trainer_state(ckpt)
        try:
            algorithm_state, rng = restore_state(current(), ckpt, state, self.model, self.optimizer,
                                                 load_model_weights)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise CheckpointError(f"{ckpt}: its optimizer state does not fit {type(self.optimizer).__name__} "
                                  f"({type(exc).__name__}: {exc}); resume with the run's optimizer settings") from None
        self.scheduler.load_state_dict(state["scheduler"])
        apply_current_lr(self.scheduler)
        self.algorithm.load_state_dict(algorithm_state)
        if self.precision is not None:
            self.precision.load_state_dict(state.get("precision", {}))
        set_rng_state(rng)
        self.loop = dict(state.get("loop", {}))
        self.run_id = read_manifest(ckpt).get("run_id") or self.run_id
        self.saved_step, self.final = int(state["step"]), ckpt
        if hasattr(self.logger, "cut_back"):
            self.logger.cut_back(self.loop.get("metrics_bytes"), self.saved_step)
        return self.saved_step

    def snapshot(self, step: int, *, eval_pending: bool) -> None:
        self.safe = {"step": step, "algorithm": self.algorithm.state_dict(), "rng": rng_state(),
                     "loop": {"metrics_bytes": _tell(self.logger), "eval_pending": eval_pending}}

    def _write(self, step: int, state: dict, model_state: dict | None = None, *, collective: bool = True) -> Path:
        rt = current()
        with GUARD.critical():
            if rt.is_main:
                self.final = save_checkpoint(self.run_dir, step, self.model, self.tokenizer, state,
                                             self.cfg.keep_checkpoints, self.run_id, model_state=model_state)
            else:
                self.final = self.run_dir / f"checkpoint-{step}"
            self.saved_step = step
        if collective:
            rt.barrier()  # no rank reads the run directory before the checkpoint is complete
        return self.final

    def save(self, step: int, *, stopped: bool = False) -> Path:
        """A regular checkpoint of the completed ``step`` (its evaluation, if any, done); every rank calls it."""
        model_state, state = checkpoint_state(current(), self.model, self.optimizer, self.scheduler, self.algorithm)
        state["loop"] = {"metrics_bytes": _tell(self.logger), "eval_pending": False, "stopped": stopped}
        state["precision"] = self._precision_state()
        return self._write(step, state, model_state)

    def save_on_interrupt(self) -> Path | None:
        """Checkpoint the newest safe state; None when no step has completed. No collective (the other
        ranks may be gone): rank 0 saves what it holds, complete for one process and DDP replicas."""
        self.optimizer.zero_grad(set_to_none=True)
        safe = self.safe
        if safe is None or safe["step"] <= (self.saved_step or 0):
            return self.final
        _, state = checkpoint_state(current(), self.model, self.optimizer, self.scheduler, self.algorithm,
                                    collective=False)
        if state is None:  # FSDP2 shards: no rank holds the full state alone
            return self.final
        state.update({k: v for k, v in safe.items() if k != "step"}, precision=self._precision_state())
        return self._write(safe["step"], state, collective=False)

    def _precision_state(self) -> dict:
        return self.precision.state_dict() if self.precision is not None else {}


def _tell(logger) -> int | None:
    tell = getattr(logger, "tell", None)
    return tell() if tell is not None else None
