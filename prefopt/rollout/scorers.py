"""Scorers: turn (prompt, response) pairs into named rewards, safely.

A *scorer* is any callable ``scorer(prompts, responses) -> list[float] | dict[str, list[float]]``
(rows aligned with the inputs). Prompts come as given in the data: a string, or a list of
``{role, content}`` messages; responses are the decoded texts. Kinds, by config name:

- ``gold:OBJECTIVE`` / ``gold``: a lab task's gold reward (one objective / all of them); the task
  object is supplied by the caller (this module never imports the lab).
- ``module:function``: a Python reward function ``f(prompts, responses)``; with ``options`` the
  function is a *factory* called as ``function(**options)`` that returns the scorer.
- ``reward_model:PATH``: a trained reward model, loaded through ``prefopt.models.reward``; it
  renders conversations with its own tokenizer's chat template (option ``chat_template`` sets one).
- anything registered with :func:`register_scorer_kind`.

:class:`RewardFunction` wraps one scorer with error handling: a scorer that raises, returns the
wrong number of rows, a wrong type or non-finite values stops the step with a message naming the
scorer and the sample/prompt, or (``on_error="penalty"``) gives the bad samples a fixed penalty
and counts them. :class:`WeightedReward` combines several into the scalar that drives training,
keeping every named component for logging. Pairwise *judges* ``j(prompt, a, b) -> P(a ≻ b)`` are
wrapped the same way by :class:`Judge`; :func:`judge_from_reward` makes a Bradley-Terry judge
out of a scalar reward.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from prefopt.data.chat import has_chat_template, set_chat_template
import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.losses.scalarize import COMBINE_MODES, combine_weighted

Prompt = Union[str, list]  # a string, or a list of {role, content} messages
ScorerFn = Callable[[list[Prompt], list[str]], Any]
JudgeFn = Callable[[Prompt, str, str], float]



class RewardError(PrefoptError, RuntimeError):
    """A reward function or judge failed on some sample (raised, wrong length, non-finite)."""


# --------------------------------------------------------------------------- resolving names


def import_callable(spec: str, what: str = "reward function") -> Callable:
    """``package.module:attr.sub`` -> the object; errors name the spec and what was wrong."""
    if ":" not in spec:
        raise ConfigError(f"{what} '{spec}': expected 'module:function'")
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} '{spec}': cannot import module '{module_name}' ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} '{spec}': module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} '{spec}': '{attr}' is not callable")
    return obj


_KINDS: dict[str, Callable[..., ScorerFn]] = {}


def register_scorer_kind(prefix: str):
    """Register a factory ``(arg: str, **options) -> scorer`` for names ``prefix:arg``."""
    def deco(fn):
        _KINDS[prefix] = fn
        return fn
    return deco


@register_scorer_kind("reward_model")
def _reward_model(path: str, **options) -> ScorerFn:
    try:
        reward = importlib.import_module("prefopt.models.reward")
    except ImportError as exc:
        raise ConfigError(f"reward 'reward_model:{path}': prefopt.models.reward is not available ({exc})") from None
    template = options.pop("chat_template", None)
    for name in ("load_scorer", "load_reward_scorer", "load_reward_model"):
        loader = getattr(reward, name, None)
        if callable(loader):
            scorer = loader(path, **options)
            if template:
                if getattr(scorer, "tokenizer", None) is None:
                    raise ConfigError(f"reward 'reward_model:{path}': option chat_template needs a scorer with a "
                                      "tokenizer")
                set_chat_template(scorer.tokenizer, template)
            return _ConversationCheck(scorer, f"reward_model:{path}")
    raise ConfigError(f"reward 'reward_model:{path}': prefopt.models.reward has no scorer loader; "
                      "give the reward model as 'module:factory' with options {path: ...} instead")


class _ConversationCheck:
    """A reward model's scorer that refuses conversations up front when its tokenizer cannot render them."""

    def __init__(self, scorer, name: str):
        self.scorer, self.name = scorer, name

    def __call__(self, prompts: list[Prompt], responses: list[str]):
        tokenizer = getattr(self.scorer, "tokenizer", None)
        if tokenizer is not None and any(isinstance(p, list) for p in prompts) and not has_chat_template(tokenizer):
            raise ConfigError(f"reward '{self.name}': the prompts are conversations but the reward model's "
                              "tokenizer has no chat template; give the reward options {chat_template: simple} "
                              "(or a Jinja file or text)")
        return self.scorer(prompts, responses)


class GoldScorer:
    """A lab task's gold reward as a scorer (``objectives`` selects which ones to return)."""

    def __init__(self, task, objectives: Sequence[str] | None = None):
        known = tuple(getattr(task, "objectives", ()))
        for o in objectives or ():
            if o not in known:
                raise ConfigError(f"reward 'gold:{o}': task '{getattr(task, 'name', '?')}' has no objective "
                                  f"'{o}' (known: {', '.join(known)})")
        self.task = task
        self.objectives = tuple(objectives) if objectives else known

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> dict[str, list[float]]:
        gold = self.task.gold(prompts, responses)
        return {k: gold[k] for k in self.objectives}


def resolve_scorer(name: str, *, task=None, options: dict | None = None) -> tuple[ScorerFn, str]:
    """Build the scorer a config names; returns (scorer, default label for its components)."""
    options = dict(options or {})
    if name == "gold" or name.startswith("gold:"):
        if task is None:
            raise ConfigError(f"reward '{name}': gold rewards need a lab task (data.task)")
        objective = name.split(":", 1)[1] if ":" in name else None
        return GoldScorer(task, [objective] if objective else None), "gold"
    prefix, _, arg = name.partition(":")
    if prefix in _KINDS:
        if not arg:
            raise ConfigError(f"reward '{name}': expected '{prefix}:ARGUMENT'")
        return _KINDS[prefix](arg, **options), prefix
    fn = import_callable(name)
    if options:
        fn = fn(**options)
        if not callable(fn):
            raise ConfigError(f"reward '{name}': with options the function must be a factory returning a scorer")
    label = name.split(":", 1)[1].split(".")[-1]
    return fn, label


# --------------------------------------------------------------------------- safe calls


def _preview(prompt: Prompt) -> str:
    """A prompt in an error message: its text (a conversation: its last turn), shortened, quoted."""
    text = f"{prompt[-1].get('role')}: {prompt[-1].get('content')}" if isinstance(prompt, list) and prompt else prompt
    text = str(text)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _describe_row(i: int, prompts: list[Prompt], row_prompt: Sequence[int] | None) -> str:
    p = row_prompt[i] if row_prompt is not None else i
    return f"sample {i} (prompt {p}: {_preview(prompts[i])})"


def _as_float(x) -> float:
    if isinstance(x, bool):
        return float(x)
    if hasattr(x, "item") and callable(x.item):  # tensors / numpy scalars
        x = x.item()
    return float(x)


@dataclass
class ScoreResult:
    """Per-component rewards (one list per name) and the rows that got the penalty."""

    components: dict[str, list[float]]
    penalized: list[int] = field(default_factory=list)


class RewardFunction:
    """One scorer with validation. ``label`` prefixes its component names (``label/key``)."""

    def __init__(self, fn: ScorerFn, name: str, label: str, *, on_error: str = "error", penalty: float = -1.0):
        if on_error not in ("error", "penalty"):
            raise ConfigError(f"on_reward_error: got '{on_error}', expected 'error' or 'penalty'")
        if not math.isfinite(penalty):
            raise ConfigError(f"reward penalty must be finite, got {penalty}")
        self.fn, self.name, self.label = fn, name, label
        self.on_error, self.penalty = on_error, float(penalty)
        self.keys: tuple[str, ...] | None = None  # component keys, fixed by the first call

    def _fail(self, message: str) -> RewardError:
        return RewardError(f"reward '{self.name}': {message}")

    def _normalize(self, out, n: int) -> dict[str, list]:
        """Output -> {key: list of n raw values}; raises TypeError/ValueError on a bad shape."""
        if isinstance(out, dict):
            if not out:
                raise ValueError("returned an empty dict")
            items = {str(k): v for k, v in out.items()}
        else:
            items = {"": out}
        result = {}
        for k, v in items.items():
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
                raise TypeError(f"component {k!r} is a {type(v).__name__}, expected a list of {n} floats"
                                if k else f"returned a {type(v).__name__}, expected a list of {n} floats "
                                "or a dict of such lists")
            if len(v) != n:
                raise ValueError(f"returned {len(v)} values{f' for {k!r}' if k else ''} for {n} responses")
            result[k] = list(v)
        return result

    def component(self, key: str) -> str:
        return f"{self.label}/{key}" if key else self.label

    def __call__(self, prompts: list[Prompt], responses: list[str],
                 row_prompt: Sequence[int] | None = None) -> ScoreResult:
        n = len(prompts)
        try:
            out = self.fn(prompts, responses)
        except ConfigError:  # a setup problem (e.g. no chat template), not a failing sample
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of user code is reported, not crashed on
            # Find the failing sample(s) by scoring row by row.
            return self._finish(self._row_by_row(prompts, responses, row_prompt, exc), prompts, row_prompt)
        try:
            raw = self._normalize(out, n)
        except (TypeError, ValueError) as exc:
            if self.on_error == "error":
                raise self._fail(f"{exc}; expected one value per response (a list of {n} floats "
                                 "or a dict of such lists)") from None
            raw = self._row_by_row(prompts, responses, row_prompt, exc)
        return self._finish(raw, prompts, row_prompt)

    def _row_by_row(self, prompts, responses, row_prompt, batch_exc) -> dict[str, list]:
        rows: list[dict | None] = []
        for i in range(len(prompts)):
            try:
                rows.append({k: v[0] for k, v in self._normalize(self.fn([prompts[i]], [responses[i]]), 1).items()})
            except Exception as exc:  # noqa: BLE001
                if self.on_error == "error":
                    raise self._fail(f"{type(exc).__name__}: {exc} on {_describe_row(i, prompts, row_prompt)}") from exc
                rows.append(None)
        good = [r for r in rows if r is not None]
        if not good:
            if self.on_error == "error" or self.keys is None:
                raise self._fail(f"failed on every sample of the batch ({type(batch_exc).__name__}: {batch_exc})") \
                    from batch_exc
            keys = self.keys
        else:
            keys = tuple(good[0])
        if all(r is not None for r in rows):
            # Each row alone works: the batch call itself is broken (e.g. wrong length).
            if self.on_error == "error":
                raise self._fail(f"{type(batch_exc).__name__}: {batch_exc}") from batch_exc
        return {k: [r.get(k, math.nan) if r is not None else math.nan for r in rows] for k in keys}

    def _finish(self, raw: dict[str, list], prompts, row_prompt) -> ScoreResult:
        keys = tuple(raw)
        if self.keys is None:
            self.keys = keys
        elif keys != self.keys:
            raise self._fail(f"returned components {list(keys)}, earlier calls returned {list(self.keys)}")
        n = len(prompts)
        values = {k: [math.nan] * n for k in keys}
        bad: set[int] = set()
        for k, col in raw.items():
            for i, x in enumerate(col):
                try:
                    v = _as_float(x)
                except (TypeError, ValueError):
                    v = math.nan
                    if self.on_error == "error":
                        raise self._fail(f"returned a non-number {x!r}{f' for {k!r}' if k else ''} on "
                                         f"{_describe_row(i, prompts, row_prompt)}") from None
                if not math.isfinite(v):
                    if self.on_error == "error":
                        raise self._fail(f"returned a non-finite value {v}{f' for {k!r}' if k else ''} on "
                                         f"{_describe_row(i, prompts, row_prompt)}")
                    bad.add(i)
                    v = self.penalty
                values[k][i] = v
        return ScoreResult({self.component(k): v for k, v in values.items()}, sorted(bad))


# --------------------------------------------------------------------------- combining


@dataclass
class RewardOutput:
    """The scalar that drives training plus every named component (all lists of N floats)."""

    total: list[float]
    components: dict[str, list[float]]
    errors: int = 0  # samples that got the penalty


@dataclass
class WeightedFunction:
    """A reward function with its weight; ``weights`` (by component key) restricts and scales."""

    function: RewardFunction
    weight: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)

    def weight_of(self, key: str) -> float | None:
        """The weight of component ``key`` (its raw key, e.g. ``positivity``); None = logged only."""
        if not self.weights:
            return self.weight
        return self.weight * float(self.weights[key]) if key in self.weights else None


class WeightedReward:
    """Several reward functions → one scalar per sample, every named component kept.

    Each weighted component contributes ``w * r``; ``combine``: ``sum`` Σ w_i r_i; ``mean``
    Σ w_i r_i / Σ w_i; ``min`` min_i w_i r_i (worst-case ensemble, WCO); ``uwo``
    mean_i(w_i r_i) - λ var_i(w_i r_i) (uncertainty-weighted ensemble). A sample penalized by
    any function (``on_error="penalty"``) gets ``penalty`` as its total.
    """

    def __init__(self, functions: list[WeightedFunction], *, combine: str = "sum", uwo_lambda: float = 1.0,
                 penalty: float = -1.0):
        if not functions:
            raise ConfigError("online.reward: at least one reward function is needed")
        if combine not in COMBINE_MODES:
            raise ConfigError(f"online.reward_combine: got '{combine}', expected one of {', '.join(COMBINE_MODES)}")
        self.functions = functions
        self.combine, self.uwo_lambda, self.penalty = combine, float(uwo_lambda), float(penalty)

    def __call__(self, prompts: list[Prompt], responses: list[str],
                 row_prompt: Sequence[int] | None = None) -> RewardOutput:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        components: dict[str, list[float]] = {}
        weighted: list[tuple[float, list[float]]] = []
        penalized: set[int] = set()
        for wf in self.functions:
            rf = wf.function
            res = rf(prompts, responses, row_prompt)
            unknown = sorted(set(wf.weights) - set(rf.keys or ()))
            if unknown:
                raise ConfigError(f"online.reward '{rf.name}': weights name unknown component(s) {unknown} "
                                  f"(it returns: {', '.join(k or '<single value>' for k in rf.keys or ())})")
            for key in rf.keys or ():
                name = rf.component(key)
                if name in components:
                    raise ConfigError(f"online.reward: two reward functions produce the component '{name}'; "
                                      "give one of them a different label")
                components[name] = res.components[name]
                w = wf.weight_of(key)
                if w is not None:
                    weighted.append((w, components[name]))
            penalized.update(res.penalized)
        if not weighted:
            raise ConfigError("online.reward: no component has a weight, nothing would drive training")
        matrix = torch.tensor([col for _, col in weighted], dtype=torch.float64).T.reshape(len(prompts), -1)
        total = combine_weighted(matrix, [w for w, _ in weighted], self.combine, self.uwo_lambda).tolist()
        for i in penalized:
            total[i] = self.penalty
        return RewardOutput(total, components, len(penalized))


def build_reward(specs: Sequence[Any], *, task=None, on_error: str = "error", penalty: float = -1.0,
                 combine: str = "sum", uwo_lambda: float = 1.0) -> WeightedReward:
    """A :class:`WeightedReward` from config entries with fields name, weight, weights, label, options.

    Without ``weights`` every component of an entry gets ``weight``; with ``weights`` only the
    listed components (by key, e.g. ``positivity``) count, each with ``weight * weights[key]``.
    """
    functions = []
    for spec in specs:
        fn, default_label = resolve_scorer(spec.name, task=task, options=spec.options)
        rf = RewardFunction(fn, spec.name, spec.label or default_label, on_error=on_error, penalty=penalty)
        functions.append(WeightedFunction(rf, float(spec.weight), {str(k): float(v) for k, v in spec.weights.items()}))
    return WeightedReward(functions, combine=combine, uwo_lambda=uwo_lambda, penalty=penalty)


# --------------------------------------------------------------------------- judges


class Judge:
    """A pairwise judge ``j(prompt, a, b) -> P(a ≻ b)`` with validation (a value in [0, 1])."""

    def __init__(self, fn: JudgeFn, name: str, *, on_error: str = "error"):
        if on_error not in ("error", "penalty"):
            raise ConfigError(f"on_reward_error: got '{on_error}', expected 'error' or 'penalty'")
        self.fn, self.name, self.on_error = fn, name, on_error

    def __call__(self, prompts: list[Prompt], a: list[str], b: list[str]) -> tuple[list[float], int]:
        """P(a_i ≻ b_i) for each pair i; failed pairs (penalty mode) get NaN. Returns (probs, n_failed)."""
        out, failed = [], 0
        for i, (p, x, y) in enumerate(zip(prompts, a, b)):
            try:
                v = _as_float(self.fn(p, x, y))
                problem = None if math.isfinite(v) and 0.0 <= v <= 1.0 else f"returned {v}, expected a probability in [0, 1]"
            except Exception as exc:  # noqa: BLE001
                v, problem = math.nan, f"{type(exc).__name__}: {exc}"
            if problem is not None:
                if self.on_error == "error":
                    raise RewardError(f"judge '{self.name}': {problem} on pair {i} (prompt {_preview(p)})")
                v, failed = math.nan, failed + 1
            out.append(v)
        return out, failed


def judge_from_reward(reward: Callable[[list[Prompt], list[str]], list[float]], temperature: float = 1.0) -> JudgeFn:
    """Bradley-Terry judge from a scalar reward: P(a ≻ b) = σ((r(a) - r(b)) / temperature)."""
    def judge(prompt: Prompt, a: str, b: str) -> float:
        ra, rb = reward([prompt, prompt], [a, b])
        z = (ra - rb) / temperature
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
    return judge


def resolve_judge(name: str, *, options: dict | None = None, on_error: str = "error") -> Judge:
    """``module:function`` (or a factory with ``options``) as a validated :class:`Judge`."""
    fn = import_callable(name, "judge")
    if options:
        fn = fn(**options)
    return Judge(fn, name, on_error=on_error)
