"""The lab's task interface: prompts, an SFT corpus and gold rewards that are known exactly."""
from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
import typing
from typing import Callable, Literal

from prefopt.data.chat import last_user_content
from prefopt.errors import ConfigError
from prefopt.seeding import TASK_PROMPTS, derive_seed

Split = Literal["train", "eval"]  # prompt splits of every task
SPLITS: tuple[str, ...] = typing.get_args(Split)


def prompt_seed(seed: int, split: str) -> int:
    """The seed of ``split``'s prompt stream under base ``seed`` (the splits' streams differ)."""
    if split not in SPLITS:
        raise ConfigError(f"split: got {split!r}, expected one of {', '.join(SPLITS)}")
    return derive_seed(seed, TASK_PROMPTS, SPLITS.index(split))


class Task(ABC):
    """A controlled task whose gold reward is known.

    Prompts and responses are plain text; a response is scored without its end-of-sequence token.
    ``gold`` also takes prompts as conversations (lists of {role, content} messages): their last
    user turn is the task's prompt (:func:`lab_prompts`).
    """

    name: str = ""
    objectives: tuple[str, ...] = ()
    pass_fail: tuple[str, ...] = ()  # objectives that score 0 or 1 (evaluation reports their pass@k)
    default_objective: str = ""
    description: str = ""

    @abstractmethod
    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        """``n`` prompts from ``split`` ("train" or "eval"; the two never share a prompt)."""

    @abstractmethod
    def sft_corpus(self, n: int, seed: int = 0) -> list[tuple[str, str]]:
        """``n`` (prompt, response) demonstrations drawn from the task's base distribution."""

    @abstractmethod
    def gold(self, prompts: list, responses: list[str]) -> dict[str, list[float]]:
        """Gold reward of each response, one list per objective (all of ``self.objectives``);
        prompts are texts or conversations (see :func:`lab_prompts`)."""

    def tokenizer_corpus(self) -> list[str]:
        """Text the task's tokenizer is trained on."""
        pairs = self.sft_corpus(4000, seed=12345)
        return [p + r for p, r in pairs]


def lab_prompts(prompts: list) -> list[str]:
    """The task prompt of each prompt as given: a text itself, a conversation its last user turn."""
    return [last_user_content(p) if isinstance(p, list) else p for p in prompts]


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(cls):
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, **options) -> Task:
    """Build a lab task by name; an unknown name suggests the closest."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown task '{name}'{hint} (known: {', '.join(sorted(TASKS))})")
    try:
        return TASKS[name](**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"task '{name}': bad option ({exc})") from None
