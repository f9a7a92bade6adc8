"""Builders of the offline algorithms: SFT and the pairwise preference family."""
from __future__ import annotations

from prefopt.cli.builders import register
from prefopt.data.loaders import read_jsonl, validate
from prefopt.data.tokenize import encode_pair, encode_prompt_response
from prefopt.errors import ConfigError, DataError
from prefopt.models.loading import load_model
from prefopt.tasks import get_task
from prefopt.train.algorithms.base import Algorithm
from prefopt.train.config import TrainConfig


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


@register("sft")
def build_sft(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    from prefopt.train.algorithms.sft import SFT

    pad = tokenizer.pad_token_id
    train_rows, eval_rows = _sft_rows(cfg)
    enc = lambda rows: [encode_prompt_response(tokenizer, p, r, cfg.data.max_length, cfg.data.max_prompt_length)
                        for p, r in rows]
    tr, ev = enc(train_rows), enc(eval_rows)
    stats = {"data/train_examples": len(tr), "data/truncated": sum(e.truncated for e in tr)}
    return SFT(tr, ev, pad_id=pad, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
               shuffle=cfg.data.shuffle), stats


@register("dpo")
def build_pairwise(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    pad = tokenizer.pad_token_id
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
