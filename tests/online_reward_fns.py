"""Reward functions and judges the online tests name as ``online_reward_fns:NAME``."""
import math


def length(prompts, responses):
    return [float(len(r.split())) for r in responses]


def vector(prompts, responses):
    return {"words": [float(len(r.split())) for r in responses], "chars": [float(len(r)) for r in responses]}


def constant(prompts, responses):
    return [1.0] * len(responses)


def raises_on_second(prompts, responses):
    if len(responses) > 1:
        # batch call: delegate so the row-by-row retry finds the bad row
        return [raises_on_second([p], [r])[0] for p, r in zip(prompts, responses)]
    if responses[0] == "boom":
        raise ZeroDivisionError("division by zero")
    return [0.5]


def short_by_one(prompts, responses):
    return [0.0] * (len(responses) - 1)


def nan_on_boom(prompts, responses):
    return [math.nan if r == "boom" else 1.0 for r in responses]


def not_a_list(prompts, responses):
    return 3.0


def scaled(factor):
    """A factory: ``options: {factor: 2}`` makes the scorer."""
    def score(prompts, responses):
        return [factor * len(r) for r in responses]
    return score


def longer_wins(prompt, a, b):
    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def bad_judge(prompt, a, b):
    return 1.7


def always_raise(prompts, responses):
    raise RuntimeError("reward server down")


def phone_only(prompts, responses):
    """Word count for phone prompts; 0 for every other prompt (so those groups are all-equal)."""
    return [float(len(r.split())) if "phone" in p else 0.0 for p, r in zip(prompts, responses)]


def nan_for_even(prompts, responses):
    return [math.nan if len(r) % 2 == 0 else 1.0 for r in responses]


_calls = {"n": 0}


def varies_once(prompts, responses):
    """Word counts on the first call, a constant afterwards (a policy that has 'converged')."""
    _calls["n"] += 1
    if _calls["n"] == 1:
        return [float(len(r.split())) for r in responses]
    return [1.0] * len(responses)


SEEN_PROMPTS: list = []  # every prompt ``messages_only`` was given (the tests clear it)


def messages_only(prompts, responses):
    """Word counts; fails unless every prompt is a list of {role, content} messages (as in the data)."""
    for p in prompts:
        if not (isinstance(p, list) and p and all(set(m) == {"role", "content"} for m in p)):
            raise TypeError(f"expected a list of {{role, content}} messages, got {p!r}")
    SEEN_PROMPTS.extend(prompts)
    return [float(len(r.split())) for r in responses]


def messages_judge(prompt, a, b):
    """Longer wins; fails unless the prompt is a conversation."""
    if not isinstance(prompt, list):
        raise TypeError(f"expected messages, got {prompt!r}")
    SEEN_PROMPTS.append(prompt)
    return longer_wins(prompt, a, b)
