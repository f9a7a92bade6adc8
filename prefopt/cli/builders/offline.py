"""Builders of the offline algorithms: SFT, the pairwise preference family (``dpo`` with any
registered loss or a weighted combination), KTO and Bradley-Terry reward models / ensembles.

Data comes from ``data.path`` (JSONL, Parquet, CSV, a ``datasets`` directory or hub name; see
``prefopt.data.loaders``), with ``data.columns`` mapping and conversational rows rendered
with the chat template. Everything dropped or trimmed is counted in the returned stats
(logged at step 0) and warned about once.
"""
from __future__ import annotations

import functools
import logging

import torch

from prefopt.cli.builders import register
from prefopt.data.chat import set_chat_template
from prefopt.data.loaders import apply_columns, detect_schema, read_records, validate
from prefopt.data.prepare import encode_pairwise, encode_sft, encode_unpaired, pairs_to_unpaired
from prefopt.errors import ConfigError, DataError
from prefopt.models.lora import is_peft
from prefopt.seeding import TASK_CORPUS, UNPAIRED_PARTNERS, derive_seed
from prefopt.tasks import get_task
from prefopt.train.algorithms.base import Algorithm
from prefopt.train.config import TrainConfig

log = logging.getLogger("prefopt.offline")
_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


# --------------------------------------------------------------------------- data
def _load(cfg: TrainConfig, path: str, split: str | None, schema: str) -> tuple[list[dict], dict, str]:
    """Validated rows of one source; for ``unpaired`` a pairwise source is split into examples."""
    d = cfg.data
    records = apply_columns(read_records(path, fmt=d.format, split=split), d.columns, d.score_columns)
    if not records.rows:
        raise DataError(f"{records.source}: no rows")
    stats: dict = {}
    if schema == "unpaired" and detect_schema(records.rows[0]) == "pairwise":
        v = validate(records, "pairwise", records.source, d.on_bad_row)
        rows = pairs_to_unpaired(v.rows)
        stats["data/unpaired_from_pairs"] = len(v.rows)
        log.info("%s: %d preference pairs split into %d unpaired examples (chosen desirable, rejected "
                 "undesirable)", records.source, len(v.rows), len(rows))
    else:
        v = validate(records, schema, records.source, d.on_bad_row)
        rows = v.rows
    if v.skipped:
        log.warning("%s: skipped %d malformed row(s) (data.on_bad_row: skip); first: %s",
                    records.source, v.skipped, v.problems[0])
    stats["data/bad_rows_skipped"] = v.skipped
    return rows, stats, records.source


def _rows(cfg: TrainConfig, schema: str) -> tuple[list[dict], list[dict], dict, str, str]:
    """(train rows, eval rows, stats, train source, eval source) for a data file/dataset."""
    d = cfg.data
    if not d.path:
        what = {"pairwise": "a pairwise dataset (prompt, chosen, rejected)",
                "unpaired": "an unpaired dataset (prompt, completion, label) or a pairwise one"}[schema]
        raise ConfigError(f"data.path: this algorithm needs {what} "
                          "(make lab pairs with `prefopt data make TASK --model DIR --out FILE`)")
    rows, stats, source = _load(cfg, d.path, d.split, schema)
    if d.eval_path or d.eval_split:
        ev, ev_stats, ev_source = _load(cfg, d.eval_path or d.path, d.eval_split if not d.eval_path else None, schema)
        stats["data/eval_bad_rows_skipped"] = ev_stats["data/bad_rows_skipped"]
        return rows, ev, stats, source, ev_source
    n_eval = min(d.eval_examples, len(rows) // 10)
    return rows[n_eval:], rows[:n_eval], stats, source, f"{source} (held-out slice)"


def _lengths(cfg: TrainConfig) -> dict:
    return dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)


def _prepare_tokenizer(cfg: TrainConfig, tokenizer) -> None:
    set_chat_template(tokenizer, cfg.data.chat_template)


def encode_pair_data(cfg: TrainConfig, tokenizer, transform=None) -> tuple[list, list, dict, list]:
    """Encoded train pairs (index 0..N-1) and eval pairs (index N..N+M-1), stats, and each
    pair's ``margin`` column value (None where absent), by index. ``transform(rows)`` may rewrite
    the validated rows first (e.g. add score columns)."""
    _prepare_tokenizer(cfg, tokenizer)
    train_rows, eval_rows, stats, src, ev_src = _rows(cfg, "pairwise")
    if transform is not None:
        train_rows, eval_rows = transform(train_rows), transform(eval_rows) if eval_rows else eval_rows
    tr, tr_stats = encode_pairwise(tokenizer, train_rows, source=src, **_lengths(cfg))
    ev, ev_stats = (encode_pairwise(tokenizer, eval_rows, start_index=len(tr), source=ev_src, **_lengths(cfg))
                    if eval_rows else ([], None))
    stats.update(tr_stats.metrics())
    stats["data/train_pairs"] = len(tr)
    stats["data/eval_pairs"] = len(ev)
    if ev_stats is not None:
        stats.update(ev_stats.metrics("data/eval_"))
    return tr, ev, stats, tr_stats.margins + (ev_stats.margins if ev_stats is not None else [])


# --------------------------------------------------------------------------- reference
def build_reference(cfg: TrainConfig, model, *, needs_reference: bool, loss_name: str, precompute=None,
                    make_reference=None):
    """(reference module or None, precomputed store or None, stats) per ``algo.reference``.

    ``precompute(model)`` returns the PrecomputedReference for 'precomputed'; ``make_reference(kind, model)``
    makes the module (default :func:`prefopt.models.reference.reference_module`; a recipe shares one).
    """
    from prefopt.models.reference import reference_module

    kind = cfg.algo.reference
    if not needs_reference:
        if kind != "none":
            warn_once(f"reference-free:{loss_name}:{kind}",
                      f"loss '{loss_name}' is reference-free: algo.reference '{kind}' is ignored "
                      "(set algo.reference: none to silence this)")
        return None, None, {}
    if kind == "none":
        raise ConfigError(f"algo.reference: loss '{loss_name}' needs a reference policy; set algo.reference to "
                          "copy, lora (with lora.enabled) or precomputed")
    if kind == "lora" and not is_peft(model):
        raise ConfigError("algo.reference: 'lora' uses the policy with its adapters disabled; set lora.enabled: true "
                          "(or use copy / precomputed)")
    if kind == "copy" and is_peft(model):
        warn_once("copy-with-lora", "algo.reference: 'copy' keeps a second full model next to a LoRA policy; "
                                    "'lora' (adapters disabled) or 'precomputed' saves that memory")
    if kind == "precomputed":
        from prefopt.train.precision import Precision, device_type_of
        with Precision(cfg.train.precision, device_type_of(model)).autocast():  # the policy forward's numerics
            store = precompute(model)
        return None, store, {"reference/precomputed_examples": len(store),
                             "reference/cache_hit": float(store.from_cache),
                             "reference/precompute_seconds": store.seconds}
    if make_reference is not None:
        return make_reference(kind, model), None, {}
    from prefopt.train.precision import copy_dtype
    return reference_module(kind, model, copy_dtype(cfg.train.precision)), None, {}


def resolve_loss(cfg: TrainConfig):
    """(loss_fn, hparams, display name) from algo.loss / algo.loss_weights / algo.loss_hparams."""
    from prefopt.losses import combine_losses, get_pairwise_loss, validate_hparams

    a = cfg.algo
    try:
        if a.loss_weights:
            hp = a.loss_hparams or {}
            stray = [k for k in hp if k not in a.loss_weights]
            if stray:
                raise ValueError(f"with loss_weights, loss_hparams is keyed by loss name ({', '.join(a.loss_weights)}); "
                                 f"got key(s) {', '.join(map(repr, stray))}")
            if a.loss != "dpo" and a.loss not in a.loss_weights:
                warn_once("loss-vs-weights", f"algo.loss '{a.loss}' is ignored: algo.loss_weights sets the losses")
            specs = [(name, float(w), hp.get(name) or {}) for name, w in a.loss_weights.items()]
            fn = combine_losses(specs)
            return fn, {}, fn.__name__
        if a.loss == "kto":
            raise ValueError("'kto' learns from unpaired feedback: set algo.name: kto (pairwise data is split "
                             "into desirable/undesirable examples automatically)")
        fn = get_pairwise_loss(a.loss)
        return fn, validate_hparams(a.loss, a.loss_hparams), a.loss
    except ValueError as exc:
        raise ConfigError(f"algo.loss: {exc}") from None


# --------------------------------------------------------------------------- builders
@register("sft")
def build_sft(cfg: TrainConfig, model, tokenizer, chosen_of_pairs: bool = False) -> tuple[Algorithm, dict]:
    """SFT on data.path rows (with ``chosen_of_pairs``: a pairs file's chosen responses) or the lab corpus."""
    from prefopt.train.algorithms.sft import SFT

    _prepare_tokenizer(cfg, tokenizer)
    stats: dict = {}
    if cfg.data.path:
        train_rows, eval_rows, stats, src, ev_src = _rows_sft(cfg, chosen_of_pairs)
    elif cfg.data.task:
        task = get_task(cfg.data.task, **cfg.data.task_options)
        to_rows = lambda pairs: [{"prompt": p, "completion": r} for p, r in pairs]  # noqa: E731
        train_rows = to_rows(task.sft_corpus(cfg.data.num_examples, seed=cfg.train.seed))
        eval_rows = to_rows(task.sft_corpus(cfg.data.eval_examples, seed=derive_seed(cfg.train.seed, TASK_CORPUS, 1)))
        src = ev_src = f"task {cfg.data.task}"
    else:
        raise ConfigError("data.path: SFT needs a data file (prompt, completion) or a lab task in data.task")
    tr, tr_stats = encode_sft(tokenizer, train_rows, source=src, **_lengths(cfg))
    ev, _ = encode_sft(tokenizer, eval_rows, source=ev_src, **_lengths(cfg)) if eval_rows else ([], None)
    stats.update(tr_stats.metrics())
    stats["data/train_examples"] = len(tr)
    return SFT(tr, ev, pad_id=tokenizer.pad_token_id, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
               shuffle=cfg.data.shuffle, padding_free=cfg.perf.padding_free), stats


def load_sft_rows(cfg: TrainConfig, path: str, split: str | None, chosen_of_pairs: bool = False):
    """(rows, stats, source) of SFT rows; with ``chosen_of_pairs`` a pairs file gives its chosen responses."""
    if chosen_of_pairs:
        first = apply_columns(read_records(path, fmt=cfg.data.format, split=split), cfg.data.columns,
                              cfg.data.score_columns).rows[:1]
        if first and detect_schema(first[0]) == "pairwise":
            rows, stats, source = _load(cfg, path, split, "pairwise")
            return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows], stats, source
    return _load(cfg, path, split, "sft")


def _rows_sft(cfg: TrainConfig, chosen_of_pairs: bool = False):
    d = cfg.data
    rows, stats, source = load_sft_rows(cfg, d.path, d.split, chosen_of_pairs)
    if d.eval_path or d.eval_split:
        ev, _, ev_source = load_sft_rows(cfg, d.eval_path or d.path, d.eval_split if not d.eval_path else None,
                                         chosen_of_pairs)
        return rows, ev, stats, source, ev_source
    n_eval = min(d.eval_examples, len(rows) // 10)
    return rows[n_eval:], rows[:n_eval], stats, source, f"{source} (held-out slice)"


@register("dpo")
def build_pairwise(cfg: TrainConfig, model, tokenizer, make_reference=None) -> tuple[Algorithm, dict]:
    """Any pairwise loss (``algo.loss``) or weighted combination (``algo.loss_weights``)."""
    from prefopt.models.reference import pair_reference_logps
    from prefopt.train.algorithms.preference import PairwisePreference, pair_logps

    pad = tokenizer.pad_token_id
    loss_fn, hparams, loss_name = resolve_loss(cfg)
    tr, ev, stats, _ = encode_pair_data(cfg, tokenizer)
    reference, store, ref_stats = build_reference(
        cfg, model, needs_reference=not getattr(loss_fn, "reference_free", False), loss_name=loss_name,
        precompute=lambda m: pair_reference_logps(m, tr + ev, pad, cfg.train.batch_size, pair_logps=functools.partial(
            pair_logps, prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free)),
        make_reference=make_reference)
    stats.update(ref_stats)
    algo = PairwisePreference(tr, ev, loss_fn=loss_fn, beta=cfg.algo.beta, hparams=hparams, pad_id=pad,
                              batch_size=cfg.train.batch_size, reference=reference, seed=cfg.train.seed,
                              shuffle=cfg.data.shuffle, ref_store=store, prefix_sharing=cfg.perf.prefix_sharing,
                              padding_free=cfg.perf.padding_free)
    algo.name = loss_name
    return algo, stats


@register("kto")
def build_kto(cfg: TrainConfig, model, tokenizer, make_reference=None) -> tuple[Algorithm, dict]:
    """KTO on (prompt, completion, label) rows, or on pairs split into desirable/undesirable."""
    from prefopt.models.reference import feedback_reference_logps
    from prefopt.train.algorithms.kto import KTO

    if cfg.algo.loss not in ("dpo", "kto"):
        warn_once("kto-loss", f"algo.loss '{cfg.algo.loss}' is ignored by algo.name: kto")
    hp = dict(cfg.algo.loss_hparams)
    unknown = sorted(set(hp) - {"desirable_weight", "undesirable_weight"})
    if unknown:
        raise ConfigError(f"algo.loss_hparams: kto got unknown hyper-parameter(s) {', '.join(map(repr, unknown))}; "
                          "it accepts: desirable_weight, undesirable_weight")
    if cfg.algo.loss_weights:
        raise ConfigError("algo.loss_weights: loss combinations apply to pairwise losses, not kto")
    _prepare_tokenizer(cfg, tokenizer)
    train_rows, eval_rows, stats, src, ev_src = _rows(cfg, "unpaired")
    tr, tr_stats = encode_unpaired(tokenizer, train_rows, seed=cfg.train.seed, source=src, **_lengths(cfg))
    ev_seed = derive_seed(cfg.train.seed, UNPAIRED_PARTNERS, 1)  # the eval split's own partner stream
    ev, _ = (encode_unpaired(tokenizer, eval_rows, start_index=len(tr), seed=ev_seed, source=ev_src, **_lengths(cfg))
             if len(eval_rows) >= 2 else ([], None))
    stats.update(tr_stats.metrics())
    n_desirable = sum(e.label for e in tr)
    n_undesirable = len(tr) - n_desirable
    stats.update({"data/train_examples": len(tr), "data/desirable": n_desirable, "data/undesirable": n_undesirable})
    dw, uw = float(hp.get("desirable_weight", 1.0)), float(hp.get("undesirable_weight", 1.0))
    if n_desirable and n_undesirable:
        ratio = (dw * n_desirable) / (uw * n_undesirable)
        if not 0.95 <= ratio <= 1.4:  # the paper's [1, 4/3], with room for a few dropped rows
            warn_once("kto-balance", f"kto: desirable_weight·n_desirable / (undesirable_weight·n_undesirable) = "
                                     f"{ratio:.2f}; the KTO paper recommends a ratio in [1, 4/3]")
    pad = tokenizer.pad_token_id
    reference, store, ref_stats = build_reference(
        cfg, model, needs_reference=True, loss_name="kto",
        precompute=lambda m: feedback_reference_logps(m, tr + ev, pad, cfg.train.batch_size),
        make_reference=make_reference)
    stats.update(ref_stats)
    algo = KTO(tr, ev, beta=cfg.algo.beta, pad_id=pad, batch_size=cfg.train.batch_size, reference=reference,
               ref_store=store, desirable_weight=dw, undesirable_weight=uw, seed=cfg.train.seed,
               shuffle=cfg.data.shuffle)
    return algo, stats


def _reward_meta(cfg: TrainConfig) -> dict:
    r = cfg.reward
    return {"objective": r.objective, "aggregation": r.aggregation, "uwo_lambda": r.uwo_lambda,
            "max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}


def build_reward_model_net(cfg: TrainConfig, tokenizer):
    """The model reward-model training optimizes: one, k heads, or k separate models."""
    from prefopt.models.lora import apply_freeze, apply_lora
    from prefopt.models.reward import build_reward_model

    r = cfg.reward
    if cfg.lora.enabled and r.ensemble_size > 1 and r.ensemble_kind == "models":
        raise ConfigError("lora.enabled: LoRA reward ensembles of separate models are not supported; use "
                          "reward.ensemble_kind: heads or full fine-tuning")
    if cfg.lora.quantize != "none":
        raise ConfigError("lora.quantize: quantized reward models are not supported")
    model = build_reward_model(cfg.model, tokenizer, ensemble_size=r.ensemble_size, kind=r.ensemble_kind,
                               seed=cfg.train.seed, meta=_reward_meta(cfg))
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, task_type="SEQ_CLS")
    return apply_freeze(model, cfg)


@register("reward_model", model_builder=build_reward_model_net)
def build_reward_model_algo(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    """Bradley-Terry reward model (or ensemble) on pairwise data; saved in HF format."""
    from prefopt.train.algorithms.reward_model import RewardModeling

    r = cfg.reward
    tr, ev, stats, margin_column = encode_pair_data(cfg, tokenizer)
    margins = None
    if any(m is not None for m in margin_column):
        margins = torch.tensor([m or 0.0 for m in margin_column], dtype=torch.float32)
    algo = RewardModeling(tr, ev, pad_id=tokenizer.pad_token_id, batch_size=cfg.train.batch_size,
                          ensemble_size=r.ensemble_size, kind=r.ensemble_kind, bootstrap=r.bootstrap,
                          margin=r.margin, margins=margins, aggregation=r.aggregation, uwo_lambda=r.uwo_lambda,
                          seed=cfg.train.seed, shuffle=cfg.data.shuffle)
    stats["reward/ensemble_size"] = r.ensemble_size
    return algo, stats
