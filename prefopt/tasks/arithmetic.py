"""``arithmetic``: prompts like ``37+48=`` with an exact-match verifiable reward.

Difficulty is the number of digits per operand; ``ops`` picks among ``+``, ``-`` and ``*``.
Gold objectives: ``correct`` (1 if the answer matches exactly, else 0) and ``format``
(1 if the response is a well-formed integer, else 0).
"""
from __future__ import annotations

import random
import re
import zlib

from prefopt.tasks.base import Task, lab_prompts, prompt_seed, register_task

_INT = re.compile(r"^-?\d+$")
_PROMPT = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def answer(prompt: str) -> int | None:
    """The exact answer to a prompt, or None when it is not an arithmetic prompt."""
    m = _PROMPT.match(prompt.strip())
    if not m:
        return None
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return a + b if op == "+" else a - b if op == "-" else a * b


@register_task
class ArithmeticTask(Task):
    name = "arithmetic"
    objectives = ("correct", "format")
    pass_fail = ("correct", "format")
    default_objective = "correct"
    description = "integer arithmetic (a+b=, a-b=, a*b=) with exact-match reward"

    def __init__(self, digits: int = 2, ops: str = "+-"):
        if digits < 1 or digits > 6:
            raise ValueError(f"digits must be in 1..6, got {digits}")
        if not ops or set(ops) - set("+-*"):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got '{ops}'")
        self.digits = digits
        self.ops = ops

    def _problem(self, rng: random.Random) -> str:
        hi = 10 ** self.digits - 1
        return f"{rng.randint(0, hi)}{rng.choice(self.ops)}{rng.randint(0, hi)}="

    def _in_split(self, prompt: str, split: str) -> bool:
        # A deterministic hash of the problem puts one in five into "eval", never both. (CRC-32,
        # not a function of the digit sum: ``sum(map(ord, p)) * c % 5`` with c ≡ 1 (mod 5) split by
        # digit sum mod 5, so held-out problems differed systematically from the training ones.)
        return (zlib.crc32(prompt.encode()) % 5 == 0) == (split == "eval")

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        rng = random.Random(prompt_seed(seed, split))
        out: list[str] = []
        while len(out) < n:
            p = self._problem(rng)
            if self._in_split(p, split):
                out.append(p)
        return out

    def sft_corpus(self, n: int, seed: int = 0) -> list[tuple[str, str]]:
        return [(p, str(answer(p))) for p in self.prompts("train", n, seed)]

    def gold(self, prompts: list, responses: list[str]) -> dict[str, list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        correct, fmt = [], []
        for p, r in zip(lab_prompts(prompts), responses):
            r = r.strip()
            ok_format = bool(_INT.match(r))
            fmt.append(float(ok_format))
            correct.append(float(ok_format and int(r) == answer(p)))
        return {"correct": correct, "format": fmt}
