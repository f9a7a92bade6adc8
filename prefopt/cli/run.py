"""Build everything a ``prefopt train`` config describes, then run the single loop."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from prefopt.cli.config import to_dict
from prefopt.data.loaders import read_jsonl, validate
from prefopt.data.tokenize import encode_pair, encode_prompt_response
from prefopt.errors import ConfigError, DataError
from prefopt.models.loading import load_model, load_tokenizer
from prefopt.models.tiny import is_tiny
from prefopt.optim import build_optimizer, optimizer_state_bytes
from prefopt.tasks import get_task
from prefopt.tasks.tokenizer import train_tokenizer
from prefopt.train.algorithms.base import Algorithm
from prefopt.train.config import TrainConfig
from prefopt.train.loop import TrainResult, train
from prefopt.train.metrics import MetricsLogger

ALGORITHMS = ("sft", "dpo")


def cache_dir() -> Path:
    return Path(os.environ.get("PREFOPT_CACHE", Path.home() / ".cache" / "prefopt"))


def task_tokenizer(task_name: str, task_options: dict, vocab_size: int = 512):
    """The lab task's byte-level BPE, trained once and cached under ``$PREFOPT_CACHE``."""
    key = hashlib.sha1(json.dumps([task_name, task_options, vocab_size], sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir() / "tokenizers" / f"{task_name}-{key}"
    if (path / "tokenizer.json").exists():
        return load_tokenizer(str(path))
    task = get_task(task_name, **task_options)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    train_tokenizer(task.tokenizer_corpus(), tmp, vocab_size)
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


def _sft_rows(cfg: TrainConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    if cfg.data.path:
        rows = validate(read_jsonl(cfg.data.path), "sft", cfg.data.path, cfg.data.on_bad_row).rows
        pairs = [(r["prompt"], r["completion"]) for r in rows]
        if cfg.data.eval_path:
            ev = validate(read_jsonl(cfg.data.eval_path), "sft", cfg.data.eval_path, cfg.data.on_bad_row).rows
            return pairs, [(r["prompt"], r["completion"]) for r in ev]
        n_eval = min(cfg.data.eval_examples, len(pairs) // 10)
        return pairs[n_eval:], pairs[:n_eval]
    if not cfg.data.task:
        raise ConfigError("data.path: SFT needs a data file (prompt, completion) or a lab task in data.task")
    task = get_task(cfg.data.task, **cfg.data.task_options)
    return (task.sft_corpus(cfg.data.num_examples, seed=cfg.train.seed),
            task.sft_corpus(cfg.data.eval_examples, seed=cfg.train.seed + 1_000_003))


def _pair_rows(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    if not cfg.data.path:
        raise ConfigError("data.path: preference training needs a pairwise JSONL file "
                          "(make one with `prefopt data make TASK --out FILE`)")
    rows = validate(read_jsonl(cfg.data.path), "pairwise", cfg.data.path, cfg.data.on_bad_row).rows
    if cfg.data.eval_path:
        return rows, validate(read_jsonl(cfg.data.eval_path), "pairwise", cfg.data.eval_path, cfg.data.on_bad_row).rows
    n_eval = min(cfg.data.eval_examples, len(rows) // 10)
    return rows[n_eval:], rows[:n_eval]


def encode_pairs(tokenizer, rows: list[dict], cfg: TrainConfig, source: str) -> tuple[list, dict]:
    """Encode pairwise rows; identical chosen/rejected pairs are dropped and counted."""
    out, identical, truncated = [], 0, 0
    for i, r in enumerate(rows):
        if r["chosen"] == r["rejected"]:
            identical += 1
            continue
        scores = {k: tuple(v) for k, v in (r.get("scores") or {}).items()}
        pair = encode_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"], i, cfg.data.max_length,
                           cfg.data.max_prompt_length, float(r.get("weight", 1.0)), scores)
        truncated += pair.truncated
        out.append(pair)
    if not out:
        raise DataError(f"{source}: no usable pairs ({identical} had chosen identical to rejected)")
    return out, {"data/identical_pairs_dropped": identical, "data/truncated": truncated}


def build_algorithm(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    name = cfg.algo.name
    pad = tokenizer.pad_token_id
    if name == "sft":
        from prefopt.train.algorithms.sft import SFT

        train_rows, eval_rows = _sft_rows(cfg)
        enc = lambda rows: [encode_prompt_response(tokenizer, p, r, cfg.data.max_length, cfg.data.max_prompt_length)
                            for p, r in rows]
        tr, ev = enc(train_rows), enc(eval_rows)
        stats = {"data/train_examples": len(tr), "data/truncated": sum(e.truncated for e in tr)}
        return SFT(tr, ev, pad_id=pad, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                   shuffle=cfg.data.shuffle), stats
    if name == "dpo":
        from prefopt.losses import get_pairwise_loss, validate_hparams
        from prefopt.train.algorithms.preference import PairwisePreference

        try:
            loss_fn = get_pairwise_loss(cfg.algo.loss)
            hparams = validate_hparams(cfg.algo.loss, cfg.algo.loss_hparams)
        except ValueError as exc:
            raise ConfigError(f"algo.loss: {exc}") from None
        train_rows, eval_rows = _pair_rows(cfg)
        tr, stats = encode_pairs(tokenizer, train_rows, cfg, cfg.data.path)
        ev, _ = encode_pairs(tokenizer, eval_rows, cfg, cfg.data.eval_path or cfg.data.path) if eval_rows else ([], {})
        reference = None
        if cfg.algo.reference == "copy" and not getattr(loss_fn, "reference_free", False):
            reference = load_model(cfg.model, tokenizer)
            reference.requires_grad_(False).eval()
        stats["data/train_pairs"] = len(tr)
        return PairwisePreference(tr, ev, loss_fn=loss_fn, beta=cfg.algo.beta, hparams=hparams, pad_id=pad,
                                  batch_size=cfg.train.batch_size, reference=reference, seed=cfg.train.seed,
                                  shuffle=cfg.data.shuffle), stats
    import difflib
    close = difflib.get_close_matches(name, ALGORITHMS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"algo.name: unknown algorithm '{name}'{hint} (known: {', '.join(ALGORITHMS)})")


@dataclass
class RunOutput:
    run_dir: Path
    result: TrainResult
    data_stats: dict


def run_dir_for(cfg: TrainConfig) -> Path:
    name = cfg.run_name or f"{cfg.algo.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output_dir) / name


def run_train(cfg: TrainConfig, *, resume: bool = False, run_dir: Path | None = None,
              evaluators=None) -> RunOutput:
    """Build tokenizer, model, data, algorithm and optimizer from ``cfg``; train; return the run."""
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
    if resume and not run_dir.exists():
        raise ConfigError(f"--resume: run directory {run_dir} does not exist")
    torch.manual_seed(cfg.train.seed)
    tokenizer = resolve_tokenizer(cfg)
    model = load_model(cfg.model, tokenizer)
    algorithm, stats = build_algorithm(cfg, model, tokenizer)
    optimizer = build_optimizer(model, cfg.optim)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    logger = MetricsLogger(run_dir, tensorboard=cfg.train.tensorboard, wandb_project=cfg.train.wandb_project,
                           run_name=run_dir.name, config=to_dict(cfg), resume=resume)
    try:
        if stats:
            logger.log({"step": 0, **stats})
        result = train(model, algorithm, optimizer, cfg.train, run_dir, tokenizer=tokenizer, logger=logger,
                       resume=resume, state_bytes_fn=optimizer_state_bytes,
                       evaluators=evaluators)
    finally:
        logger.close()
    return RunOutput(run_dir, result, stats)
