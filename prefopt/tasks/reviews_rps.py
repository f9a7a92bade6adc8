"""``reviews_rps``: reviews with a known *general* (intransitive) gold preference.

Every response opens with one of three styles, recognisable as its first word —
``honestly ,`` / ``overall ,`` / ``frankly ,`` (indices 0, 1, 2) — followed by a ``reviews`` body.
The gold pairwise judge is linear in two parts:

    P(a ≻ b) = ½ + ½ [w_s · M[s(a), s(b)] + w_q · (q(a) − q(b))]

- q ∈ [0, 1] is the body's quality: a ``reviews`` objective (``informativeness`` by default;
  ``positivity`` is mapped to (x + 1)/2).
- M is the antisymmetric style payoff M = λ·C + (1 − λ)·G, λ = ``intransitivity`` ∈ [0, 1]:
  C is the rock-paper-scissors cycle (0 beats 1, 1 beats 2, 2 beats 0, each by 1) and
  G[i, j] = (u_i − u_j)/2 with u = (1, 0, −1) the transitive order 0 > 1 > 2. So
  M[0, 1] = M[1, 2] = (1 + λ)/2 and M[2, 0] = 2λ − 1. A response without a style opener
  ("none") loses to every styled one by 1 (M = −1) and ties with another unstyled one.

With w_s + w_q ≤ 1 every P lies in [0, 1], and P(b ≻ a) = 1 − P(a ≻ b). For λ > ½ the styles form
a strict cycle, so no scalar reward (no Bradley-Terry model) explains the judge; λ = 0 is exactly
Bradley-Terry-linear in u and q.

**Nash (minimax-winner) mixture of the style part.** For an antisymmetric 3×3 game with
M[0,1] = a, M[1,2] = b, M[2,0] = c, all > 0, the mixture p with M p = 0 is p ∝ (b, c, a); every
style then wins exactly ½ against it. Here a = b = (1 + λ)/2, c = 2λ − 1, so for λ > ½

    p* = ((1 + λ)/(6λ), (2λ − 1)/(3λ), (1 + λ)/(6λ))      (uniform at λ = 1),

and for λ < ½ style 0 beats both others, so p* = (1, 0, 0) (at λ = ½ every mixture between
(1, 0, 0) and (½, 0, ½) is optimal; :func:`nash_style_mixture` returns (1, 0, 0)). "none" is
strictly dominated and never in the support. The Nash policy of the whole judge plays p* with
maximal quality (q = 1).

**Exploitability.** The panel (:meth:`ReviewsRPSTask.panel`) holds one best response per style
(that style, every aspect mentioned, q = 1). Against a policy with pooled style distribution p̄
and mean quality q̄, panel member j wins ½ + ½[w_s (M p̄)_j + w_q (1 − q̄)] exactly (the judge is
linear), so :meth:`ReviewsRPSTask.exploitability` = ½ + ½[w_s max_j (M p̄)_j + w_q (1 − q̄)];
it is ½ exactly at the Nash policy and larger everywhere else.
"""
from __future__ import annotations

import random
from typing import Sequence

from prefopt.tasks.base import register_task
from prefopt.tasks.reviews import ASPECTS, ReviewsTask, _parse_prompt

STYLES = ("honestly", "overall", "frankly")
NO_STYLE = "none"
STYLE_INDEX = {**{s: i for i, s in enumerate(STYLES)}, NO_STYLE: len(STYLES)}
QUALITY_MAP = {
    "informativeness": lambda x: x,
    "brevity": lambda x: x,
    "positivity": lambda x: (x + 1.0) / 2.0,
}


def style_payoffs(intransitivity: float) -> list[list[float]]:
    """The 4×4 antisymmetric style payoff M over (honestly, overall, frankly, none)."""
    lam = float(intransitivity)
    win, back = (1 + lam) / 2, 2 * lam - 1
    m = [[0.0, win, -back, 1.0],
         [-win, 0.0, win, 1.0],
         [back, -win, 0.0, 1.0],
         [-1.0, -1.0, -1.0, 0.0]]
    return m


def nash_style_mixture(intransitivity: float) -> tuple[float, float, float]:
    """The minimax-winner mixture p* over the three styles (derivation in the module docstring)."""
    lam = float(intransitivity)
    if lam <= 0.5:
        return (1.0, 0.0, 0.0)
    side = (1 + lam) / (6 * lam)
    return (side, (2 * lam - 1) / (3 * lam), side)


def split_style(response: str) -> tuple[str, str]:
    """(style, body): the opener word (or ``none``) and the review body without it."""
    words = response.split()
    if words and words[0] in STYLES:
        rest = words[1:]
        if rest and rest[0] == ",":
            rest = rest[1:]
        return words[0], " " + " ".join(rest)
    return NO_STYLE, response


@register_task
class ReviewsRPSTask(ReviewsTask):
    name = "reviews_rps"
    description = ("reviews with a style opener and a gold intransitive pairwise judge "
                   "(rock-paper-scissors styles × quality; knob: intransitivity)")

    def __init__(self, intransitivity: float = 1.0, style_weight: float = 0.5, quality_weight: float = 0.5,
                 quality: str = "informativeness", style_probs: Sequence[float] = (0.6, 0.3, 0.1),
                 **reviews_options):
        super().__init__(**reviews_options)
        if not 0.0 <= intransitivity <= 1.0:
            raise ValueError(f"intransitivity must be in [0, 1], got {intransitivity}")
        if style_weight < 0 or quality_weight < 0 or style_weight + quality_weight > 1.0 + 1e-12:
            raise ValueError(f"style_weight and quality_weight must be >= 0 with sum <= 1 (so that P is in "
                             f"[0, 1]), got {style_weight} and {quality_weight}")
        if quality not in QUALITY_MAP:
            raise ValueError(f"quality must be one of {', '.join(QUALITY_MAP)}, got '{quality}'")
        probs = [float(p) for p in style_probs]
        if len(probs) != len(STYLES) or min(probs) < 0 or sum(probs) > 1.0 + 1e-9:
            raise ValueError(f"style_probs must be {len(STYLES)} probabilities for {', '.join(STYLES)} with "
                             f"sum <= 1 (the rest opens with no style), got {list(style_probs)}")
        self.intransitivity, self.style_weight, self.quality_weight = float(intransitivity), style_weight, quality_weight
        self.quality, self.style_probs = quality, tuple(probs)
        self.default_objective = quality
        self.payoffs = style_payoffs(intransitivity)

    # --------------------------------------------------------------- base distribution and scores

    def response(self, rng: random.Random, product: str) -> str:
        body = super().response(rng, product)
        u, acc = rng.random(), 0.0
        for style, p in zip(STYLES, self.style_probs):
            acc += p
            if u < acc:
                return f" {style} ,{body}"
        return body

    def score(self, prompt: str, response: str) -> dict[str, float]:
        """The ``reviews`` objectives of the body (the style opener does not count)."""
        return super().score(prompt, split_style(response)[1])

    def quality_of(self, prompt: str, response: str) -> float:
        return QUALITY_MAP[self.quality](self.score(prompt, response)[self.quality])

    def judge(self, prompt: str, a: str, b: str) -> float:
        """Gold P(a ≻ b) (see the module docstring)."""
        sa, sb = STYLE_INDEX[split_style(a)[0]], STYLE_INDEX[split_style(b)[0]]
        margin = self.style_weight * self.payoffs[sa][sb] + \
            self.quality_weight * (self.quality_of(prompt, a) - self.quality_of(prompt, b))
        return min(1.0, max(0.0, 0.5 + 0.5 * margin))  # clamp only rounding error: |margin| <= 1

    # --------------------------------------------------------------- game quantities

    def nash_mixture(self) -> dict[str, float]:
        return dict(zip(STYLES, nash_style_mixture(self.intransitivity)))

    def style_distribution(self, responses: Sequence[str]) -> list[float]:
        """Share of each style (honestly, overall, frankly, none) among ``responses``."""
        counts = [0] * len(STYLE_INDEX)
        for r in responses:
            counts[STYLE_INDEX[split_style(r)[0]]] += 1
        return [c / max(1, len(responses)) for c in counts]

    def style_advantages(self, distribution: Sequence[float]) -> list[float]:
        """(M p)_j for each style j: how much pure style j beats the mixture p (0 for all j at p*)."""
        return [sum(self.payoffs[j][i] * distribution[i] for i in range(len(STYLE_INDEX)))
                for j in range(len(STYLES))]

    def exploitability(self, prompts: Sequence[str], responses: Sequence[str]) -> float:
        """Exact best win rate of the panel against these responses (one prompt per response)."""
        if len(prompts) != len(responses) or not responses:
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses; expected one per response")
        mean_quality = sum(self.quality_of(p, r) for p, r in zip(prompts, responses)) / len(responses)
        best_style = max(self.style_advantages(self.style_distribution(responses)))
        return 0.5 + 0.5 * (self.style_weight * best_style + self.quality_weight * (1.0 - mean_quality))

    def best_response(self, prompt: str, style: str) -> str:
        """A response of ``style`` with the maximal quality for ``prompt``."""
        product = _parse_prompt(prompt)
        if product is None:
            raise ValueError(f"not a reviews prompt: {prompt!r}")
        if self.quality == "informativeness":
            body = " ".join(f"the {a} is great ." for a in ASPECTS[product])
        elif self.quality == "positivity":
            body = "i love it ."
        else:  # brevity: an empty body
            body = ""
        return f" {style} , {body}"

    def panel(self, prompts: Sequence[str]) -> dict[str, list[str]]:
        """One best-response policy per style: {style: its response to each prompt}."""
        return {s: [self.best_response(p, s) for p in prompts] for s in STYLES}

    # --------------------------------------------------------------- data for a pairwise preference model

    def judged_pairs(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` pairs of base-distribution responses to train prompts, each labelled by a draw from the
        gold judge (a wins with probability P(a ≻ b)); identical responses are redrawn."""
        from prefopt.seeding import PREFDATA_LABELS, derive_seed

        rng = random.Random(derive_seed(seed, PREFDATA_LABELS))
        prompts = self.prompts("train", n, seed=seed)
        rows = []
        for prompt in prompts:
            product = _parse_prompt(prompt)
            a, b = self.response(rng, product), self.response(rng, product)
            while b == a:
                b = self.response(rng, product)
            a_wins = rng.random() < self.judge(prompt, a, b)
            rows.append({"prompt": prompt, "chosen": a if a_wins else b, "rejected": b if a_wins else a})
        return rows


def write_pairwise_model_data(path: str, n: int, seed: int = 0, **task_options) -> int:
    """Write ``n`` judged pairs as pairwise-preference-model rows (pair texts, see
    :func:`prefopt.rollout.preferences.pairwise_model_rows`) to a JSONL file; returns the row count."""
    from prefopt.data.loaders import write_jsonl
    from prefopt.rollout.preferences import pairwise_model_rows

    rows = pairwise_model_rows(ReviewsRPSTask(**task_options).judged_pairs(n, seed))
    write_jsonl(path, rows)
    return len(rows)


if __name__ == "__main__":  # python -m prefopt.tasks.reviews_rps OUT.jsonl [N] [SEED]
    import sys

    args = sys.argv[1:]
    if not 1 <= len(args) <= 3:
        raise SystemExit("usage: python -m prefopt.tasks.reviews_rps OUT.jsonl [N=4000] [SEED=0]")
    count = write_pairwise_model_data(args[0], int(args[1]) if len(args) > 1 else 4000,
                                      int(args[2]) if len(args) > 2 else 0)
    print(f"wrote {count} pairwise-model rows to {args[0]}")
