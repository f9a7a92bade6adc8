"""Builders of the online algorithms: the policy-gradient family, online/iterative DPO and RAFT."""
from __future__ import annotations

import dataclasses

from prefopt.cli.builders import register
from prefopt.data.chat import set_chat_template
from prefopt.errors import ConfigError
from prefopt.tasks import get_task
from prefopt.train.algorithms.base import Algorithm
from prefopt.train.config import TrainConfig
from prefopt.train.online_config import RewardSpec
from prefopt.train.presets import PRESETS, names

PG_NAMES = names("policy_gradient")


def _prompt_rows(cfg: TrainConfig, tokenizer):
    """(train, held-out) PromptSets of data.path, read like offline data (formats, data.columns,
    conversations rendered with the chat template, data.on_bad_row)."""
    from prefopt.data.prompts import load_prompts

    d = cfg.data
    return load_prompts(d.path, tokenizer, eval_path=d.eval_path, fmt=d.format, split=d.split,
                        eval_split=d.eval_split, columns=d.columns, on_bad_row=d.on_bad_row,
                        eval_examples=d.eval_examples)


def _prompts(cfg: TrainConfig, task, tokenizer):
    """Training and held-out prompts (PromptSets): from data.path or the lab task; and their stats."""
    from prefopt.data.prompts import PromptSet

    set_chat_template(tokenizer, cfg.data.chat_template)
    if cfg.data.path:
        train, held_out = _prompt_rows(cfg, tokenizer)
    elif task is None:
        raise ConfigError("data.path: online training needs prompts, from a data file or dataset with a 'prompt' "
                          "column (text or {role, content} messages; see data.columns) or from a lab task (data.task)")
    else:
        train = PromptSet.from_prompts(task.prompts("train", cfg.online.num_prompts, seed=cfg.train.seed),
                                       source=f"task {task.name}")
        # the task derives each split's own stream from the one base seed
        held_out = PromptSet.from_prompts(task.prompts("eval", cfg.data.eval_examples, seed=cfg.train.seed),
                                          source=f"task {task.name}")
    stats = {"data/prompts_conversational": float(train.conversational),
             "data/bad_rows_skipped": float(train.skipped), "data/eval_bad_rows_skipped": float(held_out.skipped)}
    return train, held_out, stats


def _reward(cfg: TrainConfig, task, required: bool = True):
    from prefopt.rollout.scorers import build_reward

    specs = list(cfg.online.reward)
    if not specs:
        if task is None:
            if not required:
                return None
            raise ConfigError("online.reward: give a reward (e.g. [{name: 'mymodule:my_reward'}]) or a lab task "
                              "(data.task) whose gold reward is used by default")
        specs = [RewardSpec(name=f"gold:{task.default_objective}")]
    return build_reward(specs, task=task, on_error=cfg.online.on_reward_error, penalty=cfg.online.reward_penalty,
                        combine=cfg.online.reward_combine, uwo_lambda=cfg.online.uwo_lambda)


def _judge(cfg: TrainConfig, task=None):
    """online.judge: 'module:function', or a preference source (lab, bt:, pairwise_model:, hedge;
    see prefopt.cli.builders.selfplay) behind the same batched, validated interface."""
    if not cfg.online.judge:
        return None
    from prefopt.rollout.scorers import Judge, resolve_judge
    from prefopt.cli.builders.selfplay import is_preference_spec, preference_judge
    if is_preference_spec(cfg.online.judge):
        judge = preference_judge(cfg, task, cfg.online.judge, cfg.online.judge_options)
        return Judge(judge, judge.name, on_error=cfg.online.on_reward_error)
    return resolve_judge(cfg.online.judge, options=cfg.online.judge_options, on_error=cfg.online.on_reward_error)


def _with_lab_eval(algo, exp, task, model, judge):
    """A learning judge (Hedge) checkpointed and logged with the recipe; on a lab task with a gold
    judge (reviews_rps) evaluation adds exploitability and the win rate vs the initial policy."""
    from prefopt.cli.builders.selfplay import attach_judge, selfplay_evaluator
    if judge is not None:
        attach_judge(algo, judge.fn)
    algo._evaluate = selfplay_evaluator(exp, task, model)
    return algo


def _reference(cfg: TrainConfig, model, needed: bool, make=None):
    """The initial policy as reference per ``algo.reference`` (copy, or lora: adapters disabled).

    ``needed``: the loss uses it (else it only serves evaluation KL and may be absent);
    ``make(kind, model)`` makes the module (default ``reference_module``; a recipe shares one)."""
    from prefopt.models.reference import reference_module

    kind = cfg.algo.reference
    if kind == "precomputed":
        raise ConfigError("algo.reference: 'precomputed' works only for a fixed dataset; online samples are new "
                          "every step (use copy, or lora with lora.enabled)")
    if kind == "none":
        if needed:
            raise ConfigError(f"algo.reference: '{cfg.algo.name}' with these settings uses a reference policy "
                              "(KL penalty or a reference-based loss); set online.kl_coef: 0 / a reference-free "
                              "loss, or algo.reference: copy")
        return None
    if make is not None:
        return make(kind, model)
    from prefopt.train.precision import copy_dtype
    return reference_module(kind, model, copy_dtype(cfg.train.precision))


def _sampling(cfg: TrainConfig, k: int):
    if cfg.rollout.num_samples not in (1, k):
        raise ConfigError(f"rollout.num_samples: online algorithms take the number of samples per prompt from "
                          f"online.num_generations ({k}); set that instead of rollout.num_samples "
                          f"({cfg.rollout.num_samples})")
    return dataclasses.replace(cfg.rollout, num_samples=k)


def _max_prompt_length(cfg: TrainConfig, model) -> int:
    from prefopt.models.rollout_logps import model_context

    context = model_context(model)
    limit = cfg.data.max_prompt_length
    if context is not None:
        room = context - cfg.rollout.max_new_tokens
        if room < 1:
            raise ConfigError(f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens}) leaves no room for a prompt "
                              f"in the model's context of {context} tokens")
        limit = min(limit, room)
    return limit


def _experience(cfg: TrainConfig, model, tokenizer, *, k: int, reward, reference, task):
    train, held_out, stats = _prompts(cfg, task, tokenizer)
    exp = _experience_from(cfg, model, tokenizer, train.texts, held_out.texts, k=k, reward=reward,
                           reference=reference, task=task, raw=train.raw, raw_eval=held_out.raw)
    exp.stats.update(stats)
    return exp


def _experience_from(cfg: TrainConfig, model, tokenizer, train_prompts, eval_prompts, *, k: int, reward, reference,
                     task, raw=None, raw_eval=None):
    from prefopt.train.sources.experience import Experience

    return Experience(train_prompts, eval_prompts, tokenizer, _sampling(cfg, k), reward,
                      max_prompt_length=_max_prompt_length(cfg, model), seed=cfg.train.seed, task=task,
                      eval_num_samples=cfg.online.eval_num_samples, eval_greedy=cfg.online.eval_greedy,
                      reference=reference if cfg.online.eval_kl else None, raw_prompts=raw,
                      raw_eval_prompts=raw_eval, rollout_weights=_rollout_weights(cfg, model))


def _rollout_weights(cfg: TrainConfig, model):
    """The low-precision copy of the policy that rollouts sample with (``rollout.dtype``), or None."""
    from prefopt.cli.builders.offline import warn_once
    from prefopt.rollout.weights import LowPrecisionCopy, castable
    from prefopt.train.precision import rollout_copy_dtype

    dtype = rollout_copy_dtype(cfg.rollout.dtype, cfg.train.precision)
    if dtype is None:
        return None
    if not castable(model):
        if cfg.rollout.dtype != "auto":
            warn_once("rollout-dtype-uncastable", f"rollout.dtype {cfg.rollout.dtype}: the policy's weights are not "
                                                  "all float32 (low-precision or quantized); rollouts sample with "
                                                  "the policy itself")
        return None
    return LowPrecisionCopy(model, dtype)


def _task(cfg: TrainConfig):
    return get_task(cfg.data.task, **cfg.data.task_options) if cfg.data.task else None


def _stats(exp, extra: dict) -> dict:
    return {**exp.stats, **extra}


def build_policy_gradient(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    from prefopt.cli.builders.selfplay import hedge_reward_draw
    return policy_gradient_recipe(cfg, model, tokenizer, draw=hedge_reward_draw(cfg, _task(cfg)))


def policy_gradient_recipe(cfg: TrainConfig, model, tokenizer, *, prompts=None, draw=None, name=None,
                           make_reference=None, reward_required: bool = True):
    """The policy-gradient recipe of preset ``cfg.algo.name``; ``prompts`` = (texts, raw) replaces the
    configured prompts (no held-out split then), ``draw(experience)`` makes the rollout draw
    (dataset resets), and ``mix.path`` adds a scheduled offline source. ``reward_required``: False when
    the draw makes its own rewards (spo), so the configured reward is optional (logged when given)."""
    from prefopt.models.value import attach_value_head
    from prefopt.train.algorithms.online import PolicyGradient
    from prefopt.train.pg_settings import resolve_settings

    settings = resolve_settings(cfg.algo.name, cfg.online)
    task = _task(cfg)
    reward = _reward(cfg, task, required=reward_required)
    reference = (_reference(cfg, model, settings.kl_coef > 0, make_reference)
                 if settings.kl_coef > 0 or cfg.online.eval_kl else None)
    k = settings.num_generations
    if prompts is None:
        exp = _experience(cfg, model, tokenizer, k=k, reward=reward, reference=reference, task=task)
    else:
        exp = _experience_from(cfg, model, tokenizer, prompts[0], [], k=k, reward=reward, reference=reference,
                               task=task, raw=prompts[1])
    algo = PolicyGradient(name or cfg.algo.name, settings, exp, reference=reference,
                          max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.train.seed,
                          prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free,
                          draw=draw(exp) if draw is not None else None)
    if settings.value_head:
        attach_value_head(model, separate=cfg.online.critic == "separate")
        algo.attach(model)
    if cfg.mix.path:
        algo = _mixed(cfg, tokenizer, algo, budget=settings.prompts_per_step)
    return algo, _stats(exp, {"online/samples_per_rollout": float(settings.prompts_per_step * settings.num_generations)})


def _mixed(cfg: TrainConfig, tokenizer, algo, *, budget: int):
    """``algo`` (one source × its terms) with ``mix.path`` mixed in per ``mix.*``: offline pairs into the
    pairwise term (mix.term: pairwise) or an SFT term on offline responses (mix.term: sft)."""
    from prefopt.cli.builders.hybrid import mixture_offline_source, mixture_ratio
    from prefopt.train.recipe import Part, Recipe
    from prefopt.train.sources.hybrid import MixtureSource
    from prefopt.train.terms.preference import SFTTerm

    part = algo.parts[0]
    terms = list(part.terms)
    if cfg.mix.term == "pairwise":
        if "pairs" not in part.source.kinds:
            raise ConfigError(f"mix.term: 'pairwise' mixes offline pairs into a pairwise loss, but algo.name "
                              f"'{cfg.algo.name}' makes {', '.join(part.source.kinds)} batches; use mix.term: sft")
        offline = mixture_offline_source(cfg, tokenizer, "pairs")
    else:
        offline = mixture_offline_source(cfg, tokenizer, "sequences")
        terms.append((SFTTerm(pad_id=tokenizer.pad_token_id, padding_free=cfg.perf.padding_free,
                              name="offline_sft"), cfg.mix.weight))
    mixture = MixtureSource(part.source, offline, ratio=mixture_ratio(cfg), budget=budget)
    recipe = Recipe([Part(mixture, terms)], name=f"{algo.name}+mix", evaluate=algo.evaluate)
    recipe.extra_state.update(algo.extra_state)
    return recipe


for _name in PG_NAMES:
    register(_name)(build_policy_gradient)


def _pairwise_loss(cfg: TrainConfig):
    """Any pairwise loss (algo.loss) or weighted combination (algo.loss_weights), as offline DPO."""
    from prefopt.cli.builders.offline import resolve_loss
    fn, hparams, _ = resolve_loss(cfg)
    return fn, hparams


@register("online_dpo")
def build_online_dpo(cfg: TrainConfig, model, tokenizer, make_reference=None) -> tuple[Algorithm, dict]:
    from prefopt.train.algorithms.online_pref import OnlineDPO

    if cfg.online.num_generations not in (None, 2):
        raise ConfigError(f"online.num_generations: online_dpo samples exactly 2 responses per prompt "
                          f"(got {cfg.online.num_generations})")
    loss_fn, hparams = _pairwise_loss(cfg)
    task = _task(cfg)
    judge = _judge(cfg, task)
    reward = _reward(cfg, task, required=judge is None)
    needs_ref = not getattr(loss_fn, "reference_free", False)
    reference = _reference(cfg, model, needs_ref, make_reference) if needs_ref or cfg.online.eval_kl else None
    if cfg.mix.path and cfg.mix.term == "pairwise" and needs_ref and reference is None:
        raise ConfigError("algo.reference: offline pairs mixed into online_dpo need a reference model")
    exp = _experience(cfg, model, tokenizer, k=2, reward=reward, reference=reference, task=task)
    algo = OnlineDPO(exp, loss_fn=loss_fn, beta=cfg.algo.beta, hparams=hparams,
                     reference=reference if needs_ref else None, judge=judge,
                     prompts_per_step=cfg.online.prompts_per_step, max_resample=cfg.online.max_resample,
                     prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free)
    if cfg.mix.path:
        algo.term.reference = reference if needs_ref else None  # offline pairs get their reference pass here
        algo = _mixed(cfg, tokenizer, algo, budget=cfg.online.prompts_per_step)
    return _with_lab_eval(algo, exp, task, model, judge), exp.stats


def _rounds_kwargs(cfg: TrainConfig) -> dict:
    k = cfg.online.num_generations or PRESETS[cfg.algo.name].defaults["num_generations"]
    if k < 2:
        raise ConfigError(f"online.num_generations: {cfg.algo.name} ranks the samples of a prompt, it needs >= 2 (got {k})")
    return dict(num_generations=k, round_prompts=cfg.online.round_prompts, steps_per_round=cfg.online.steps_per_round,
                batch_size=cfg.train.batch_size, seed=cfg.train.seed)


@register("iterative_dpo")
def build_iterative_dpo(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    from prefopt.train.algorithms.online_pref import IterativeDPO

    loss_fn, hparams = _pairwise_loss(cfg)
    kw = _rounds_kwargs(cfg)
    task = _task(cfg)
    reward = _reward(cfg, task)
    reference = _reference(cfg, model, False) if cfg.online.eval_kl else None
    exp = _experience(cfg, model, tokenizer, k=kw["num_generations"], reward=reward, reference=reference, task=task)
    judge = _judge(cfg, task)
    algo = IterativeDPO(exp, loss_fn=loss_fn, beta=cfg.algo.beta, hparams=hparams, judge=judge,
                        prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free, **kw)
    return _with_lab_eval(algo, exp, task, model, judge), exp.stats


@register("raft")
def build_raft(cfg: TrainConfig, model, tokenizer) -> tuple[Algorithm, dict]:
    from prefopt.train.algorithms.online_pref import RAFT

    kw = _rounds_kwargs(cfg)
    task = _task(cfg)
    reward = _reward(cfg, task)
    reference = _reference(cfg, model, False) if cfg.online.eval_kl else None
    exp = _experience(cfg, model, tokenizer, k=kw["num_generations"], reward=reward, reference=reference, task=task)
    return RAFT(exp, **kw), exp.stats
