"""MODPO (Zhou et al. 2024, "Beyond One-Preference-Fits-All Alignment"): DPO on one preference
with the other objectives' rewards as margins.

For weights w = (w₀, w₁, …, w_K) on the simplex (w₀ on the preference being trained) and margin
rewards r_k(x, y) of the K other objectives, the policy's implicit reward of objective 0 is

    r̂(y) = (β·Δ(y) − Σ_{k≥1} w_k r_k(x, y)) / w₀,      Δ(y) = log π(y) − log π_ref(y),

and the loss is ``−log σ(r̂(y_w) − r̂(y_l))`` (``loss_type="sigmoid"``) or ``max(0, 1 − (r̂(y_w) − r̂(y_l)))``
(``"hinge"``), as in the reference ``MODPOTrainer.modpo_loss``. Sweeping w traces a front.

Calling convention: the four (B,) summed log-prob tensors of a pairwise loss, plus the margins
of the chosen and rejected responses as (B, K) tensors (a (B,) tensor when K = 1) and the weights.
It is not in the pairwise registry: those losses get scalar hyper-parameters from the config only,
while MODPO needs two per-batch tensors, which the MODPO term computes from its margin sources
(``prefopt.objectives.margins``) before calling this function.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from prefopt.errors import ConfigError
from prefopt.losses.pairwise import _output
from prefopt.types import LossOutput

Tensor = torch.Tensor

# The loss divides by w₀: below this the gradient scale explodes (1/w₀) and the trained
# preference no longer matters; train on the margin objectives instead.
MIN_PREFERENCE_WEIGHT = 1e-3
_SUM_TOLERANCE = 1e-6
LOSS_TYPES = ("sigmoid", "hinge")


def check_modpo_weights(weights: Sequence[float] | Tensor, *, key: str = "modpo.weights") -> Tensor:
    """The weights as a float tensor; ConfigError unless they are ≥ 2 non-negative numbers summing
    to 1 with w₀ ≥ :data:`MIN_PREFERENCE_WEIGHT`."""
    w = torch.as_tensor(weights, dtype=torch.float32).detach().reshape(-1).cpu()
    shown = [round(float(v), 6) for v in w]
    if w.numel() < 2:
        raise ConfigError(f"{key}: got {shown}, expected (w0, w1, ...): the trained preference's weight "
                          "and one weight per margin objective")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ConfigError(f"{key}: got {shown}, expected finite non-negative weights")
    if abs(float(w.sum()) - 1.0) > _SUM_TOLERANCE:
        raise ConfigError(f"{key}: got {shown} (sum {float(w.sum()):.6g}), expected weights summing to 1")
    if float(w[0]) < MIN_PREFERENCE_WEIGHT:
        raise ConfigError(f"{key}: w0={float(w[0]):.6g} (weight of the trained preference) must be ≥ "
                          f"{MIN_PREFERENCE_WEIGHT}: the MODPO loss divides by it; for w0 = 0 optimize "
                          "the margin objectives directly")
    return w


def _margin_matrix(margins: Tensor, batch: int, k: int, which: str) -> Tensor:
    shape = tuple(margins.shape)
    if shape == (batch,) and k == 1:
        return margins.unsqueeze(-1)
    if shape != (batch, k):
        raise ConfigError(f"modpo {which} margins: got shape {shape}, expected ({batch}, {k}) "
                          f"(batch {batch}, {k} margin objective(s) = len(weights) - 1)")
    return margins


def modpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, *, beta: float, chosen_margins: Tensor, rejected_margins: Tensor,
          weights: Sequence[float] | Tensor, loss_type: str = "sigmoid") -> LossOutput:
    """Per-pair MODPO losses (B,) and metrics; ``rewards/*`` are r̂ of chosen and rejected.

    Margins are detached (they are fixed rewards of the other objectives, never trained here).
    Extra metric ``margins/chosen_minus_rejected``: mean of Σ_k w_k (r_k(y_w) − r_k(y_l)).
    """
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"modpo loss_type: got '{loss_type}', expected one of {', '.join(LOSS_TYPES)}")
    w = check_modpo_weights(weights).to(device=policy_chosen_logps.device, dtype=policy_chosen_logps.dtype)
    batch, k = policy_chosen_logps.shape[0], w.numel() - 1
    chosen_m = _margin_matrix(chosen_margins, batch, k, "chosen").detach().to(w)
    rejected_m = _margin_matrix(rejected_margins, batch, k, "rejected").detach().to(w)
    chosen_offset, rejected_offset = chosen_m @ w[1:], rejected_m @ w[1:]
    chosen_rewards = (beta * (policy_chosen_logps - ref_chosen_logps) - chosen_offset) / w[0]
    rejected_rewards = (beta * (policy_rejected_logps - ref_rejected_logps) - rejected_offset) / w[0]
    logits = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(logits) if loss_type == "sigmoid" else torch.relu(1 - logits)
    return _output(losses, chosen_rewards, rejected_rewards,
                   **{"margins/chosen_minus_rejected": chosen_offset - rejected_offset})
