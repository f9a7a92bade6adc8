"""Recipes: experience sources × loss terms with weights, the unit of work of the single loop.

- A :class:`Source` makes the micro-batches of one optimizer step. Each micro-batch is a dict
  ``{batch kind: batch}`` (a mixture makes several kinds at once) and the source owns its
  resumable state (sampler position, RNG counters, rollout buffer) as a plain tree.
- A :class:`LossTerm` reads one batch kind and maps a batch to a :class:`StepLoss`: the SUM of
  its per-unit losses, metrics (means over its units) and tokens; ``units(batch)`` is known
  before the forward pass so the loop can normalize.
- A :class:`Recipe` is a list of :class:`Part` (one source, its weighted terms). The loop
  normalizes each term by its own units summed over the step's micro-batches (and later
  all-reduced over ranks, see :func:`step_units`):
  ``loss = Σ_k w_k · (Σ_micro sum_k) / (Σ_micro units_k)``.

Batch kinds: ``pairs`` (PreferenceBatch), ``feedback`` (FeedbackBatch), ``sequences``
(SequenceBatch, SFT), ``reward_pairs`` (list of PreferenceBatch, reward models), ``rollout``
(PGBatch: scored rollouts with advantages), ``samples`` (SampleBatch: fresh unlabelled policy
samples with reference log-probs), ``selfplay`` (SelfPlayBatch: pairs with win rates and anchors).

A recipe may carry a :class:`StepHook` (``Recipe.step_hook``) that splits one loop step into
several passes and acts between "sources produce the batch" and "forward" (EGPO's extragradient).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch

from prefopt.errors import ConfigError
from prefopt.train.algorithms.base import Algorithm, StepLoss

BATCH_KINDS = ("pairs", "feedback", "sequences", "reward_pairs", "rollout", "samples", "selfplay")


class StepHook:
    """A hook into one optimizer step of the loop (``prefopt.train.loop._one_step``).

    One loop step runs a pass per name in ``phases``; each pass is: the sources make the batches
    → ``before_forward(phase, model, optimizer)`` → forward/backward of every term → clipping →
    ``optimizer.step()`` → ``after_update(phase, model, optimizer)``. The scheduler steps once per
    loop step, after the last pass; the logged record is the last pass's, every earlier pass's
    loss and grad norm are logged as ``<phase>/loss`` and ``<phase>/grad_norm``. Checkpoints are
    only taken between loop steps, so a hook's intermediate state (e.g. a parameter snapshot)
    never reaches one; ``abort(model, optimizer)`` runs when a step is interrupted (Ctrl-C) and
    must put back the state of the last completed step. The default is one plain pass."""

    phases: tuple[str, ...] = ("update",)

    def before_forward(self, phase: str, model: torch.nn.Module, optimizer) -> None:
        pass

    def after_update(self, phase: str, model: torch.nn.Module, optimizer) -> None:
        pass

    def abort(self, model: torch.nn.Module, optimizer) -> None:
        pass


PLAIN_STEP = StepHook()


class LossTerm(ABC):
    """Maps one batch of kind ``kind`` to (sum of per-unit losses, metrics, tokens)."""

    name: str = ""
    kind: str = ""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> StepLoss:
        """Forward + the SUM of per-unit losses of one micro-batch."""

    def units(self, batch: Any) -> float:
        """Units this micro-batch contributes to the term's normalizer (examples by default)."""
        return float(len(batch))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Source(ABC):
    """Makes the micro-batches of each step as ``{kind: batch}`` dicts; owns its resumable state."""

    kinds: tuple[str, ...] = ()

    @abstractmethod
    def next_batches(self, model: torch.nn.Module, num_micro: int) -> list[dict[str, Any]]:
        """The step's micro-batches (online sources sample from ``model`` here)."""

    def step_metrics(self) -> dict[str, float]:
        """Metrics gathered while making the step's batches; reset each call."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Part:
    """One source and the weighted terms trained on its batches."""

    source: Source
    terms: list[tuple[LossTerm, float]]


@dataclass
class TermBatch:
    """One term's share of one micro-batch. ``key`` identifies the term within the step."""

    key: str
    term: Any  # LossTerm (or a legacy Algorithm adapter)
    weight: float
    batch: Any


class Several(list):
    """Several batches of one kind in one micro-batch (e.g. a mixture's online and offline pairs):
    the term sees each, and its units sum over all of them."""


class _AlgorithmTerm(LossTerm):
    """A legacy :class:`Algorithm` (own ``compute_loss``/``units``) seen as one term."""

    def __init__(self, algorithm: Algorithm):
        self.algorithm, self.name = algorithm, algorithm.name

    def loss(self, model, batch) -> StepLoss:
        return self.algorithm.compute_loss(model, batch)

    def units(self, batch) -> float:
        return self.algorithm.units(batch)


def plan_step(algorithm: Algorithm, model, num_micro: int) -> list[list[TermBatch]]:
    """The step's work as micro-batches of :class:`TermBatch` (a Recipe's, or one legacy term)."""
    if isinstance(algorithm, Recipe) and type(algorithm).next_batches is Recipe.next_batches:
        return algorithm.plan(model, num_micro)
    # a legacy Algorithm, or a one-term recipe whose subclass makes its own batches
    term = _AlgorithmTerm(algorithm)
    return [[TermBatch("0", term, 1.0, b)] for b in algorithm.next_batches(model, num_micro)]


def step_units(plan: list[list[TermBatch]], all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> dict[str, float]:
    """Each term's normalizer for the step: its units summed over micro-batches.

    The one place where a data-parallel run all-reduces (sums) the per-term units over ranks,
    so every rank divides by the global count and the summed gradients equal one big batch."""
    totals: dict[str, float] = {}
    for micro in plan:
        for item in micro:
            totals[item.key] = totals.get(item.key, 0.0) + float(item.term.units(item.batch))
    if all_reduce is not None and totals:
        keys = sorted(totals)
        reduced = all_reduce(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
        totals = {k: float(v) for k, v in zip(keys, reduced.tolist())}
    return totals


class Recipe(Algorithm):
    """Sources × weighted terms. ``evaluate`` is an optional ``model -> metrics`` callback;
    ``extra_state`` objects (e.g. a value head) are checkpointed under their names."""

    def __init__(self, parts: list[Part], *, name: str = "recipe",
                 evaluate: Callable[[torch.nn.Module], dict] | None = None):
        self.parts, self.name, self._evaluate = parts, name, evaluate
        self.extra_state: dict[str, Any] = {}
        self.step_hook: StepHook = PLAIN_STEP
        # objects with metrics() merged into each step's record (e.g. a Hedge labeller's weights)
        self.metric_sources: list[Any] = []
        for p in parts:
            for term, _ in p.terms:
                if term.kind not in p.source.kinds:
                    raise ConfigError(
                        f"recipe: term '{term.name}' needs '{term.kind}' batches, but source "
                        f"'{type(p.source).__name__}' makes {', '.join(p.source.kinds) or 'none'}")
        self.keys = [[f"{i}.{j}" for j in range(len(p.terms))] for i, p in enumerate(parts)]
        names = [t.name for p in parts for t, _ in p.terms]
        self.term_names = {k: (t.name if names.count(t.name) == 1 else f"{t.name}{k}")
                           for p, ks in zip(parts, self.keys) for (t, _), k in zip(p.terms, ks)}

    @property
    def single(self) -> bool:
        return len(self.parts) == 1 and len(self.parts[0].terms) == 1

    def plan(self, model, num_micro: int) -> list[list[TermBatch]]:
        micro: list[list[TermBatch]] = []
        for part, keys in zip(self.parts, self.keys):
            for i, batch in enumerate(part.source.next_batches(model, num_micro)):
                while len(micro) <= i:
                    micro.append([])
                for (term, weight), key in zip(part.terms, keys):
                    got = batch.get(term.kind)
                    for b in (got if isinstance(got, Several) else [got] if got is not None else []):
                        micro[i].append(TermBatch(key, term, float(weight), b))
        return micro

    # The legacy single-term interface (tests and tools drive one-term recipes directly).
    def next_batches(self, model, num_micro: int) -> list:
        term = self.parts[0].terms[0][0]
        return [b[term.kind] for b in self.parts[0].source.next_batches(model, num_micro)]

    def compute_loss(self, model, batch) -> StepLoss:
        return self.parts[0].terms[0][0].loss(model, batch)

    def units(self, batch) -> float:
        return self.parts[0].terms[0][0].units(batch)

    def step_metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        for p in self.parts:
            m.update(p.source.step_metrics())
        for obj in self.metric_sources:
            m.update(obj.metrics())
        return m

    def evaluate(self, model) -> dict[str, float]:
        return self._evaluate(model) if self._evaluate is not None else {}

    def state_dict(self) -> dict:
        state = {"sources": [p.source.state_dict() for p in self.parts],
                 "terms": [[t.state_dict() for t, _ in p.terms] for p in self.parts]}
        for name, obj in self.extra_state.items():
            # references, not copies: the loop snapshots this every step (a separate critic is a whole model)
            state[name] = obj.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for p, s, ts in zip(self.parts, state["sources"], state["terms"]):
            p.source.load_state_dict(s)
            for (t, _), st in zip(p.terms, ts):
                t.load_state_dict(st)
        for name, obj in self.extra_state.items():
            if name in state:
                obj.load_state_dict(state[name])
