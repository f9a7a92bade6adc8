"""Build everything a ``prefopt train`` config describes, then run the single loop."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from prefopt.cli.builders import build_algorithm, build_model, finish_run
from prefopt.cli.config import to_dict
from prefopt.cli.resume import record_resume, resume_changes, saved_config
from prefopt.dist import current, init_runtime
from prefopt.dist.parallel import prepare_model
from prefopt.errors import ConfigError
from prefopt.models.loading import load_tokenizer
from prefopt.models.tiny import is_tiny
from prefopt.optim import build_optimizer, optimizer_state_bytes
from prefopt.train.precision import Precision, device_type_of
from prefopt.report.environment import write_environment
from prefopt.tasks import get_task
from prefopt.tasks.tokenizer import train_tokenizer
from prefopt.train.checkpoint import checkpoint_step, select_resume_checkpoint
from prefopt.train.config import TrainConfig
from prefopt.train.distributed import NullLogger, checkpoint_world_size, per_rank_counts_for
from prefopt.train.interrupt import GUARD
from prefopt.train.loop import TrainResult, train
from prefopt.train.metrics import MetricsLogger
from prefopt.train.rundir import fresh_name, locked, prepare_new_run
from prefopt.validation import check_config

def cache_dir() -> Path:
    return Path(os.environ.get("PREFOPT_CACHE", Path.home() / ".cache" / "prefopt"))


@functools.lru_cache(maxsize=None)
def _tokenizer_corpus(task_name: str, options: str) -> tuple[str, ...]:
    return tuple(get_task(task_name, **json.loads(options)).tokenizer_corpus())


@functools.lru_cache(maxsize=None)  # the corpus takes ~1 s to make: once per process and task
def _tokenizer_key(task_name: str, options: str, vocab_size: int) -> str:
    digest = hashlib.sha1("\x00".join(_tokenizer_corpus(task_name, options)).encode()).hexdigest()
    return hashlib.sha1(json.dumps([task_name, json.loads(options), vocab_size, digest],
                                   sort_keys=True).encode()).hexdigest()[:10]


def task_tokenizer(task_name: str, task_options: dict, vocab_size: int = 512):
    """The lab task's byte-level BPE, trained once and cached under ``$PREFOPT_CACHE``.

    The cache key includes a digest of the training corpus, so a change of the task's text (or of
    its seeds) trains a new tokenizer instead of reusing one a fresh checkout would not build."""
    options = json.dumps(task_options, sort_keys=True)
    path = cache_dir() / "tokenizers" / f"{task_name}-{_tokenizer_key(task_name, options, vocab_size)}"
    if (path / "tokenizer.json").exists():
        return load_tokenizer(str(path))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    train_tokenizer(_tokenizer_corpus(task_name, options), tmp, vocab_size)
    try:
        tmp.rename(path)
    except OSError:  # another process won the race; its copy is identical
        pass
    return load_tokenizer(str(path))


def resolve_tokenizer(cfg: TrainConfig):
    if cfg.model.tokenizer:
        return load_tokenizer(cfg.model.tokenizer, cfg.model.trust_remote_code)
    if is_tiny(cfg.model.name_or_path):
        if not cfg.data.task:
            raise ConfigError("model.tokenizer: a tiny model needs a tokenizer path or data.task to build one")
        return task_tokenizer(cfg.data.task, cfg.data.task_options)
    return load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)


@dataclass
class RunOutput:
    run_dir: Path
    result: TrainResult
    data_stats: dict
    optimizer: torch.optim.Optimizer | None = None  # after training, e.g. for optimizer_state_bytes(params=...)


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.run_name:
        return Path(cfg.output_dir) / cfg.run_name
    # a generated name never reuses a folder (two runs started in the same second)
    return Path(cfg.output_dir) / fresh_name(Path(cfg.output_dir), f"{cfg.algo.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def run_train(cfg: TrainConfig, *, resume: bool = False, run_dir: Path | None = None,
              evaluators=None, overwrite: bool = False) -> RunOutput:
    """Build tokenizer, model, data, algorithm and optimizer from ``cfg``; train; return the run.

    A new run needs an empty (or new) run directory unless ``overwrite``, which clears it first;
    ``resume`` continues the run from its newest intact checkpoint, accepting only the setting changes
    of ``SAFE_ON_RESUME``. The run directory is locked for the whole run.

    Under torchrun every rank calls this: it joins the process group (``cfg.dist``), draws its share
    of the data, and rank 0 alone locks and writes the run directory."""
    check_config(cfg)  # configs built in code (demo, compare, tests) get the checks YAML configs get
    rt = init_runtime(cfg.dist)
    run_dir = Path(rt.broadcast_object(str(run_dir) if run_dir else str(run_dir_for(cfg))))  # one name for all ranks
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    if resume and not run_dir.is_dir():
        raise ConfigError(f"--resume: run directory {run_dir} does not exist")
    if cfg.optim.name == "sophia" and cfg.model.attn_implementation in (None, "sdpa"):
        # Sophia's Hessian estimate backpropagates twice; SDPA kernels have no double backward.
        cfg.model.attn_implementation = "eager"
    with GUARD, locked(run_dir) if rt.is_main else contextlib.nullcontext():
        ckpt, changes, error = None, {}, None
        try:  # rank 0 checks the run directory; every rank learns the outcome
            if rt.is_main:
                ckpt, changes = _open_run(cfg, run_dir, resume, overwrite)
        except Exception as exc:
            error = exc
        rt.check_all(error)
        ckpt = rt.broadcast_object(ckpt)
        return _build_and_train(cfg, run_dir, ckpt, changes, evaluators)


def rollout_workers(cfg: TrainConfig, model, tokenizer, rt):
    """Ray rollout workers per ``dist.rollout_workers`` (None: generate in this process)."""
    if cfg.dist.rollout_workers == 0:
        return None
    if rt.sharded:
        raise ConfigError("dist.rollout_workers: not supported with dist.strategy=fsdp2 (the workers need the full "
                          "weights every update); use ddp")
    from prefopt.dist.rollout_workers import RayRolloutWorkers
    return RayRolloutWorkers(model, tokenizer, cfg.dist.rollout_workers, max_staleness=cfg.dist.max_staleness,
                             threads=max(1, cfg.train.threads))


def _open_run(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool) -> tuple[Path | None, dict]:
    """(checkpoint to resume or None, setting changes on resume); a new run's directory made ready."""
    if not resume:
        prepare_new_run(run_dir, overwrite=overwrite)
        return None, {}
    ckpt = select_resume_checkpoint(run_dir, fallback=cfg.train.checkpoint_fallback)
    saved = saved_config(ckpt, run_dir)
    if saved is None:
        return ckpt, {}
    requested = to_dict(cfg)
    saved = per_rank_counts_for(saved, requested, checkpoint_world_size(ckpt), current().world_size)
    return ckpt, resume_changes(saved, requested, checkpoint_step(ckpt))


def _build_and_train(cfg: TrainConfig, run_dir: Path, ckpt: Path | None, changes: dict, evaluators) -> RunOutput:
    torch.manual_seed(cfg.train.seed)
    tokenizer = resolve_tokenizer(cfg)
    model = build_model(cfg, tokenizer)  # the policy (LoRA applied per cfg.lora) or e.g. a reward model
    with Precision(cfg.train.precision, device_type_of(model)).autocast():  # a precomputed reference: same numerics
        algorithm, stats = build_algorithm(cfg, model, tokenizer)  # references copy the model before it is sharded
    rt = current()
    model = prepare_model(model, rt)
    optimizer = build_optimizer(model, cfg.optim)
    rt.generator = rollout_workers(cfg, model, tokenizer, rt)
    resume = ckpt is not None
    if rt.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_environment(run_dir)  # versions, CPU, threads: what `prefopt report` shows
        if resume:
            record_resume(run_dir, ckpt, checkpoint_step(ckpt), changes)
    logger = (MetricsLogger(run_dir, tensorboard=cfg.train.tensorboard, wandb_project=cfg.train.wandb_project,
                            run_name=run_dir.name, config=to_dict(cfg), resume=resume) if rt.is_main else NullLogger())
    try:
        if stats and not resume:
            logger.log({"step": 0, **stats})
        result = train(model, algorithm, optimizer, cfg.train, run_dir, tokenizer=tokenizer, logger=logger,
                       resume=ckpt if resume else False, state_bytes_fn=optimizer_state_bytes,
                       evaluators=evaluators)
    finally:
        logger.close()
        if rt.generator is not None:
            rt.generator.close()
            rt.generator = None
    if rt.is_main:
        finish_run(cfg, model, tokenizer, run_dir, result)  # e.g. a merged LoRA model
    rt.barrier()
    return RunOutput(run_dir, result, stats, optimizer)
