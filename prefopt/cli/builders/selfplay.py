"""Builders of the self-play / Nash presets (docs/selfplay.md) and the preference sources they and
online_dpo / iterative_dpo read (``selfplay.judge`` / ``online.judge``: lab, bt:, pairwise_model:,
module:function, hedge)."""
from __future__ import annotations

import dataclasses

from prefopt.cli.builders import register
from prefopt.cli.builders.online import (_experience, _reference, _reward, _rounds_kwargs, _task,
                                         policy_gradient_recipe)
from prefopt.errors import ConfigError
from prefopt.train.config import TrainConfig
from prefopt.train.presets import PRESETS, names

# online.judge values resolved here rather than as 'module:function'
PREFERENCE_PREFIXES = ("bt:", "pairwise_model:")


def is_preference_spec(spec: str) -> bool:
    from prefopt.rollout.preferences import LAB_JUDGES
    return spec in LAB_JUDGES or spec == "hedge" or spec.startswith(PREFERENCE_PREFIXES)


def preference_judge(cfg: TrainConfig, task, spec: str | None = None, options: dict | None = None):
    """The judge ``spec`` names (default ``selfplay.judge``) as a validated NamedJudge; ``hedge`` is a
    :class:`~prefopt.objectives.hedge.HedgeLabeller` over ``hedge.judges`` (gold: ``hedge.gold``)."""
    from prefopt.rollout.preferences import build_judge

    spec = cfg.selfplay.judge if spec is None else spec
    options = cfg.selfplay.judge_options if options is None else options
    if spec != "hedge":
        return build_judge(spec, task=task, options=options)
    from prefopt.objectives.hedge import Hedge, HedgeLabeller

    h = cfg.hedge
    if len(h.judges) < 2:
        raise ConfigError(f"hedge.judges: a Hedge ensemble needs at least 2 experts, got {h.judges}")
    if "hedge" in h.judges or h.gold == "hedge":
        raise ConfigError("hedge.judges: an expert (or hedge.gold) cannot itself be 'hedge'")
    unknown = sorted(set(h.judge_options) - set(h.judges))
    if unknown:
        raise ConfigError(f"hedge.judge_options: {unknown} are not in hedge.judges {h.judges}")
    experts = [build_judge(j, task=task, options=h.judge_options.get(j)) for j in h.judges]
    hedge = Hedge([e.name for e in experts], eta=h.eta, horizon=h.horizon)
    return HedgeLabeller(experts, build_judge(h.gold, task=task), hedge, feedback=h.feedback, loss=h.loss,
                         seed=cfg.train.seed)


def hedge_reward_draw(cfg: TrainConfig, task):
    """``hedge.scorers`` set: the rollout draw (exp -> HedgeRewardDraw) of a policy-gradient preset."""
    if not cfg.hedge.scorers:
        return None
    from prefopt.objectives.hedge import Hedge, HedgeReward
    from prefopt.rollout.preferences import build_judge
    from prefopt.rollout.scorers import resolve_scorer
    from prefopt.train.sources.selfplay import HedgeRewardDraw

    h = cfg.hedge
    scorers = [resolve_scorer(name, task=task)[0] for name in h.scorers]
    combiner = HedgeReward(scorers, Hedge(list(h.scorers), eta=h.eta, horizon=h.horizon), temperature=h.temperature,
                           loss=h.loss)
    gold = build_judge(h.gold, task=task)
    return lambda exp: HedgeRewardDraw(exp, combiner, gold, feedback=h.feedback, seed=cfg.train.seed)


def attach_judge(recipe, judge) -> None:
    """A learning judge (Hedge) is checkpointed with the recipe and logs its weights and regret."""
    if hasattr(judge, "metrics") and hasattr(judge, "state_dict"):
        recipe.extra_state["hedge"] = judge
        recipe.metric_sources.append(judge)


def selfplay_evaluator(exp, task, model):
    """``exp.evaluate`` plus, on a lab task with a gold judge, the held-out samples' exact
    exploitability and style shares and their gold win rate against the initial policy's samples
    (drawn now, with the same evaluation seeds)."""
    from prefopt.rollout.preferences import lab_judge, win_rate
    from prefopt.train.sources.selfplay import lab_metrics

    if task is None or not hasattr(task, "judge") or not exp.eval_prompts:
        return exp.evaluate
    gold = lab_judge(task)
    idx = list(range(len(exp.eval_prompts)))
    n = exp.eval_num_samples
    initial = exp.sample(model, idx, n, eval_split=True).responses

    def evaluate(m) -> dict[str, float]:
        out = exp.evaluate(m)
        s = exp.sample(m, idx, n, eval_split=True)
        w = win_rate(gold, list(exp.raw_eval_prompts), s.responses, initial)
        out.update({"lab/win_rate_vs_init": w.mean, "lab/win_rate_vs_init_stderr": w.stderr})
        out.update(lab_metrics(task, s))
        m.train()
        return out
    return evaluate


def _perf(cfg: TrainConfig) -> dict:
    return dict(prefix_sharing=cfg.perf.prefix_sharing, padding_free=cfg.perf.padding_free)


def build_rounds(cfg: TrainConfig, model, tokenizer):
    """sppo / inpo / dno / selm: rounds of K samples → win-rate matrix → pairs → steps_per_round steps."""
    from prefopt.train.recipe import Part, Recipe
    from prefopt.train.sources.online_pairs import RoundsSource
    from prefopt.train.sources.selfplay import SelfPlayRows, collate_rows, copy_row
    from prefopt.train.terms.selfplay import SelfPlayTerm

    method, sp = cfg.algo.name, cfg.selfplay
    kw = _rounds_kwargs(cfg)
    task = _task(cfg)
    judge = preference_judge(cfg, task)
    reference = _reference(cfg, model, method == "inpo") if method == "inpo" or cfg.online.eval_kl else None
    exp = _experience(cfg, model, tokenizer, k=kw["num_generations"], reward=_reward(cfg, task, required=False),
                      reference=reference if cfg.online.eval_kl else None, task=task)
    pad = exp.pad_id
    rows = SelfPlayRows(method, exp, judge, k=kw["num_generations"], batch_size=cfg.train.batch_size,
                        perf=_perf(cfg), both_orders=sp.both_orders, reference=reference, margin=sp.margin,
                        pairs_per_prompt=sp.pairs_per_prompt, task=task)
    source = RoundsSource(exp, kind="selfplay", make_rows=rows, collate=lambda r: collate_rows(r, pad),
                          to_plain=copy_row, from_plain=copy_row, **kw)
    term = SelfPlayTerm(method, beta=cfg.algo.beta, pad_id=pad, eta=sp.eta, rho=sp.rho, alpha=sp.alpha,
                        throughput=source.throughput, **_perf(cfg))
    recipe = Recipe([Part(source, [(term, 1.0)])], name=method, evaluate=selfplay_evaluator(exp, task, model))
    attach_judge(recipe, judge)
    return recipe, exp.stats


def build_egpo(cfg: TrainConfig, model, tokenizer):
    """online_ipo / egpo: fresh mixture pairs every step; egpo adds the extragradient step hook."""
    from prefopt.train.extragradient import ExtragradientHook
    from prefopt.train.recipe import Part, Recipe
    from prefopt.train.sources.selfplay import MixturePairSource
    from prefopt.train.terms.selfplay import SelfPlayTerm

    sp = cfg.selfplay
    task = _task(cfg)
    judge = preference_judge(cfg, task)
    reference = _reference(cfg, model, True)
    exp = _experience(cfg, model, tokenizer, k=2, reward=_reward(cfg, task, required=False),
                      reference=reference if cfg.online.eval_kl else None, task=task)
    source = MixturePairSource(exp, judge, reference=reference, mixture_coef=sp.mixture_coef,
                               num_opponents=sp.num_opponents, prompts_per_step=cfg.online.prompts_per_step,
                               batch_size=cfg.train.batch_size, perf=_perf(cfg), both_orders=sp.both_orders,
                               task=task)
    term = SelfPlayTerm("online_ipo", beta=cfg.algo.beta, pad_id=exp.pad_id,
                        normalize_logprobs=sp.normalize_logprobs, throughput=source.throughput, **_perf(cfg))
    recipe = Recipe([Part(source, [(term, 1.0)])], name=cfg.algo.name,
                    evaluate=selfplay_evaluator(exp, task, model))
    extragradient = sp.extragradient if sp.extragradient is not None else \
        PRESETS[cfg.algo.name].defaults["extragradient"]
    if extragradient:
        recipe.step_hook = ExtragradientHook()
    attach_judge(recipe, judge)
    return recipe, exp.stats


@register("spo")
def build_spo(cfg: TrainConfig, model, tokenizer):
    """SPO: the ``selfplay.pg`` policy-gradient preset with win proportions as rewards."""
    from prefopt.train.sources.selfplay import SPODraw

    pg_cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, name=cfg.selfplay.pg))
    k = cfg.online.num_generations or PRESETS[cfg.selfplay.pg].defaults["num_generations"]
    if k < 2:
        raise ConfigError(f"online.num_generations: spo's win proportions compare the samples of a prompt, it "
                          f"needs >= 2 (got {k})")
    task = _task(cfg)
    judge = preference_judge(cfg, task)
    algo, stats = policy_gradient_recipe(
        pg_cfg, model, tokenizer, name="spo", reward_required=False,
        draw=lambda exp: SPODraw(exp, judge, both_orders=cfg.selfplay.both_orders, task=task))
    algo._evaluate = selfplay_evaluator(algo.exp, task, model)
    attach_judge(algo, judge)
    return algo, stats


for _name in names("selfplay"):
    register(_name)(build_rounds)
for _name in names("egpo"):
    register(_name)(build_egpo)
