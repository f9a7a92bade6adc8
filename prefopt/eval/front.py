"""Evaluate one policy for a Pareto front: sample held-out prompts, score every objective.

``condition(prompt) -> prompt`` rewrites what the policy sees (rewards-in-context writes target
scores into it) while the scorers always read the original prompt."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from prefopt.errors import ConfigError
from prefopt.rollout.engine import SamplingConfig
from prefopt.rollout.text import sample_texts


@dataclass
class FrontScores:
    """Per-objective scores of every sample (prompt-major), and the sampled response tokens."""

    scores: dict[str, list[float]]
    sampled_tokens: int


class ObjectiveScorer:
    """The objectives a front is evaluated on: the lab task's gold rewards, or configured scorers
    (names as in ``online.reward``); every name each returns becomes one objective."""

    def __init__(self, task=None, scorer_names: Sequence[str] = ()):
        from prefopt.rollout.scorers import resolve_scorer

        if not scorer_names and task is None:
            raise ConfigError("front: evaluation needs a lab task (data.task of the train config) or eval_scorers")
        self.task = task
        self.scorers = [resolve_scorer(name, task=task) for name in scorer_names]

    def __call__(self, prompts: list, responses: list[str]) -> dict[str, list[float]]:
        if not self.scorers:
            return {k: [float(v) for v in vs] for k, vs in self.task.gold(prompts, responses).items()}
        out: dict[str, list[float]] = {}
        for fn, label in self.scorers:
            got = fn(prompts, responses)
            items = got.items() if isinstance(got, dict) else [(label, got)]
            for name, values in items:
                if name in out:
                    raise ConfigError(f"front eval_scorers: two scorers return the objective '{name}'")
                out[name] = [float(v) for v in values]
        return out

    def available(self, probe_prompt) -> list[str]:
        """The objective names (gold: the task's; scorers: what they return on one probe)."""
        if not self.scorers:
            return list(self.task.objectives)
        return list(self([probe_prompt], [""]))


def evaluate_policy(model, tokenizer, prompts: list, scorer: ObjectiveScorer, sampling: SamplingConfig,
                    condition: Callable | None = None) -> FrontScores:
    """Sample ``sampling.num_samples`` responses per prompt (conditioned when ``condition`` is given)
    and score them on the original prompts."""
    seen = [condition(p) for p in prompts] if condition is not None else list(prompts)
    rollout, texts = sample_texts(model, tokenizer, seen, sampling)
    k = sampling.num_samples
    rows = [p for p in prompts for _ in range(k)]
    return FrontScores(scorer(rows, texts), int(rollout.response_mask.sum()))
