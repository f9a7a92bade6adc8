"""Learning-rate schedules: constant, linear or cosine decay, each with linear warmup."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int = 0,
              min_ratio: float = 0.0) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps (0-based: step 0 is the first update)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{schedule}' (known: {', '.join(SCHEDULES)})")


def build_scheduler(optimizer, *, schedule: str, total_steps: int, warmup_steps: int = 0,
                    min_ratio: float = 0.0):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, schedule=schedule, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio))


RATIO_SCHEDULES = ("constant", "linear", "cosine", "step")


def ratio_at(step: int, *, schedule: str, start: float, end: float, horizon: int) -> float:
    """A mixture ratio ρ(step) (0-based step) moving from ``start`` to ``end`` over ``horizon`` steps:
    constant (always ``start``), linear, cosine (half-cosine ease), or step (``start`` before
    ``horizon``, ``end`` from then on). Pure; ρ stays at ``end`` after the horizon."""
    if schedule == "constant":
        return start
    if schedule == "step":
        return start if step < horizon else end
    progress = min(1.0, step / max(1, horizon))
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown ratio schedule '{schedule}' (known: {', '.join(RATIO_SCHEDULES)})")


def apply_current_lr(scheduler) -> None:
    """Set each parameter group's LR to the schedule's value at the scheduler's current step.

    After a resume the optimizer's groups hold the LR saved with the checkpoint, i.e. the *old*
    schedule's; when ``train.steps`` changed, the schedule is re-planned for the new total (the
    steps already done keep the LRs they had; every later step gets the LR a run planned for the
    new total from the start would use), and it must apply from the very next step, not one step
    late. With an unchanged schedule this rewrites the same values."""
    step = scheduler.last_epoch
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
