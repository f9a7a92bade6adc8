"""The single training loop every algorithm runs on.

Per optimizer step: the algorithm (a recipe of sources × loss terms, ``prefopt.train.recipe``)
supplies ``grad_accum`` micro-batches; each term's summed loss is divided by that term's units
summed over the step before ``backward``, and terms add with their weights (so accumulation
equals one large batch per term); gradients are clipped; optimizer and scheduler step; metrics are logged;
evaluation and checkpoints happen on schedule. Ctrl-C saves a resumable checkpoint.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prefopt.errors import StopTraining, TrainingError
from prefopt.optim import needs_create_graph
from prefopt.train.algorithms.base import Algorithm
from prefopt.train.checkpoint import (latest_checkpoint, load_model_weights, load_trainer_state,
                                      rng_state, save_checkpoint, set_rng_state)
from prefopt.train.config import LoopConfig
from prefopt.train.metrics import MetricsLogger, peak_rss_mib
from prefopt.train.recipe import PLAIN_STEP, plan_step, step_units
from prefopt.train.schedule import build_scheduler


@dataclass
class TrainResult:
    steps: int
    final_checkpoint: Path | None
    last_metrics: dict
    eval_metrics: dict
    seconds: float


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume(ckpt: Path, model, optimizer, scheduler, algorithm) -> int:
    state = load_trainer_state(ckpt)
    load_model_weights(model, ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    algorithm.load_state_dict(state["algorithm"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _trainer_state(optimizer, scheduler, algorithm) -> dict:
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "algorithm": algorithm.state_dict()}


def train(model: torch.nn.Module, algorithm: Algorithm, optimizer: torch.optim.Optimizer,
          cfg: LoopConfig, run_dir: Path, *, tokenizer=None, logger: MetricsLogger | None = None,
          resume: bool = False, state_bytes_fn=None,
          evaluators: list[Callable[[torch.nn.Module], dict]] | None = None) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps of ``algorithm`` on ``model``.

    ``resume`` continues from the newest checkpoint in ``run_dir`` exactly where it stopped.
    ``state_bytes_fn(optimizer)`` reports optimizer-state bytes for the metrics.
    ``evaluators`` are extra ``model -> metrics`` callbacks run with the algorithm's evaluation
    (e.g. the lab's gold reward and KL), logged under ``eval/``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    scheduler = build_scheduler(optimizer, schedule=cfg.lr_schedule, total_steps=cfg.steps,
                                warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
    start = 0
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise TrainingError(f"--resume: no complete checkpoint in {run_dir}")
        start = _resume(ckpt, model, optimizer, scheduler, algorithm)
    own_logger = logger is None
    logger = logger or MetricsLogger(run_dir, resume=resume)
    params = [p for p in model.parameters() if p.requires_grad]
    progress = _progress(cfg, start)
    last, eval_metrics, final = {}, {}, None
    t_start = time.perf_counter()
    step = start
    before: dict = {}
    try:
        if cfg.eval_on_start and start == 0:
            rng = rng_state()  # evaluation may sample: the run must not depend on whether it looked first
            _evaluate(model, algorithm, logger, 0, evaluators)
            set_rng_state(rng)
        model.train()
        for step in range(start + 1, cfg.steps + 1):
            # Snapshot of what a checkpoint of the previous step holds, for Ctrl-C mid-step.
            before = {"algorithm": algorithm.state_dict(), "rng": rng_state()}
            try:
                last = _one_step(model, algorithm, optimizer, scheduler, params, cfg, step)
            except StopTraining as stop:  # the algorithm has nothing left to learn: finish cleanly
                optimizer.zero_grad(set_to_none=True)
                logger.log({"step": step - 1, "stopped_early": str(stop)})
                warnings.warn(f"training stopped before step {step}: {stop}", stacklevel=2)
                step -= 1
                break
            if state_bytes_fn is not None:
                last["memory/optimizer_state_bytes"] = float(state_bytes_fn(optimizer))
            logger.log(last)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                eval_metrics = _evaluate(model, algorithm, logger, step, evaluators)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_checkpoint(run_dir, step, model, tokenizer, _trainer_state(optimizer, scheduler, algorithm),
                                cfg.keep_checkpoints)
        eval_metrics = _evaluate(model, algorithm, logger, step, evaluators)
        if step > start or latest_checkpoint(run_dir) is None:
            final = save_checkpoint(run_dir, step, model, tokenizer,
                                    _trainer_state(optimizer, scheduler, algorithm), cfg.keep_checkpoints)
        else:
            final = latest_checkpoint(run_dir)
    except KeyboardInterrupt:
        # Save the last completed step so `--resume` continues from there.
        state = _trainer_state(optimizer, scheduler, algorithm)
        done = step
        if last.get("step") != step:  # interrupted inside step: roll the data position back
            done = step - 1
            optimizer.zero_grad(set_to_none=True)
            getattr(algorithm, "step_hook", PLAIN_STEP).abort(model, optimizer)  # e.g. undo a look-ahead
            state = _trainer_state(optimizer, scheduler, algorithm)
            state.update(before)
        if done > start:
            save_checkpoint(run_dir, done, model, tokenizer, state, cfg.keep_checkpoints)
        raise
    finally:
        if progress is not None:
            progress.close()
        if own_logger:
            logger.close()
    return TrainResult(step, final, last, eval_metrics, time.perf_counter() - t_start)


def _progress(cfg: LoopConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _one_step(model, algorithm: Algorithm, optimizer, scheduler, params, cfg: LoopConfig, step: int) -> dict:
    """One loop step: a pass per phase of the algorithm's step hook (one plain pass by default,
    see :class:`prefopt.train.recipe.StepHook`), then one scheduler step."""
    t0 = time.perf_counter()
    hook = getattr(algorithm, "step_hook", PLAIN_STEP)
    earlier: dict[str, float] = {}
    for i, phase in enumerate(hook.phases):
        record = _one_pass(model, algorithm, optimizer, hook, phase, params, cfg, step)
        if i < len(hook.phases) - 1:
            earlier.update({f"{phase}/loss": record["loss"], f"{phase}/grad_norm": record["grad_norm"]})
    scheduler.step()
    dt = time.perf_counter() - t0
    tokens = record.pop("_tokens")
    out = {"step": step, "loss": record.pop("loss"), "lr": record.pop("lr"), "grad_norm": record.pop("grad_norm"),
           "time/step_s": dt, "tokens/s": tokens / dt if dt > 0 else 0.0, "memory/peak_rss_mib": peak_rss_mib()}
    out.update(record)
    out.update(earlier)
    out.update(algorithm.step_metrics())
    return out


def _one_pass(model, algorithm: Algorithm, optimizer, hook, phase: str, params, cfg: LoopConfig, step: int) -> dict:
    """Sources make the batches → the hook → forward/backward per term → clip → optimizer step."""
    plan = plan_step(algorithm, model, cfg.grad_accum)
    hook.before_forward(phase, model, optimizer)
    model.train()
    units = step_units(plan)  # per term, summed over micro-batches (and ranks, there)
    if sum(units.values()) <= 0:
        raise TrainingError(f"step {step}: the batches hold no training units")
    sums, metrics, tokens = _accumulate(model, plan, units, needs_create_graph(optimizer), step)
    grad_norm = float("nan")
    if cfg.max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not math.isfinite(grad_norm):
            raise TrainingError(f"non-finite gradient norm at step {step}; lower the learning rate")
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    hook.after_update(phase, model, optimizer)
    weights = {item.key: item.weight for micro in plan for item in micro}
    record = {"loss": sum(weights[k] * sums[k] / units[k] for k in sums), "lr": lr, "grad_norm": grad_norm,
              "_tokens": tokens}
    names = getattr(algorithm, "term_names", {})
    if len(sums) > 1 or len(names) > 1:  # a multi-term recipe: each term's normalized loss too
        record.update({f"loss/{names.get(k, k)}": sums[k] / units[k] for k in sums})
    record.update(metrics)
    return record


def _accumulate(model, plan, units: dict[str, float], create_graph: bool, step: int):
    """Backward of every term of every micro-batch, each normalized by its own step units.

    Returns (per-term summed losses, unit-weighted metrics, tokens)."""
    sums: dict[str, float] = {}
    metrics: dict[str, float] = {}
    owner: dict[str, str] = {}  # metric name -> the term that logs it (a second term's clash is prefixed)
    tokens = 0
    for i, micro in enumerate(plan):
        for item in micro:
            if units[item.key] <= 0:  # e.g. a mixture drew nothing for this term this step
                continue
            out = item.term.loss(model, item.batch)
            if not torch.isfinite(out.loss):
                raise TrainingError(f"non-finite loss ({float(out.loss.detach())}) at step {step}, micro-batch {i}; "
                                    "lower the learning rate or check the data")
            (item.weight * out.loss / units[item.key]).backward(create_graph=create_graph)
            sums[item.key] = sums.get(item.key, 0.0) + float(out.loss.detach())
            tokens += out.tokens
            share = item.term.units(item.batch) / units[item.key]
            for k, v in out.metrics.items():
                name = k if owner.setdefault(k, item.key) == item.key else f"{item.term.name}/{k}"
                metrics[name] = metrics.get(name, 0.0) + float(v) * share
    return sums, metrics, tokens


def _evaluate(model, algorithm: Algorithm, logger: MetricsLogger, step: int, evaluators) -> dict:
    metrics = algorithm.evaluate(model)
    for evaluator in evaluators or []:
        metrics.update(evaluator(model))
    if metrics:
        logger.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
    model.train()
    return metrics
