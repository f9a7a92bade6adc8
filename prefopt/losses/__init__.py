"""Pure loss functions over per-sequence / per-token log-prob tensors.

Pairwise preference losses share one signature (see ``pairwise``); pick them by name only at
the config edge through ``get_pairwise_loss`` / ``combine_losses``.
"""
from prefopt.losses.kto import kto
from prefopt.losses.pairwise import (
    aot, aot_pair, apo_down, apo_zero, bco_pair, cdpo, cpl, discopop, dpo, exo, hinge, ipo,
    nca, orpo, pairwise_loss, robust_dpo, rpo, sigmoid_norm, simpo, sppo_hard,
)
from prefopt.losses.reductions import (
    AGGREGATION_MODES, aggregate_loss, masked_mean, masked_sum, masked_var, step_normalizer,
)
from prefopt.losses.registry import (
    PAIRWISE_LOSSES, combine_losses, get_pairwise_loss, validate_hparams,
)
from prefopt.losses.rl import (
    KL_ESTIMATORS, AdaptiveKLController, discounted_returns, entropy_from_logits,
    explained_variance, gae, grpo_advantages, is_all_equal_group, kl_estimate,
    ppo_policy_loss, reinforce_pp_advantages, remax_advantages, rloo_advantages, value_loss,
    whiten,
)

__all__ = [
    # registry
    "PAIRWISE_LOSSES", "get_pairwise_loss", "validate_hparams", "combine_losses",
    "pairwise_loss",
    # pairwise losses
    "dpo", "cdpo", "robust_dpo", "ipo", "hinge", "rpo", "simpo", "orpo", "nca", "exo",
    "bco_pair", "sppo_hard", "apo_zero", "apo_down", "aot", "aot_pair", "discopop",
    "sigmoid_norm", "cpl",
    # unpaired
    "kto",
    # reductions
    "AGGREGATION_MODES", "masked_sum", "masked_mean", "masked_var", "step_normalizer",
    "aggregate_loss",
    # online RL
    "KL_ESTIMATORS", "rloo_advantages", "grpo_advantages", "remax_advantages",
    "is_all_equal_group", "whiten", "discounted_returns", "reinforce_pp_advantages", "gae",
    "kl_estimate", "ppo_policy_loss", "value_loss", "entropy_from_logits",
    "explained_variance", "AdaptiveKLController",
]
