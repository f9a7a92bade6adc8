"""Builders of the multi-objective presets: ``modpo`` (DPO with the other objectives' rewards as
margins) and ``ric`` (rewards-in-context SFT).

MODPO margins are computed once, before training (scorers and the other policies are fixed):
``scores:OBJ`` reads a score column, a scorer name scores the text rows
(:func:`prefopt.objectives.margins.add_scorer_columns`), ``implicit:PATH`` computes
β·log π_PATH/π_ref over the encoded pairs (:func:`implicit_reward_columns`), π_ref being the
starting policy. Every pair must carry every margin; a missing one is named before any step.
"""
from __future__ import annotations

import functools

from prefopt.cli.builders import register
from prefopt.cli.builders.offline import _rows, _rows_sft, build_reference, encode_pair_data, warn_once
from prefopt.data.chat import set_chat_template
from prefopt.data.loaders import detect_schema, read_records
from prefopt.data.prepare import encode_sft
from prefopt.errors import ConfigError, DataError
from prefopt.tasks import get_task
from prefopt.train.config import TrainConfig

RIC_CONFIG_KEY = "prefopt_ric"  # model.config attribute holding the RiC score statistics (saved with the model)


# --------------------------------------------------------------------------- MODPO
def margin_column(spec: str) -> str:
    """The score column a margin spec is read from (``scores:OBJ`` reads OBJ; others get their own)."""
    return spec.split(":", 1)[1] if spec.startswith("scores:") else spec


def _scorer_transform(cfg: TrainConfig, specs: list[str], batch_size: int = 64):
    """rows -> rows with a score column ``spec`` per scorer margin spec (None when every spec is a
    column or an implicit reward). ``gold:OBJ`` picks OBJ; other scorers must return one reward."""
    from prefopt.objectives.margins import scorer_margins
    from prefopt.rollout.scorers import resolve_scorer

    scorer_specs = [s for s in specs if not s.startswith(("scores:", "implicit:"))]
    if not scorer_specs:
        return None
    task = get_task(cfg.data.task, **cfg.data.task_options) if cfg.data.task else None
    scorers = {s: resolve_scorer(s, task=task, options=cfg.modpo.margin_options.get(s))[0] for s in scorer_specs}

    def transform(rows: list[dict]) -> list[dict]:
        out = [dict(r, scores=dict(r.get("scores") or {})) for r in rows]
        for spec, scorer in scorers.items():
            objective = spec.split(":", 1)[1] if spec.startswith("gold:") else None
            for start in range(0, len(out), batch_size):
                part = out[start:start + batch_size]
                chosen, rejected = scorer_margins(scorer, [r["prompt"] for r in part], [r["chosen"] for r in part],
                                                  [r["rejected"] for r in part], objective, label=spec)
                for r, c, j in zip(part, chosen.tolist(), rejected.tolist()):
                    r["scores"][spec] = [c, j]
        return out
    return transform


def _implicit_columns(cfg: TrainConfig, model, tokenizer, pairs: list, specs: list[str]) -> list:
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.objectives.margins import implicit_reward_columns

    beta = cfg.modpo.implicit_beta if cfg.modpo.implicit_beta is not None else cfg.algo.beta
    for spec in (s for s in specs if s.startswith("implicit:")):
        path = spec.split(":", 1)[1]
        other = load_model(ModelConfig(name_or_path=path, dtype=cfg.model.dtype), tokenizer)
        # pi_ref is the starting policy: ``model`` before any step
        pairs = implicit_reward_columns(other, model, pairs, beta, spec, tokenizer.pad_token_id)
        del other
    return pairs


def check_margin_columns(pairs: list, columns: list[str], source: str) -> None:
    """Every pair carries every margin column (chosen and rejected, finite): else name the first gap."""
    for pair in pairs:
        for column in columns:
            values = pair.scores.get(column)
            if values is None or any(v != v for v in values):
                have = ", ".join(sorted(pair.scores)) or "none"
                raise DataError(f"{source}: pair {pair.index}: no '{column}' margin for modpo.margins "
                                f"(its score columns: {have})")


@register("modpo")
def build_modpo(cfg: TrainConfig, model, tokenizer):
    """MODPO on pairs labelled by objective 0, margins of objectives 1..K per ``modpo.margins``."""
    from prefopt.losses.modpo import check_modpo_weights
    from prefopt.models.reference import pair_reference_logps
    from prefopt.train.algorithms.preference import PairwisePreference, pair_logps
    from prefopt.train.terms.modpo import ModpoTerm

    m = cfg.modpo
    check_modpo_weights(m.weights, key="modpo.weights")
    if len(m.margins) != len(m.weights) - 1:
        raise ConfigError(f"modpo.margins: got {len(m.margins)} margin source(s) for {len(m.weights)} weights; "
                          f"expected one per margin weight ({len(m.weights) - 1})")
    if cfg.algo.loss != "dpo" or cfg.algo.loss_weights:
        warn_once("modpo-loss", "algo.loss / algo.loss_weights are ignored by algo.name: modpo (modpo.loss_type)")
    tr, ev, stats, _ = encode_pair_data(cfg, tokenizer, transform=_scorer_transform(cfg, m.margins))
    if any(s.startswith("implicit:") for s in m.margins):
        both = _implicit_columns(cfg, model, tokenizer, tr + ev, m.margins)
        tr, ev = both[:len(tr)], both[len(tr):]
    columns = [margin_column(s) for s in m.margins]
    check_margin_columns(tr + ev, columns, cfg.data.path)
    pad = tokenizer.pad_token_id
    reference, store, ref_stats = build_reference(
        cfg, model, needs_reference=True, loss_name="modpo",
        precompute=lambda mdl: pair_reference_logps(mdl, tr + ev, pad, cfg.train.batch_size, pair_logps=functools.partial(
            pair_logps, prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free)))
    stats.update(ref_stats)
    algo = PairwisePreference(tr, ev, loss_fn=lambda *a, **k: None, beta=cfg.algo.beta, hparams={}, pad_id=pad,
                              batch_size=cfg.train.batch_size, reference=reference, seed=cfg.train.seed,
                              shuffle=cfg.data.shuffle, ref_store=store, prefix_sharing=cfg.perf.prefix_sharing,
                              padding_free=cfg.perf.padding_free)
    term = ModpoTerm(weights=m.weights, columns=columns, scales=m.margin_scales, loss_type=m.loss_type, beta=cfg.algo.beta, pad_id=pad,
                     reference=reference, prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free,
                     needs_reference_in_batch=store is not None)
    algo.term, algo.parts[0].terms[0] = term, (term, 1.0)
    algo.name = "modpo"
    return algo, stats


# --------------------------------------------------------------------------- rewards-in-context
def ric_objectives(cfg: TrainConfig) -> list[str]:
    if cfg.ric.objectives:
        return list(cfg.ric.objectives)
    if not cfg.data.task:
        raise ConfigError("ric.objectives: name the score columns to condition on (or set data.task to use all "
                          "of its gold objectives)")
    return list(get_task(cfg.data.task, **cfg.data.task_options).objectives)


def _score_rows(cfg: TrainConfig):
    """(train rows, eval rows, stats, sources) of data.path: pairwise or SFT rows, with scores."""
    if not cfg.data.path:
        raise ConfigError("data.path: ric needs score-labelled rows (pairs with scores, e.g. from "
                          "`prefopt data make`, or SFT rows with a scores column)")
    first = read_records(cfg.data.path, fmt=cfg.data.format, split=cfg.data.split).rows[:1]
    if first and detect_schema(first[0]) == "pairwise":
        return _rows(cfg, "pairwise")
    return _rows_sft(cfg)


@register("ric")
def build_ric(cfg: TrainConfig, model, tokenizer):
    """SFT on ``ric_sft_rows``: each response after its prompt conditioned on the response's own
    normalized scores. The score statistics travel with the model (``config.prefopt_ric``); a RiC
    model trained further keeps its own."""
    from prefopt.objectives.ric import ric_sft_rows, score_stats
    from prefopt.train.algorithms.sft import SFT

    objectives = ric_objectives(cfg)
    set_chat_template(tokenizer, cfg.data.chat_template)
    train_rows, eval_rows, stats, src, ev_src = _score_rows(cfg)
    if getattr(getattr(model, "config", None), RIC_CONFIG_KEY, None) is not None:
        # continuing a RiC model (online rounds): keep its normalization, so targets keep their meaning
        score_table = load_ric_stats(model, cfg.model.name_or_path)
        if list(score_table.objectives) != objectives:
            raise ConfigError(f"ric.objectives: {objectives}, but the model {cfg.model.name_or_path} was conditioned "
                              f"on {list(score_table.objectives)}")
    else:
        score_table = score_stats(train_rows, objectives)
    lengths = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
    split = cfg.ric.response_split
    tr, tr_stats = encode_sft(tokenizer, ric_sft_rows(train_rows, score_table, response_split=split), source=src,
                              **lengths)
    ev, _ = (encode_sft(tokenizer, ric_sft_rows(eval_rows, score_table, response_split=split), source=ev_src,
                        **lengths) if eval_rows else ([], None))
    stats.update(tr_stats.metrics())
    stats["data/train_examples"] = len(tr)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, RIC_CONFIG_KEY, score_table.to_dict())
    algo = SFT(tr, ev, pad_id=tokenizer.pad_token_id, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
               shuffle=cfg.data.shuffle, padding_free=cfg.perf.padding_free)
    algo.name = "ric"
    return algo, stats


def load_ric_stats(model, source: str = "model"):
    """The :class:`ScoreStats` a RiC-trained model carries in its config."""
    from prefopt.objectives.ric import ScoreStats

    data = getattr(getattr(model, "config", None), RIC_CONFIG_KEY, None)
    if data is None:
        raise ConfigError(f"{source}: not a rewards-in-context model (no config.{RIC_CONFIG_KEY}); train it with "
                          "algo.name: ric")
    return ScoreStats.from_dict(data, f"{source} config.{RIC_CONFIG_KEY}")

