"""``reviews``: a small synthetic language of product reviews with three gold objectives.

A prompt names a brand and a product ("review of the zenta phone:"). A response is a few
sentences, each either about one of the product's aspects ("the battery is awful .") or
generic ("i love it ."). Gold objectives, each in [-1, 1] or [0, 1]:

- ``positivity``: mean sentiment of the sentences (+1 positive word, -1 negative, 0 neutral).
- ``informativeness``: fraction of the product's aspects the review mentions.
- ``brevity``: 1 - words / max_words (clipped at 0).

Informativeness and brevity conflict by construction (each aspect costs words); in the base
corpus aspect sentences carry mixed sentiment while generic ones lean positive, so the most
positive responses also tend to be the least informative.
"""
from __future__ import annotations

import random

from prefopt.seeding import TASK_CORPUS, derive_seed
from prefopt.tasks.base import Task, lab_prompts, prompt_seed, register_task

BRANDS = ("zenta", "korvo", "lumix", "nadir", "oberon", "pico", "quasar", "rhea",
          "sol", "tern", "umbra", "vega")
ASPECTS = {
    "phone": ("battery", "screen", "camera", "price"),
    "laptop": ("keyboard", "battery", "screen", "speed"),
    "headphones": ("sound", "comfort", "battery", "price"),
    "camera": ("lens", "battery", "grip", "price"),
    "blender": ("motor", "noise", "jar", "price"),
    "backpack": ("straps", "zipper", "fabric", "price"),
    "kettle": ("handle", "noise", "lid", "price"),
    "watch": ("strap", "screen", "battery", "price"),
}
POSITIVE = ("great", "excellent", "good", "superb")
NEGATIVE = ("bad", "awful", "poor", "weak")
NEUTRAL = ("okay", "average")
SENTIMENT = {**{w: 1.0 for w in POSITIVE}, **{w: -1.0 for w in NEGATIVE}, **{w: 0.0 for w in NEUTRAL}}
GENERIC_POSITIVE = ("i love it .", "highly recommended .", "worth every penny .")
GENERIC_NEGATIVE = ("i regret it .", "do not buy .")
GENERIC_SENTIMENT = {**{s: 1.0 for s in GENERIC_POSITIVE}, **{s: -1.0 for s in GENERIC_NEGATIVE}}


def _prompt(brand: str, product: str) -> str:
    return f"review of the {brand} {product}:"


def _parse_prompt(prompt: str) -> str | None:
    """The product a prompt asks about, or None when the prompt is not from this task."""
    words = prompt.rstrip(":").split()
    return words[-1] if words and words[-1] in ASPECTS else None


@register_task
class ReviewsTask(Task):
    name = "reviews"
    objectives = ("positivity", "informativeness", "brevity")
    default_objective = "positivity"
    description = "synthetic product reviews; gold positivity, informativeness, brevity (the last two conflict)"

    def __init__(self, max_sentences: int = 4, max_words: int = 24, generic_rate: float = 0.3):
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.generic_rate = generic_rate
        combos = [(b, p) for b in BRANDS for p in ASPECTS]
        random.Random(0).shuffle(combos)
        # A fixed quarter of brand/product combinations is held out for evaluation.
        cut = len(combos) // 4
        self._split = {"eval": combos[:cut], "train": combos[cut:]}

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        rng = random.Random(prompt_seed(seed, split))
        combos = self._split[split]
        return [_prompt(*rng.choice(combos)) for _ in range(n)]

    def _sentence(self, rng: random.Random, product: str) -> str:
        if rng.random() < self.generic_rate:
            # Generic praise is common, generic complaints rare: positivity pulls away from information.
            pool = GENERIC_POSITIVE if rng.random() < 0.75 else GENERIC_NEGATIVE
            return rng.choice(pool)
        aspect = rng.choice(ASPECTS[product])
        word = rng.choice(POSITIVE + NEGATIVE + NEUTRAL)
        return f"the {aspect} is {word} ."

    def response(self, rng: random.Random, product: str) -> str:
        n = rng.randint(1, self.max_sentences)
        return " " + " ".join(self._sentence(rng, product) for _ in range(n))

    def sft_corpus(self, n: int, seed: int = 0) -> list[tuple[str, str]]:
        rng = random.Random(derive_seed(seed, TASK_CORPUS))
        out = []
        for _ in range(n):
            brand, product = rng.choice(self._split["train"])
            out.append((_prompt(brand, product), self.response(rng, product)))
        return out

    def score(self, prompt: str, response: str) -> dict[str, float]:
        product = _parse_prompt(prompt)
        words = response.split()
        sentences = [s.strip() for s in response.split(".") if s.strip()]
        sentiments, mentioned = [], set()
        for s in sentences:
            sentence = s + " ."
            if sentence in GENERIC_SENTIMENT:
                sentiments.append(GENERIC_SENTIMENT[sentence])
                continue
            toks = s.split()
            sentiments.append(sum(SENTIMENT.get(t, 0.0) for t in toks) / max(1, sum(t in SENTIMENT for t in toks)))
            if product is not None:
                mentioned.update(t for t in toks if t in ASPECTS[product])
        n_aspects = len(ASPECTS[product]) if product else 1
        return {
            "positivity": sum(sentiments) / len(sentiments) if sentiments else 0.0,
            "informativeness": len(mentioned) / n_aspects,
            "brevity": max(0.0, 1.0 - len(words) / self.max_words),
        }

    def gold(self, prompts: list, responses: list[str]) -> dict[str, list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        scores = [self.score(p, r) for p, r in zip(lab_prompts(prompts), responses)]
        return {k: [s[k] for s in scores] for k in self.objectives}
