"""KTO (Ethayarajh et al. 2024): prospect-theoretic loss for unpaired binary feedback."""
from __future__ import annotations

import torch

from prefopt.types import LossOutput

Tensor = torch.Tensor


def kto(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor,
        kl_policy_logps: Tensor | None, kl_ref_logps: Tensor | None, *, beta: float,
        desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> LossOutput:
    """Per-example KTO loss.

    policy_logps, ref_logps: (B,) summed response log-probs under policy and reference.
    labels: (B,) bool, True where the response is desirable.
    kl_policy_logps, kl_ref_logps: (M,) summed log-probs of *mismatched* (prompt, response)
        pairs; their mean log-ratio estimates the reference point z0 = KL(policy || ref).
        Pass None for both to use z0 = 0. z0 is detached and clamped >= 0 (it is a baseline,
        not something to optimize). In data-parallel runs the caller may average it first.

    desirable:   λD (1 - σ(β (r - z0)))
    undesirable: λU (1 - σ(β (z0 - r)))      with r = policy - ref.
    Returns losses (B,) and metrics rewards/desirable, rewards/undesirable (means of β r over
    each kind, omitted when the batch has none of that kind) and kl (= z0).
    """
    if (kl_policy_logps is None) != (kl_ref_logps is None):
        raise ValueError("kto: pass both kl_policy_logps and kl_ref_logps, or neither")
    if kl_policy_logps is None:
        z0 = policy_logps.new_zeros(())
    else:
        z0 = (kl_policy_logps - kl_ref_logps).mean().detach().clamp(min=0)
    log_ratio = policy_logps - ref_logps
    desirable = labels.to(torch.bool)
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)

    rewards = beta * log_ratio.detach()
    metrics: dict[str, Tensor] = {"kl": z0}
    if desirable.any():
        metrics["rewards/desirable"] = rewards[desirable].mean()
    if (~desirable).any():
        metrics["rewards/undesirable"] = rewards[~desirable].mean()
    return LossOutput(losses, metrics)
