"""Preference sources: pairwise judges P(a ≻ b) and the win-rate statistics built from them.

A *judge* answers ``judge(prompt, a, b) -> P(a ≻ b)`` in [0, 1]. Sources, by config name
(:func:`build_judge`):

- ``lab``: the lab task's gold pairwise judge (a task with a ``judge`` method, e.g. ``reviews_rps``);
  ``lab:noisy`` = (1 − ν)·P_gold + ν·U with U a uniform fixed per (prompt, a, b) by a hash (option
  ``noise`` ν, default 0.5), ``lab:adversarial`` = 1 − P_gold: the weak experts of a Hedge ensemble.
- ``bt:SCORER``: a Bradley-Terry judge σ((r(a) − r(b)) / temperature) over any scorer name that
  :func:`prefopt.rollout.scorers.resolve_scorer` knows (``bt:gold:informativeness``,
  ``bt:reward_model:PATH``, ``bt:module:function``); option ``temperature`` (default 1).
- ``pairwise_model:PATH``: a *pairwise* preference model, i.e. a reward model trained (with the
  ordinary reward-model code) on pair texts: the "response" of a row is ``pair_text(a, b)`` =
  ``" [A]" + a + " [B]" + b`` and each preference pair (y_w, y_l) becomes the reward-model pair
  (chosen = pair_text(y_w, y_l), rejected = pair_text(y_l, y_w)) (:func:`pairwise_model_rows`).
  The Bradley-Terry loss on those rows is −log σ(s(y_w, y_l) − s(y_l, y_w)), so the judge is
  P(a ≻ b) = σ(s(x, a, b) − s(x, b, a)): antisymmetric by construction (P(a ≻ b) + P(b ≻ a) = 1,
  P(a ≻ a) = ½) and, unlike a scalar reward, able to represent intransitive preferences.
- ``module:function``: a Python judge function (with ``options``, a factory returning one).

Every value is checked: an exception, NaN or a value outside [0, 1] stops with a
:class:`~prefopt.rollout.scorers.RewardError` naming the judge, the prompt and the pair.
:func:`win_rate_matrix` gives the (P, K, K) matrix over the K samples of each prompt once per batch
(½ on the diagonal) that SPPO, SPO and DNO read; :func:`win_rate` and :func:`exploitability`
compare policies through their samples.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.rollout.scorers import RewardError, import_callable, judge_from_reward, resolve_scorer

JudgeFn = Callable[[str, str, str], float]
LAB_JUDGES = ("lab", "lab:noisy", "lab:adversarial")


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _groups(prompts: Sequence[str], responses: Sequence[str], what: str, min_k: int = 1) -> int:
    """Samples per prompt of a flat layout (rows p*K .. p*K+K-1 belong to prompt p)."""
    if not prompts:
        raise ValueError(f"{what}: no prompts")
    k, rest = divmod(len(responses), len(prompts))
    if rest:
        raise ValueError(f"{what}: {len(responses)} responses for {len(prompts)} prompts; "
                         "expected the same number of samples for every prompt")
    if k < min_k:
        raise ValueError(f"{what}: win rates need at least {min_k} samples per prompt, got {k} "
                         f"({len(prompts)} prompts, {len(responses)} responses)")
    return k


class NamedJudge:
    """A judge function with a name; every value it returns is validated."""

    def __init__(self, fn: JudgeFn, name: str):
        if not callable(fn):
            raise ConfigError(f"judge '{name}': expected a callable judge(prompt, a, b), got {type(fn).__name__}")
        self.fn, self.name = fn, name

    def probability(self, prompt: str, a: str, b: str, where: str = "") -> float:
        """P(a ≻ b), or a :class:`RewardError` naming the judge and the pair."""
        where = where or f"pair ({_short(a)}, {_short(b)})"
        try:
            value = self.fn(prompt, a, b)
            value = float(value.item() if hasattr(value, "item") else value)
        except PrefoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code: report which judge and pair failed
            raise RewardError(f"judge '{self.name}': {type(exc).__name__}: {exc} on {where} "
                              f"of prompt {_short(prompt)}") from exc
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise RewardError(f"judge '{self.name}': returned {value} on {where} of prompt {_short(prompt)}; "
                              "expected a probability in [0, 1]")
        return value

    __call__ = probability

    def block(self, prompt: str, a: Sequence[str], b: Sequence[str], label: str = "") -> torch.Tensor:
        """(len a, len b) matrix of P(a_i ≻ b_j) for one prompt."""
        return torch.tensor([[self.probability(prompt, x, y, f"{label}pair ({i}, {j})")
                              for j, y in enumerate(b)] for i, x in enumerate(a)], dtype=torch.float64)

    def matrix(self, prompt: str, samples: Sequence[str], both_orders: bool = False,
               label: str = "") -> torch.Tensor:
        """(K, K) win rates among one prompt's samples, ½ on the diagonal.

        One order per pair (K(K−1)/2 calls) with P(j ≻ i) := 1 − P(i ≻ j); ``both_orders`` asks both
        and averages P(i ≻ j) and 1 − P(j ≻ i), which cancels a judge's position bias.
        """
        k = len(samples)
        out = torch.full((k, k), 0.5, dtype=torch.float64)
        for i in range(k):
            for j in range(i + 1, k):
                p = self.probability(prompt, samples[i], samples[j], f"{label}pair ({i}, {j})")
                if both_orders:
                    p = 0.5 * (p + 1.0 - self.probability(prompt, samples[j], samples[i], f"{label}pair ({j}, {i})"))
                out[i, j], out[j, i] = p, 1.0 - p
        return out


class RewardJudge(NamedJudge):
    """Bradley-Terry judge σ((r(a) − r(b)) / temperature) from a scalar reward ``r(prompts, responses)``.

    Matrices score each sample once (one reward call per prompt) instead of once per pair.
    """

    def __init__(self, reward: Callable[[list[str], list[str]], Sequence[float]], name: str,
                 temperature: float = 1.0):
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"judge '{name}': temperature must be > 0, got {temperature}")
        components = getattr(reward, "objectives", None)  # a gold scorer says what it returns
        if components is not None and len(components) != 1:
            raise ConfigError(f"judge '{name}': the reward returns {len(components)} components "
                              f"{list(components)}; a Bradley-Terry judge needs one (name it, e.g. gold:OBJECTIVE)")
        self.reward, self.temperature = reward, float(temperature)
        super().__init__(judge_from_reward(self.rewards, temperature), name)

    def rewards(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The scalar reward of each response, checked (one value per response, finite)."""
        out = self.reward(prompts, responses)
        if isinstance(out, Mapping):
            if len(out) != 1:
                raise ConfigError(f"judge '{self.name}': the reward returns {len(out)} components "
                                  f"{sorted(out)}; a Bradley-Terry judge needs one (name it, e.g. gold:OBJECTIVE)")
            out = next(iter(out.values()))
        values = [float(v) for v in out]
        if len(values) != len(responses):
            raise RewardError(f"judge '{self.name}': the reward returned {len(values)} values for "
                              f"{len(responses)} responses")
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise RewardError(f"judge '{self.name}': the reward returned {values[bad[0]]} for response "
                              f"{bad[0]} ({_short(responses[bad[0]])}) of prompt {_short(prompts[bad[0]])}")
        return values

    def _bt(self, prompt: str, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        r = torch.tensor(self.rewards([prompt] * (len(a) + len(b)), list(a) + list(b)), dtype=torch.float64)
        ra, rb = r[:len(a)], r[len(a):]
        return torch.sigmoid((ra[:, None] - rb[None, :]) / self.temperature)

    def block(self, prompt, a, b, label=""):
        return self._bt(prompt, a, b)

    def matrix(self, prompt, samples, both_orders=False, label=""):
        return self._bt(prompt, samples, samples)  # σ(0) = ½ on the diagonal, exactly antisymmetric


PAIR_A, PAIR_B = " [A]", " [B]"


def pair_text(a: str, b: str) -> str:
    """The text a pairwise preference model scores for "a against b" (see the module docstring)."""
    return f"{PAIR_A}{a}{PAIR_B}{b}"


def pairwise_model_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Preference rows {prompt, chosen, rejected} → reward-model rows over pair texts, both orders."""
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in r]
        if missing:
            raise ConfigError(f"pairwise_model_rows: row {i} has no {', '.join(missing)} (expected prompt, "
                              "chosen, rejected)")
        out.append({"prompt": r["prompt"], "chosen": pair_text(r["chosen"], r["rejected"]),
                    "rejected": pair_text(r["rejected"], r["chosen"])})
    return out


class PairwiseModelJudge(NamedJudge):
    """P(a ≻ b) = σ(s(x, pair_text(a, b)) − s(x, pair_text(b, a))) from a scorer ``s`` trained on
    :func:`pairwise_model_rows`. Blocks and matrices score all ordered pairs in one call."""

    def __init__(self, scorer: Callable, name: str):
        self.scores = RewardJudge(scorer, name)  # validated scalar outputs
        super().__init__(self._one, name)

    def _one(self, prompt: str, a: str, b: str) -> float:
        return float(self._block(prompt, [a], [b])[0, 0])

    def _block(self, prompt: str, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        forward = [pair_text(x, y) for x in a for y in b]
        backward = [pair_text(y, x) for x in a for y in b]
        s = torch.tensor(self.scores.rewards([prompt] * (2 * len(forward)), forward + backward), dtype=torch.float64)
        n = len(forward)
        return torch.sigmoid(s[:n] - s[n:]).reshape(len(a), len(b))

    def block(self, prompt, a, b, label=""):
        return self._block(prompt, a, b)

    def matrix(self, prompt, samples, both_orders=False, label=""):
        out = self._block(prompt, samples, samples)
        out.fill_diagonal_(0.5)  # σ(s(a, a) − s(a, a)) = ½ exactly; rounding aside
        return out


def as_judge(judge: NamedJudge | JudgeFn, name: str | None = None) -> NamedJudge:
    """A :class:`NamedJudge` (a plain callable is named after its function)."""
    if isinstance(judge, NamedJudge):
        return judge
    return NamedJudge(judge, name or getattr(judge, "__name__", type(judge).__name__))


# --------------------------------------------------------------------------- sources


def lab_judge(task) -> NamedJudge:
    """The lab task's gold pairwise judge."""
    fn = getattr(task, "judge", None)
    if not callable(fn):
        raise ConfigError(f"judge 'lab': task '{getattr(task, 'name', '?')}' has no gold pairwise judge "
                          "(use a task with one, e.g. reviews_rps, or a bt:/module: judge)")
    return NamedJudge(fn, f"lab:{task.name}")


def _pair_uniform(prompt, a: str, b: str) -> float:
    digest = hashlib.sha256(repr((prompt, a, b)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def noisy_judge(gold: NamedJudge, noise: float = 0.5) -> NamedJudge:
    """(1 − ν)·P_gold(a ≻ b) + ν·U(prompt, a, b), U uniform and fixed per triple (reproducible)."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"judge 'lab:noisy': noise must be in [0, 1], got {noise}")
    return NamedJudge(lambda p, a, b: (1 - noise) * gold(p, a, b) + noise * _pair_uniform(p, a, b), "lab:noisy")


def adversarial_judge(gold: NamedJudge) -> NamedJudge:
    """1 − P_gold(a ≻ b): always the wrong side, with the gold's confidence."""
    return NamedJudge(lambda p, a, b: 1.0 - gold(p, a, b), "lab:adversarial")


def function_judge(spec: str | JudgeFn, options: dict | None = None, name: str | None = None) -> NamedJudge:
    """A Python judge: a callable, or ``module:function`` (a factory called with ``options``)."""
    if not isinstance(spec, str):
        return as_judge(spec(**options) if options else spec, name)
    fn = import_callable(spec, "judge")
    if options:
        fn = fn(**options)
    return NamedJudge(fn, name or spec)


def build_judge(spec: str, *, task=None, options: dict | None = None) -> NamedJudge:
    """The judge a config names: ``lab``, ``bt:SCORER`` or ``module:function`` (see module docstring)."""
    options = dict(options or {})
    if spec in LAB_JUDGES:
        if task is None:
            raise ConfigError(f"judge '{spec}': needs a lab task (data.task)")
        allowed = {"lab:noisy": {"noise"}}.get(spec, set())
        if set(options) - allowed:
            raise ConfigError(f"judge '{spec}': unknown options {sorted(set(options) - allowed)} "
                              f"(takes {sorted(allowed) or 'none'})")
        gold = lab_judge(task)
        if spec == "lab:noisy":
            return noisy_judge(gold, **options)
        return adversarial_judge(gold) if spec == "lab:adversarial" else gold
    if spec.startswith("bt:"):
        temperature = options.pop("temperature", 1.0)
        scorer, _ = resolve_scorer(spec[3:], task=task, options=options)
        return RewardJudge(scorer, spec, temperature)
    if spec.startswith("pairwise_model:"):
        scorer, _ = resolve_scorer("reward_model:" + spec.split(":", 1)[1], task=task, options=options)
        return PairwiseModelJudge(scorer, spec)
    return function_judge(spec, options)


# --------------------------------------------------------------------------- win rates


def win_rate_matrix(judge: NamedJudge | JudgeFn, prompts: Sequence[str], responses: Sequence[str], *,
                    both_orders: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(P, K, K): W[p, i, j] = P(y_i ≻ y_j) over the K samples of prompt p, ½ on the diagonal.

    ``responses`` is flat, rows p*K .. p*K+K-1 for prompt p (the layout of ``sample_texts``).
    """
    judge = as_judge(judge)
    k = _groups(prompts, responses, f"win_rate_matrix (judge '{judge.name}')", min_k=2)
    mats = [judge.matrix(p, responses[i * k:(i + 1) * k], both_orders, f"prompt {i}, ")
            for i, p in enumerate(prompts)]
    return torch.stack(mats).to(dtype)


def cross_win_rates(judge: NamedJudge | JudgeFn, prompts: Sequence[str], responses_a: Sequence[str],
                    responses_b: Sequence[str]) -> torch.Tensor:
    """(P, Ka, Kb): P(a_i ≻ b_j) between the samples of two policies on the same prompts (flat layouts)."""
    judge = as_judge(judge)
    ka = _groups(prompts, responses_a, f"cross_win_rates (judge '{judge.name}', first policy)")
    kb = _groups(prompts, responses_b, f"cross_win_rates (judge '{judge.name}', second policy)")
    return torch.stack([judge.block(p, responses_a[i * ka:(i + 1) * ka], responses_b[i * kb:(i + 1) * kb],
                                    f"prompt {i}, ") for i, p in enumerate(prompts)])


@dataclass
class WinRate:
    """Mean P(a ≻ b) over all cross pairs, its standard error over prompts, and the pair count."""

    mean: float
    stderr: float
    pairs: int


def win_rate(judge: NamedJudge | JudgeFn, prompts: Sequence[str], responses_a: Sequence[str],
             responses_b: Sequence[str]) -> WinRate:
    """Win rate of policy A's samples against policy B's (½ = even)."""
    rates = cross_win_rates(judge, prompts, responses_a, responses_b)
    per_prompt = rates.mean(dim=(1, 2))
    stderr = float(per_prompt.std(correction=1) / math.sqrt(len(per_prompt))) if len(per_prompt) > 1 else 0.0
    return WinRate(float(per_prompt.mean()), stderr, int(rates.numel()))


@dataclass
class Exploitability:
    """The best win rate a panel member achieves against a policy's samples (½ = unexploitable)."""

    value: float
    best: str
    win_rates: dict[str, float]


def exploitability(judge: NamedJudge | JudgeFn, prompts: Sequence[str], responses: Sequence[str],
                   panel: Mapping[str, Sequence[str]]) -> Exploitability:
    """max over panel members m of win_rate(m's responses, the policy's responses).

    ``panel`` maps a member's name to its responses on ``prompts`` (flat, ≥ 1 per prompt): samples of
    other policies, or best responses the lab provides (``ReviewsRPSTask.panel``). The estimate is a
    lower bound on the true exploitability, tight when the panel holds a best response.
    """
    if not panel:
        raise ConfigError("exploitability: the panel is empty; give at least one policy's responses")
    judge = as_judge(judge)
    rates = {name: win_rate(judge, prompts, member, responses).mean for name, member in panel.items()}
    best = max(rates, key=rates.get)
    return Exploitability(rates[best], best, rates)
