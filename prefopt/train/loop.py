"""The single training loop every algorithm runs on.

Per optimizer step: the algorithm (a recipe of sources × loss terms, ``prefopt.train.recipe``)
supplies ``grad_accum`` micro-batches; each term's summed loss is divided by that term's units
summed over the step before ``backward``, and terms add with their weights (so accumulation
equals one large batch per term); gradients are clipped; optimizer and scheduler step; metrics are logged;
evaluation and checkpoints happen on schedule. SIGINT/SIGTERM save a resumable checkpoint.

Under data parallelism (``prefopt.dist``) every rank runs this loop on its share of each batch;
the step's units are all-reduced in ``step_units``, gradients summed, metrics reduced, and rank 0
alone writes metrics and checkpoints (full state, see ``prefopt.train.distributed``).
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prefopt.dist import current
from prefopt.dist.parallel import gathered, grad_norm_value, sync_gradients
from prefopt.errors import StopTraining, TrainingError
from prefopt.optim import needs_create_graph
from prefopt.seeding import GLOBAL, derive_seed
from prefopt.train.algorithms.base import Algorithm
from prefopt.train.checkpoint import rng_state, set_rng_state
from prefopt.train.config import LoopConfig
from prefopt.train.distributed import NullLogger, reduce_step
from prefopt.train.interrupt import GUARD, TrainingInterrupted
from prefopt.train.metrics import MetricsLogger, last_eval, peak_rss_mib
from prefopt.train.precision import FP32, Precision
from prefopt.train.recipe import PLAIN_STEP, plan_step, step_units
from prefopt.train.rundir import locked
from prefopt.train.run_state import RunState
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

    random.seed(derive_seed(seed, GLOBAL))
    np.random.seed(derive_seed(seed, GLOBAL, bits=32))
    torch.manual_seed(derive_seed(seed, GLOBAL))


def train(model: torch.nn.Module, algorithm: Algorithm, optimizer: torch.optim.Optimizer,
          cfg: LoopConfig, run_dir: Path, *, tokenizer=None, logger: MetricsLogger | None = None,
          resume: bool | Path = False, state_bytes_fn=None,
          evaluators: list[Callable[[torch.nn.Module], dict]] | None = None) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps of ``algorithm`` on ``model``.

    ``resume`` continues exactly where the run stopped: True from the newest intact checkpoint in
    ``run_dir`` (a corrupted newer one is reported and skipped, or stops the run when
    ``cfg.checkpoint_fallback`` is false), a path from that (verified) checkpoint.
    ``state_bytes_fn(optimizer)`` reports optimizer-state bytes for the metrics.
    ``evaluators`` are extra ``model -> metrics`` callbacks run with the algorithm's evaluation
    (e.g. the lab's gold reward and KL), logged under ``eval/``.
    SIGINT and SIGTERM save the last completed step and raise :class:`TrainingInterrupted`.
    """
    run_dir = Path(run_dir)
    main = current().is_main  # under torchrun, rank 0 alone holds the run directory and writes to it
    with locked(run_dir) if main else contextlib.nullcontext(), GUARD:
        own_logger = logger is None
        logger = logger or (MetricsLogger(run_dir, resume=bool(resume)) if main else NullLogger())
        try:
            return _train(model, algorithm, optimizer, cfg, run_dir, tokenizer, logger, resume, state_bytes_fn,
                          evaluators)
        finally:
            if own_logger:
                logger.close()


def _train(model, algorithm, optimizer, cfg, run_dir, tokenizer, logger, resume, state_bytes_fn,
           evaluators) -> TrainResult:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    scheduler = build_scheduler(optimizer, schedule=cfg.lr_schedule, total_steps=cfg.steps,
                                warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
    precision = Precision.for_run(cfg.precision, model, optimizer)
    run = RunState(run_dir, cfg, model, tokenizer, optimizer, scheduler, algorithm, logger, precision)
    start = run.start(resume)
    if run.loop.get("stopped") or (start >= cfg.steps and not run.loop.get("eval_pending")):
        warnings.warn(f"{run_dir}: the run is complete at step {start}; nothing to do (raise train.steps to train "
                      "on)", stacklevel=3)
        return TrainResult(start, run.final, {}, last_eval(getattr(logger, "path", "")), 0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    progress = _progress(cfg, start) if current().is_main else None
    last, eval_metrics = {}, {}
    t_start = time.perf_counter()
    step = start
    # An optimizer update, and the bookkeeping up to its metrics record, is never cut by a signal.
    hold = optimizer.register_step_pre_hook(lambda *_: GUARD.hold())
    evaluate = lambda at: _evaluate(model, algorithm, logger, at, evaluators,  # noqa: E731
                                    logged=lambda: run.snapshot(at, eval_pending=False))
    try:
        eval_metrics = _before_first_step(run, cfg, start, evaluate)
        model.train()
        for step in range(start + 1, cfg.steps + 1):
            run.snapshot(step - 1, eval_pending=False)
            try:
                last = _one_step(model, algorithm, optimizer, scheduler, params, cfg, step, precision)
            except StopTraining as stop:  # the algorithm has nothing left to learn: finish cleanly
                optimizer.zero_grad(set_to_none=True)
                logger.log({"step": step - 1, "stopped_early": str(stop)})
                warnings.warn(f"training stopped before step {step}: {stop}", stacklevel=2)
                step -= 1
                eval_metrics = evaluate(step)
                run.save(step, stopped=True)
                break
            if state_bytes_fn is not None:
                last["memory/optimizer_state_bytes"] = float(state_bytes_fn(optimizer))
            logger.log(last)
            due_eval = step == cfg.steps or _due(cfg.eval_every, step)
            run.snapshot(step, eval_pending=due_eval)
            GUARD.release()  # a signal held since the update is raised here, with the step complete
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
            if due_eval:
                eval_metrics = evaluate(step)
            if step == cfg.steps or _due(cfg.save_every, step):
                run.save(step)
    except KeyboardInterrupt as exc:
        GUARD.hold()  # a second Ctrl-C must not cut this save short
        try:
            getattr(algorithm, "step_hook", PLAIN_STEP).abort(model, optimizer)  # e.g. undo a look-ahead
            saved = run.save_on_interrupt()
        finally:
            GUARD.discard()
        raise TrainingInterrupted(getattr(exc, "signum", signal.SIGINT), saved, run_dir) from None
    finally:
        hold.remove()
        if progress is not None:
            progress.close()
    return TrainResult(step, run.final, last, eval_metrics, time.perf_counter() - t_start)


def _before_first_step(run: RunState, cfg: LoopConfig, start: int, evaluate) -> dict:
    if run.loop.get("eval_pending"):  # a signal came during this step's evaluation: do it now
        run.snapshot(start, eval_pending=True)
        metrics = evaluate(start)
        if start == cfg.steps or _due(cfg.save_every, start):
            run.save(start)
        return metrics
    if cfg.eval_on_start and start == 0:
        rng = rng_state()  # evaluation may sample: the run must not depend on whether it looked first
        evaluate(0)
        set_rng_state(rng)
    return {}


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def _progress(cfg: LoopConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _one_step(model, algorithm: Algorithm, optimizer, scheduler, params, cfg: LoopConfig, step: int,
              precision: Precision = FP32) -> dict:
    """One loop step: a pass per phase of the algorithm's step hook (one plain pass by default,
    see :class:`prefopt.train.recipe.StepHook`), then one scheduler step."""
    t0 = time.perf_counter()
    hook = getattr(algorithm, "step_hook", PLAIN_STEP)
    earlier: dict[str, float] = {}
    for i, phase in enumerate(hook.phases):
        record = _one_pass(model, algorithm, optimizer, hook, phase, params, cfg, step, precision)
        if i < len(hook.phases) - 1:
            earlier.update({f"{phase}/loss": record["loss"], f"{phase}/grad_norm": record["grad_norm"]})
    scheduler.step()
    dt = time.perf_counter() - t0
    tokens = record.pop("_tokens")
    out = {"step": step, "loss": record.pop("loss"), "lr": record.pop("lr"), "grad_norm": record.pop("grad_norm"),
           "time/step_s": dt, "tokens/s": tokens / dt if dt > 0 else 0.0, "memory/peak_rss_mib": peak_rss_mib()}
    out.update(record)
    out.update(earlier)
    out.update(precision.metrics())
    out.update(current().mean_dicts(algorithm.step_metrics()))  # source metrics: mean over ranks
    return out


def _one_pass(model, algorithm: Algorithm, optimizer, hook, phase: str, params, cfg: LoopConfig, step: int,
              precision: Precision) -> dict:
    """Sources make the batches → the hook → forward/backward per term → clip → optimizer step."""
    rt = current()
    plan, error = None, None
    try:
        with gathered(model, rt):  # FSDP2: sampling runs on gathered weights
            with precision.autocast():  # the sources' forwards (reference, rollouts) in the step's precision
                plan = plan_step(algorithm, model, cfg.grad_accum)
    except Exception as exc:  # every rank learns of a failure (or a clean stop) on any rank
        error = exc
    rt.check_all(error)
    hook.before_forward(phase, model, optimizer)
    model.train()
    units = step_units(plan, rt.all_reduce if rt.distributed else None)  # per term, over micro-batches and ranks
    if sum(units.values()) <= 0:
        raise TrainingError(f"step {step}: the batches hold no training units")
    try:
        sums, metrics, tokens = _accumulate(model, plan, units, needs_create_graph(optimizer), step, precision)
    except Exception as exc:
        error = exc
    rt.check_all(error)
    sync_gradients(params, rt)
    sums, metrics, tokens = reduce_step(rt, sums, metrics, tokens)
    grad_norm = float("nan")
    precision.unscale(optimizer)
    if cfg.max_grad_norm > 0:
        grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if not math.isfinite(grad_norm) and precision.scaler is None:  # the fp16 scaler skips such a step
            raise TrainingError(f"non-finite gradient norm at step {step}; lower the learning rate")
    lr = optimizer.param_groups[0]["lr"]
    precision.step(optimizer)
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


def _accumulate(model, plan, units: dict[str, float], create_graph: bool, step: int, precision: Precision):
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
            with precision.autocast():
                out = item.term.loss(model, item.batch)
            if not torch.isfinite(out.loss):
                raise TrainingError(f"non-finite loss ({float(out.loss.detach())}) at step {step}, micro-batch {i}; "
                                    "lower the learning rate or check the data")
            precision.backward(item.weight * out.loss / units[item.key], create_graph)
            sums[item.key] = sums.get(item.key, 0.0) + float(out.loss.detach())
            tokens += out.tokens
            share = item.term.units(item.batch) / units[item.key]
            for k, v in out.metrics.items():
                name = k if owner.setdefault(k, item.key) == item.key else f"{item.term.name}/{k}"
                metrics[name] = metrics.get(name, 0.0) + float(v) * share
    return sums, metrics, tokens


def _evaluate(model, algorithm: Algorithm, logger: MetricsLogger, step: int, evaluators, logged=None) -> dict:
    with gathered(model, current()):  # every rank evaluates the same held-out data; rank 0 logs
        metrics = algorithm.evaluate(model)
        for evaluator in evaluators or []:
            metrics.update(evaluator(model))
    with GUARD.critical():  # the record and the state that follows it go together
        if metrics:
            logger.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if logged is not None:
            logged()
    model.train()
    return metrics
