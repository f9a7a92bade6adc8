"""Judges the self-play tests name as ``selfplay_judges:NAME`` (module on the tests' path)."""
import math


def chars(prompt, a, b):
    """Prefers the longer text (characters): varied on a tiny random model's samples."""
    return 1.0 / (1.0 + math.exp(-(len(a) - len(b)) / 4.0))


def shorter(prompt, a, b):
    return 1.0 - chars(prompt, a, b)


def coin(prompt, a, b):
    return 0.5


def out_of_range(prompt, a, b):
    return 1.5


def nan(prompt, a, b):
    return float("nan")


def char_count(prompts, responses):
    """A scorer that agrees with ``chars``."""
    return [float(len(r)) for r in responses]


def neg_char_count(prompts, responses):
    """A scorer that disagrees with ``chars`` (scaled, so a uniform mix with char_count does not cancel)."""
    return [-0.5 * float(len(r)) for r in responses]
