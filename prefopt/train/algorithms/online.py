"""The policy-gradient family as a recipe: :class:`~prefopt.train.sources.policy_gradient.RolloutSource`
× :class:`~prefopt.train.terms.policy_gradient.PolicyGradientTerm`. Members differ only in settings
(the presets table, :mod:`prefopt.train.presets`):

- ``rloo``: leave-one-out baseline over the k samples of a prompt, KL in the reward;
- ``grpo``: group-normalized advantages, clipped ratio, β·KL(k3) as a loss term;
  ``dr_grpo``: no std normalization, constant-length token sum; ``dapo``: clip-higher,
  token-level mean, dynamic sampling (groups whose samples all scored the same are dropped);
- ``remax``: the reward of the prompt's greedy response is the baseline;
- ``reinforce_pp``: returns-to-go of per-token rewards whitened over the whole batch;
- ``ppo``: value head, GAE, clipped policy and value losses, adaptive KL, several epochs.

Every step logs reward (and each component), advantage mean/std, KL, entropy, clip fraction,
approx KL, value loss and explained variance (PPO), response length, truncated fraction,
generation and learner tokens/s.
"""
from __future__ import annotations

from prefopt.models.value import get_value_head
from prefopt.train.pg_settings import PG_ALGORITHMS, PGSettings
from prefopt.train.presets import PRESETS
from prefopt.train.recipe import Part, Recipe
from prefopt.train.sources.experience import Experience
from prefopt.train.sources.policy_gradient import Draw, RolloutSource
from prefopt.train.terms.policy_gradient import PolicyGradientTerm

ALGORITHM_DEFAULTS = {name: PRESETS[name].defaults for name in PG_ALGORITHMS}


class PolicyGradient(Recipe):
    """One rollout source and the policy-gradient term; evaluation on the experience's held-out prompts."""

    def __init__(self, name: str, settings: PGSettings, experience: Experience, *, reference=None,
                 max_new_tokens: int, seed: int = 0, prefix_sharing: bool = True, padding_free: bool = True,
                 draw: Draw | None = None):
        perf = dict(prefix_sharing=prefix_sharing, padding_free=padding_free)
        self.source = RolloutSource(settings, experience, reference=reference, seed=seed, draw=draw, **perf)
        self.term = PolicyGradientTerm(settings, self.source, pad_id=experience.pad_id,
                                       max_new_tokens=max_new_tokens, name=name, **perf)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=name, evaluate=experience.evaluate)
        self.s, self.exp = settings, experience

    def attach(self, model) -> None:
        """Remember the policy's value head (PPO) so it is checkpointed with the algorithm."""
        head = get_value_head(model)
        if head is not None:
            self.extra_state["value_head"] = head
