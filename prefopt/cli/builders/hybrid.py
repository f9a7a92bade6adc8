"""Builders of the hybrid offline+online recipes: ``hypo``, ``drpo`` and the ``mix`` section that
adds a scheduled offline source to ``online_dpo`` and the policy-gradient presets."""
from __future__ import annotations

import functools

from prefopt.cli.builders import register
from prefopt.cli.builders.offline import (_load, _prepare_tokenizer, _rows, encode_pair_data, load_sft_rows,
                                          resolve_loss)
from prefopt.cli.builders.online import _experience_from, _max_prompt_length, _reference, _task
from prefopt.data.prepare import encode_pairwise, encode_sft
from prefopt.data.tokenize import collate_pairs, collate_sequences, encode_text
from prefopt.errors import ConfigError
from prefopt.seeding import MIX_OFFLINE, derive_seed
from prefopt.train.config import TrainConfig


def prompt_text(tokenizer, prompt) -> str:
    """A prompt as the policy sees it: a string as is, messages through the chat template."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _lengths(cfg: TrainConfig) -> dict:
    return dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)


# --------------------------------------------------------------------------- hypo
@register("hypo")
def build_hypo(cfg: TrainConfig, model, tokenizer):
    """Any pairwise loss on offline pairs + λ·E_{y~π}[log π - log π_ref] on fresh samples of the same prompts."""
    from prefopt.train.recipe import Part, Recipe
    from prefopt.train.sources.hybrid import FreshSampleSource
    from prefopt.train.sources.offline import DatasetSource
    from prefopt.train.terms.online_kl import OnlineKLTerm
    from prefopt.train.terms.preference import PairwiseTerm, evaluate_pairs

    if cfg.algo.reference not in ("copy", "lora"):
        raise ConfigError(f"algo.reference: hypo needs a reference policy for its online KL term (copy, or lora with "
                          f"lora.enabled), got '{cfg.algo.reference}'")
    h, pad, perf = cfg.hypo, tokenizer.pad_token_id, dict(prefix_sharing=cfg.perf.prefix_sharing,
                                                          padding_free=cfg.perf.padding_free)
    loss_fn, hparams, loss_name = resolve_loss(cfg)
    tr, ev, stats, _ = encode_pair_data(cfg, tokenizer)
    reference = _reference(cfg, model, True)
    rows, _, _, _, _ = _rows(cfg, "pairwise")
    exp = _experience_from(cfg, model, tokenizer, [prompt_text(tokenizer, r["prompt"]) for r in rows], [],
                           k=h.num_samples, reward=None, reference=reference, task=_task(cfg),
                           raw=[r["prompt"] for r in rows])
    pairs = DatasetSource(tr, lambda b: collate_pairs(b, pad), kind="pairs", batch_size=cfg.train.batch_size,
                          seed=cfg.train.seed, shuffle=cfg.data.shuffle)
    pairwise = PairwiseTerm(loss_fn, beta=cfg.algo.beta, hparams=hparams, pad_id=pad, reference=reference,
                            name=loss_name, **perf)
    fresh = FreshSampleSource(exp, reference=reference, k=h.num_samples, prompts_per_step=h.prompts_per_step, **perf)
    kl = OnlineKLTerm(pad_id=pad, **perf)
    recipe = Recipe([Part(pairs, [(pairwise, 1.0)]), Part(fresh, [(kl, h.kl_coef)])], name="hypo",
                    evaluate=functools.partial(evaluate_pairs, pairwise, ev, lambda b: collate_pairs(b, pad),
                                               cfg.train.batch_size))
    return recipe, {**stats, **exp.stats}


# --------------------------------------------------------------------------- drpo
def _reset_rows(cfg: TrainConfig) -> list[dict]:
    if not cfg.data.path:
        raise ConfigError("data.path: drpo resets from offline responses; give pairs (prompt, chosen, rejected) "
                          "or SFT rows (prompt, completion)")
    from prefopt.data.loaders import apply_columns, detect_schema, read_records
    records = apply_columns(read_records(cfg.data.path, fmt=cfg.data.format, split=cfg.data.split),
                            cfg.data.columns, cfg.data.score_columns)
    schema = {"chosen": "pairwise", "completion": "sft"}.get(cfg.reset.column) or (
        detect_schema(records.rows[0]) if records.rows else "pairwise")
    rows, _, _ = _load(cfg, cfg.data.path, cfg.data.split, "pairwise" if schema == "pairwise" else "sft")
    return rows


@register("drpo")
def build_drpo(cfg: TrainConfig, model, tokenizer, make_reference=None):
    """Dataset resets (DR-PO) under ppo (default), rloo or grpo."""
    import dataclasses

    from prefopt.cli.builders.online import policy_gradient_recipe
    from prefopt.train.sources.hybrid import DatasetReset, response_pool

    _prepare_tokenizer(cfg, tokenizer)
    prompts, responses = response_pool(_reset_rows(cfg), cfg.reset.column)
    pg_cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, name=cfg.reset.rl))
    limit = _max_prompt_length(cfg, model)

    def draw(exp):
        ids = [encode_text(tokenizer, r) for r in responses]
        keep = [i for i, p in enumerate(prompts) if encode_text(tokenizer, prompt_text(tokenizer, p))]
        return DatasetReset(exp, [ids[i] for i in keep], reset_prob=cfg.reset.reset_prob, seed=cfg.train.seed,
                            max_prompt_tokens=limit)

    return policy_gradient_recipe(pg_cfg, model, tokenizer, prompts=([prompt_text(tokenizer, p) for p in prompts],
                                                                      prompts), draw=draw, name="drpo",
                                  make_reference=make_reference)


# --------------------------------------------------------------------------- mixtures
def mixture_offline_source(cfg: TrainConfig, tokenizer, kind: str, path: str | None = None, key: str = "mix.path"):
    """The rows of ``path`` (default ``mix.path``) as a dataset source of ``kind`` ('pairs' or 'sequences');
    ``key`` names the setting in errors."""
    from prefopt.train.sources.offline import DatasetSource

    _prepare_tokenizer(cfg, tokenizer)
    path = path or cfg.mix.path
    pad = tokenizer.pad_token_id
    if kind == "pairs":
        rows, _, source = _load(cfg, path, None, "pairwise")
        enc, _ = encode_pairwise(tokenizer, rows, source=source, **_lengths(cfg))
        collate = lambda b: collate_pairs(b, pad)  # noqa: E731
    else:
        rows, _, source = load_sft_rows(cfg, path, None, chosen_of_pairs=True)
        enc, _ = encode_sft(tokenizer, rows, source=source, **_lengths(cfg))
        collate = lambda b: collate_sequences([(r.prompt_ids, r.response_ids) for r in b], pad)  # noqa: E731
    if not enc:
        raise ConfigError(f"{key}: the offline source of the mixture is empty ({source})")
    return DatasetSource(enc, collate, kind=kind, batch_size=cfg.train.batch_size,
                         seed=derive_seed(cfg.train.seed, MIX_OFFLINE),
                         shuffle=True)


def mixture_ratio(cfg: TrainConfig, m=None):
    """ρ(step) per ``m`` (anything with schedule, start, end, horizon; default the ``mix`` section)."""
    from prefopt.train.schedule import ratio_at
    m = m or cfg.mix
    end = m.start if m.end is None else m.end
    horizon = m.horizon or cfg.train.steps
    return lambda step: ratio_at(step, schedule=m.schedule, start=m.start, end=end, horizon=horizon)
