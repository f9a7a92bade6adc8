"""``algo.name: recipe``: the ``recipe`` section (:mod:`prefopt.train.recipe_config`) built into a
:class:`~prefopt.train.recipe.Recipe`.

Each source is made by the preset that owns it (``pairs`` by ``dpo``, ``feedback`` by ``kto``,
``sft`` by ``sft``, ``rollouts`` by the policy-gradient presets or ``drpo``, ``online_pairs`` by
``online_dpo``), with the config patched by the spec (its path, its ``rl`` preset, the first
matching term's loss settings), so a one-part recipe is its preset, number for number. That
preset's term serves the first term of its kind; further terms are made here. One reference
model serves every part.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from prefopt.cli.builders import register
from prefopt.errors import ConfigError
from prefopt.train.config import TrainConfig
from prefopt.train.recipe_config import TERMS, PartSpec, SourceSpec, TermSpec


@dataclass
class Built:
    """A built source: its stats, evaluation, the preset terms it made (by term index in the part),
    the source object making each batch kind (a mixture's inner sources) and extra checkpointed state."""

    source: Any
    stats: dict = field(default_factory=dict)
    evaluate: Callable | None = None
    terms: dict[int, Any] = field(default_factory=dict)
    producers: dict[str, Any] = field(default_factory=dict)
    extra_state: dict = field(default_factory=dict)


class Context:
    """What the parts share: config, model, tokenizer and one reference module per kind."""

    def __init__(self, cfg: TrainConfig, model, tokenizer):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.pad = tokenizer.pad_token_id
        self.perf = dict(prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free)
        self._references: dict[str, Any] = {}

    def make_reference(self, kind: str, model):
        from prefopt.models.reference import reference_module
        from prefopt.train.precision import copy_dtype
        if kind not in self._references:
            self._references[kind] = reference_module(kind, model, copy_dtype(self.cfg.train.precision))
        return self._references[kind]

    def reference(self, needed: bool):
        from prefopt.cli.builders.online import _reference
        return _reference(self.cfg, self.model, needed, self.make_reference)

    def patched(self, spec: SourceSpec, term: TermSpec | None = None, **algo) -> TrainConfig:
        """The config a preset sees for ``spec``: data.path := spec.path (its own held-out slice then),
        online.prompts_per_step := spec.prompts_per_step, algo loss settings := the term's."""
        cfg = self.cfg
        if spec.path:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=spec.path, eval_path=None))
        if spec.prompts_per_step:
            cfg = dataclasses.replace(cfg, online=dataclasses.replace(cfg.online, prompts_per_step=spec.prompts_per_step))
        if term is not None:
            for key in ("loss", "beta", "loss_hparams", "loss_weights"):
                if getattr(term, key, None) is not None:
                    algo.setdefault(key, getattr(term, key))
        return dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, **algo)) if algo else cfg


def _first(terms: list[TermSpec], name: str) -> int | None:
    return next((i for i, t in enumerate(terms) if t.name == name), None)


def _from_preset(algo, stats, index: int | None, *, kind: str) -> Built:
    terms = {index: algo.term} if index is not None else {}
    return Built(algo.source, stats, algo.evaluate, terms, {kind: algo.source}, dict(algo.extra_state))


# --------------------------------------------------------------------------- sources
def _pairs(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.offline import build_pairwise
    i = _first(terms, "pairwise")
    cfg = ctx.patched(spec, terms[i] if i is not None else None)
    algo, stats = build_pairwise(cfg, ctx.model, ctx.tokenizer, make_reference=ctx.make_reference)
    algo.term.name = algo.name
    return _from_preset(algo, stats, i, kind="pairs")


def _feedback(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.offline import build_kto
    i = _first(terms, "kto")
    t = terms[i] if i is not None else TermSpec(name="kto")
    hparams = {k: getattr(t, k) for k in ("desirable_weight", "undesirable_weight") if getattr(t, k) is not None}
    cfg = ctx.patched(spec, None, loss="kto", loss_hparams=hparams, loss_weights={},
                      **({"beta": t.beta} if t.beta is not None else {}))
    algo, stats = build_kto(cfg, ctx.model, ctx.tokenizer, make_reference=ctx.make_reference)
    return _from_preset(algo, stats, i, kind="feedback")


def _sft(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.offline import build_sft
    algo, stats = build_sft(ctx.patched(spec), ctx.model, ctx.tokenizer, chosen_of_pairs=True)
    return _from_preset(algo, stats, _first(terms, "sft"), kind="sequences")


def _rollouts(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.hybrid import build_drpo
    from prefopt.cli.builders.online import policy_gradient_recipe
    from prefopt.train.hybrid_config import ResetConfig

    rl = spec.rl or "grpo"
    if spec.reset_prob > 0:
        cfg = dataclasses.replace(ctx.patched(spec), reset=ResetConfig(reset_prob=spec.reset_prob,
                                                                       column=spec.reset_column, rl=rl))
        algo, stats = build_drpo(cfg, ctx.model, ctx.tokenizer, make_reference=ctx.make_reference)
    else:
        algo, stats = policy_gradient_recipe(ctx.patched(spec, name=rl), ctx.model, ctx.tokenizer,
                                             make_reference=ctx.make_reference)
    return _from_preset(algo, stats, _first(terms, "policy_gradient"), kind="rollout")


def _online_pairs(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.online import build_online_dpo
    i = _first(terms, "pairwise")
    cfg = ctx.patched(spec, terms[i] if i is not None else None)
    algo, stats = build_online_dpo(cfg, ctx.model, ctx.tokenizer, make_reference=ctx.make_reference)
    return _from_preset(algo, stats, i, kind="pairs")


def _samples(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.online import _experience, _task
    from prefopt.train.sources.hybrid import FreshSampleSource

    if ctx.cfg.algo.reference not in ("copy", "lora"):
        raise ConfigError(f"algo.reference: source 'samples' (the online KL term) needs a reference policy (copy, or "
                          f"lora with lora.enabled), got '{ctx.cfg.algo.reference}'")
    cfg, k = ctx.patched(spec), spec.num_samples or 4
    reference = ctx.reference(True)
    exp = _experience(cfg, ctx.model, ctx.tokenizer, k=k, reward=None, reference=reference, task=_task(cfg))
    source = FreshSampleSource(exp, reference=reference, k=k, prompts_per_step=spec.prompts_per_step or 4, **ctx.perf)
    return Built(source, dict(exp.stats), None, {}, {"samples": source})


def _mixture(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.hybrid import mixture_offline_source, mixture_ratio
    from prefopt.train.sources.hybrid import MixtureSource

    online = SOURCE_BUILDERS[spec.online.name](ctx, spec.online, terms)
    kind = spec.offline.kinds()[0]
    offline_cfg = ctx.patched(spec.offline)
    offline = mixture_offline_source(offline_cfg, ctx.tokenizer, kind, spec.offline.path or offline_cfg.data.path,
                                     key="recipe: mixture offline path")
    if kind == "pairs":  # offline pairs carry no reference log-probs: the shared pairwise term computes them
        for term in online.terms.values():
            if term.kind == "pairs" and term.reference is None and not term.reference_free:
                term.reference = ctx.reference(True)
    mixture = MixtureSource(online.source, offline, ratio=mixture_ratio(ctx.cfg, spec),
                            budget=online.source.prompts_per_step)
    return dataclasses.replace(online, source=mixture, producers={**online.producers, kind: offline})


def _reward_pairs(ctx: Context, spec: SourceSpec, terms: list[TermSpec]) -> Built:
    from prefopt.cli.builders.offline import build_reward_model_algo
    algo, stats = build_reward_model_algo(ctx.patched(spec), ctx.model, ctx.tokenizer)
    return _from_preset(algo, stats, _first(terms, "bradley_terry"), kind="reward_pairs")


SOURCE_BUILDERS: dict[str, Callable[[Context, SourceSpec, list[TermSpec]], Built]] = {
    "pairs": _pairs, "feedback": _feedback, "sft": _sft, "rollouts": _rollouts, "online_pairs": _online_pairs,
    "samples": _samples, "mixture": _mixture, "reward_pairs": _reward_pairs,
}


# --------------------------------------------------------------------------- terms (beyond the presets' own)
def _pairwise_term(ctx: Context, spec: TermSpec, built: Built):
    from prefopt.cli.builders.offline import resolve_loss
    from prefopt.train.terms.preference import PairwiseTerm

    loss_fn, hparams, loss_name = resolve_loss(ctx.patched(SourceSpec(), spec))
    reference = None if getattr(loss_fn, "reference_free", False) else ctx.reference(True)
    return PairwiseTerm(loss_fn, beta=spec.beta if spec.beta is not None else ctx.cfg.algo.beta, hparams=hparams,
                        pad_id=ctx.pad, reference=reference, name=loss_name, needs_reference_in_batch=True, **ctx.perf)


def _kto_term(ctx: Context, spec: TermSpec, built: Built):
    from prefopt.train.terms.preference import KTOTerm
    return KTOTerm(beta=spec.beta if spec.beta is not None else ctx.cfg.algo.beta, reference=ctx.reference(True),
                   desirable_weight=spec.desirable_weight or 1.0, undesirable_weight=spec.undesirable_weight or 1.0)


def _sft_term(ctx: Context, spec: TermSpec, built: Built):
    from prefopt.train.terms.preference import SFTTerm
    return SFTTerm(pad_id=ctx.pad, padding_free=ctx.cfg.perf.padding_free)


def _pg_term(ctx: Context, spec: TermSpec, built: Built):
    from prefopt.train.terms.policy_gradient import PolicyGradientTerm
    source = built.producers["rollout"]
    return PolicyGradientTerm(source.s, source, pad_id=ctx.pad, max_new_tokens=ctx.cfg.rollout.max_new_tokens,
                              name="policy_gradient", **ctx.perf)


def _online_kl_term(ctx: Context, spec: TermSpec, built: Built):
    from prefopt.train.terms.online_kl import OnlineKLTerm
    return OnlineKLTerm(pad_id=ctx.pad, **ctx.perf)


def _bradley_terry_term(ctx: Context, spec: TermSpec, built: Built):
    from prefopt.train.terms.reward import BradleyTerryTerm
    source = built.producers["reward_pairs"]
    return BradleyTerryTerm(pad_id=ctx.pad, margin=ctx.cfg.reward.margin, head_weights=source.head_weights)


TERM_BUILDERS: dict[str, Callable[[Context, TermSpec, Built], Any]] = {
    "pairwise": _pairwise_term, "kto": _kto_term, "sft": _sft_term, "policy_gradient": _pg_term,
    "online_kl": _online_kl_term, "bradley_terry": _bradley_terry_term,
}
assert set(TERM_BUILDERS) == set(TERMS), "every recipe term name needs a builder"


# --------------------------------------------------------------------------- the recipe
def _merged_evaluation(evaluations: dict[int, Callable]) -> Callable | None:
    """One ``model -> metrics`` over the parts' evaluations (by part index); a clashing key of a later
    part is prefixed ``part<i>/``."""
    if not evaluations:
        return None

    def evaluate(model) -> dict:
        out: dict = {}
        for i, fn in evaluations.items():
            for k, v in fn(model).items():
                out[k if k not in out else f"part{i}/{k}"] = v
        return out
    return evaluate


def recipe_model(cfg: TrainConfig, tokenizer):
    """The model a recipe trains: a reward model when its terms are reward-model terms, else the policy."""
    from prefopt.cli.builders.offline import build_reward_model_net
    from prefopt.models.lora import load_policy
    from prefopt.train.recipe_config import REWARD_TERMS

    if any(t.name in REWARD_TERMS for p in cfg.recipe for t in p.terms):
        return build_reward_model_net(cfg, tokenizer)
    return load_policy(cfg, tokenizer)


@register("recipe", model_builder=recipe_model)
def build_recipe(cfg: TrainConfig, model, tokenizer):
    """The parts of the ``recipe`` section, in order, on one shared reference."""
    from prefopt.train.recipe import Part, Recipe

    ctx = Context(cfg, model, tokenizer)
    parts, evaluations, stats, extra = [], {}, {}, {}
    for i, spec in enumerate(cfg.recipe):
        built, terms = _part(ctx, spec)
        parts.append(Part(built.source, terms))
        if built.evaluate is not None:
            evaluations[i] = built.evaluate
        stats.update(built.stats)
        extra.update(built.extra_state)
    recipe = Recipe(parts, name="recipe", evaluate=_merged_evaluation(evaluations))
    recipe.extra_state.update(extra)
    return recipe, stats


def _part(ctx: Context, spec: PartSpec) -> tuple[Built, list]:
    """The part's built source and its (term, weight) list: the preset's own terms, the rest made here."""
    built = SOURCE_BUILDERS[spec.source.name](ctx, spec.source, spec.terms)
    terms = [(built.terms[i] if i in built.terms else TERM_BUILDERS[t.name](ctx, t, built), t.weight)
             for i, t in enumerate(spec.terms)]
    return built, terms
