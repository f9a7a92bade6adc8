"""Online-RL math as pure functions: advantages, KL estimators, PPO losses, KL control.

Shapes: N = sequences (P prompts × K samples, flattened), L = padded response length.
Per-token tensors are (N, L) and right-padded; ``mask`` is (N, L) bool (or 0/1), True on
real response tokens. ``group`` is (N,) ids of the prompt each row was sampled for.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from prefopt.losses.reductions import masked_mean, masked_sum, masked_var
from prefopt.types import LossOutput

Tensor = torch.Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


# ---------------------------------------------------------------------------------------
# Group statistics and sequence-level advantages
# ---------------------------------------------------------------------------------------
def group_index(group: Tensor) -> tuple[Tensor, Tensor]:
    """Dense index 0..G-1 per row (ids may be arbitrary) and the size of each row's group."""
    _, index = torch.unique(group, return_inverse=True)
    counts = torch.bincount(index)
    return index, counts[index]


def _group_sum(values: Tensor, index: Tensor) -> Tensor:
    """Per-row sum of ``values`` over the row's group. values (N,), index (N,) -> (N,)."""
    sums = torch.zeros(int(index.max()) + 1, dtype=values.dtype, device=values.device)
    return sums.index_add(0, index, values)[index]


def rloo_advantages(rewards: Tensor, group: Tensor) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = R_i - mean_{j≠i, same group} R_j.

    rewards (N,), group (N,) -> (N,). A row alone in its group has no baseline: A = 0.
    """
    index, counts = group_index(group)
    others = (counts - 1).to(rewards.dtype)
    baseline = (_group_sum(rewards, index) - rewards) / others.clamp(min=1)
    return torch.where(counts > 1, rewards - baseline, torch.zeros_like(rewards))


def grpo_advantages(rewards: Tensor, group: Tensor, normalize_std: bool = True,
                    eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024): A_i = (R_i - mean_g) / (std_g + eps).

    std is the unbiased (n-1) group std, as TRL and verl use. normalize_std=False gives
    Dr. GRPO's mean-centred advantages. rewards (N,), group (N,) -> (N,). Singleton groups
    get A = 0.
    """
    index, counts = group_index(group)
    n = counts.to(rewards.dtype)
    centred = rewards - _group_sum(rewards, index) / n
    if not normalize_std:
        return centred
    std = torch.sqrt(_group_sum(centred ** 2, index) / (n - 1).clamp(min=1))
    return centred / (std + eps)


def remax_advantages(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """ReMax (Li et al. 2023): A = R(sampled) - R(greedy response to the same prompt).
    rewards, greedy_rewards: (N,) -> (N,)."""
    return rewards - greedy_rewards


def is_all_equal_group(rewards: Tensor, group: Tensor) -> Tensor:
    """(N,) bool, True for rows whose whole group got the same reward: their GRPO/RLOO
    advantages are all zero, so DAPO's dynamic sampling drops them."""
    index, _ = group_index(group)
    size = int(index.max()) + 1
    low = rewards.new_full((size,), math.inf).scatter_reduce(0, index, rewards, "amin")
    high = rewards.new_full((size,), -math.inf).scatter_reduce(0, index, rewards, "amax")
    return (low == high)[index]


# ---------------------------------------------------------------------------------------
# Token-level advantages
# ---------------------------------------------------------------------------------------
def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
           total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(x - mean) / std over unmasked entries of the whole batch (population std).
    x, mask (N, L) -> (N, L), zero where masked. shift_mean=False keeps the mean (scale only).
    ``total`` sums a tensor over data-parallel ranks, so the statistics are those of the global batch."""
    if total is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        s = total(torch.stack([masked_sum(x, mask), mask.to(x.dtype).sum()]))
        count = s[1].clamp(min=1)
        mean = s[0] / count
        var = total(masked_sum((x - mean) ** 2, mask).reshape(1))[0] / count
    scaled = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        scaled = scaled + mean
    return torch.where(mask.to(torch.bool), scaled, torch.zeros_like(scaled))


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Returns-to-go G_t = r_t + γ G_{t+1} per right-padded row. (N, L) -> (N, L)."""
    rewards = torch.where(mask.to(torch.bool), token_rewards, torch.zeros_like(token_rewards))
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0,
                            total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """REINFORCE++ (Hu 2025): returns-to-go, then whitened over all masked tokens of the
    batch (global, not per group). token_rewards typically holds the sequence reward on the
    last token plus per-token -β·KL. (N, L), (N, L) -> (N, L)."""
    return whiten(discounted_returns(token_rewards, mask, gamma), mask, total=total)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float,
        lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) for right-padded rows.

    rewards, values, mask: (N, L). δ_t = r_t + γ V_{t+1} - V_t with V = 0 past the last real
    token; A_t = δ_t + γλ A_{t+1}. Returns (advantages, returns = A + V), both (N, L), zero
    where masked.
    """
    mask = mask.to(torch.bool)
    zeros = torch.zeros_like(values)
    values = torch.where(mask, values, zeros)
    rewards = torch.where(mask, rewards, zeros)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, 0.0)
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, torch.where(mask, advantages + values, zeros)


# ---------------------------------------------------------------------------------------
# One name -> estimator table
# ---------------------------------------------------------------------------------------
# Every estimator takes the same keywords and returns (advantages (N, L), returns (N, L) or None):
#   rewards (N,): sequence reward (KL-in-reward already subtracted for sequence estimators);
#   token_rewards (N, L): per-token rewards (sequence reward on the last token, -β·KL per token);
#   mask (N, L); group (N,); values (N, L) critic values (gae); baseline (N,) per-row baseline
#   reward (remax); gamma, lam, normalize_std. Sequence advantages are broadcast over the mask.
def _broadcast(adv: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.to(torch.bool), adv.unsqueeze(-1).expand(mask.shape), 0.0)


def rloo_estimator(*, rewards: Tensor, mask: Tensor, group: Tensor, **_) -> tuple[Tensor, None]:
    """Leave-one-out baseline per group (:func:`rloo_advantages`), per token."""
    return _broadcast(rloo_advantages(rewards, group), mask), None


def grpo_estimator(*, rewards: Tensor, mask: Tensor, group: Tensor, normalize_std: bool = True,
                   **_) -> tuple[Tensor, None]:
    """Group-normalized advantages (:func:`grpo_advantages`), per token."""
    return _broadcast(grpo_advantages(rewards, group, normalize_std=normalize_std), mask), None


def remax_estimator(*, rewards: Tensor, mask: Tensor, baseline: Tensor, **_) -> tuple[Tensor, None]:
    """Greedy-response baseline (:func:`remax_advantages`), per token."""
    return _broadcast(remax_advantages(rewards, baseline), mask), None


def reinforce_pp_estimator(*, token_rewards: Tensor, mask: Tensor, gamma: float = 1.0,
                           total: Callable[[Tensor], Tensor] | None = None, **_) -> tuple[Tensor, None]:
    """Globally whitened returns-to-go (:func:`reinforce_pp_advantages`); ``total`` sums over ranks."""
    return reinforce_pp_advantages(token_rewards, mask, gamma, total), None


def gae_estimator(*, token_rewards: Tensor, mask: Tensor, values: Tensor, gamma: float = 1.0,
                  lam: float = 0.95, **_) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation with the critic's values (:func:`gae`)."""
    return gae(token_rewards, values, mask, gamma, lam)


ADVANTAGE_ESTIMATORS = {
    "rloo": rloo_estimator,
    "grpo": grpo_estimator,
    "remax": remax_estimator,
    "reinforce_pp": reinforce_pp_estimator,
    "gae": gae_estimator,
}
# Estimators whose advantage is a per-prompt group comparison (need k >= 2 samples per prompt).
GROUP_ESTIMATORS = ("rloo", "grpo")
# Estimators that read a sequence reward (KL-in-reward subtracted as a sum) rather than token rewards.
SEQUENCE_ESTIMATORS = ("rloo", "grpo", "remax")


def get_advantage_estimator(name: str):
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator '{name}' (known: {', '.join(ADVANTAGE_ESTIMATORS)})")
    return ADVANTAGE_ESTIMATORS[name]


# ---------------------------------------------------------------------------------------
# KL estimators and PPO losses
# ---------------------------------------------------------------------------------------
def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(π || π_ref) from samples of π (Schulman 2020). Any shape.

    k1 = logp - ref (unbiased, high variance, can be negative);
    k2 = ½ (logp - ref)² (biased, low variance);
    k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, ≥ 0, GRPO's choice).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator '{kind}' (known: {', '.join(KL_ESTIMATORS)})")


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    # Sequence-level advantages (N,) broadcast over tokens.
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                    clip_low: float = 0.2, clip_high: float = 0.2) -> LossOutput:
    """PPO clipped surrogate, per token: max(-A ρ, -A clip(ρ, 1-clip_low, 1+clip_high)).

    logp, old_logp, mask: (N, L); advantages (N, L) or (N,). clip_high > clip_low is DAPO's
    clip-higher. Returns losses (N, L) (zero where masked; reduce with ``aggregate_loss``),
    metrics clipfrac (share of tokens where the clipped branch is active) and
    approx_kl = ½ mean((logp - old_logp)²).
    """
    mask = mask.to(torch.bool)
    advantages = _per_token(advantages, logp)
    # Zero the log-ratio on padding before exp, so garbage there cannot overflow into NaN grads.
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    losses = torch.where(mask, torch.maximum(unclipped, clipped), torch.zeros_like(logp))
    metrics = {
        "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask).detach(),
        "approx_kl": (0.5 * masked_mean(log_ratio ** 2, mask)).detach(),
    }
    return LossOutput(losses, metrics)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float | None = 0.2) -> LossOutput:
    """Clipped value loss, per token: ½ max((V - R)², (V_clip - R)²),
    V_clip = V_old + clip(V - V_old, -clip, clip). clip=None disables clipping.

    All inputs (N, L). Returns losses (N, L), zero where masked, and metric vf_clipfrac.
    """
    mask = mask.to(torch.bool)
    unclipped = (values - returns) ** 2
    if clip is None:
        losses, clipfrac = 0.5 * unclipped, values.new_zeros(())
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (clipped_values - returns) ** 2
        losses = 0.5 * torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask)
    losses = torch.where(mask, losses, torch.zeros_like(losses))
    return LossOutput(losses, {"vf_clipfrac": clipfrac.detach()})


def leave_one_out_baseline(values: Tensor, group: Tensor) -> Tensor:
    """b_i = mean of ``values`` over the OTHER rows of i's group (0 for a row alone). (N,) -> (N,)."""
    index, counts = group_index(group)
    others = (counts - 1).to(values.dtype)
    return torch.where(counts > 1, (_group_sum(values, index) - values) / others.clamp(min=1),
                       torch.zeros_like(values))


def online_reverse_kl_loss(seq_logps: Tensor, ref_seq_logps: Tensor, group: Tensor) -> LossOutput:
    """Score-function surrogate of KL(π || π_ref) = E_{y~π}[log π(y|x) - log π_ref(y|x)] (HyPO).

    seq_logps (N,): summed log π(y_i|x) WITH grad; ref_seq_logps (N,); group (N,) prompt ids,
    k samples per prompt. With r_i = log π(y_i) - log π_ref(y_i) (detached) and the
    leave-one-out baseline b_i over the prompt's other samples, the per-sample loss is
    (r_i - b_i) · log π(y_i): its gradient is an unbiased estimate of ∇ KL (the E[∇ log π] term
    of the exact gradient is zero in expectation and the baseline keeps it so). Returns losses
    (N,) and metric online_kl = mean r_i (a Monte-Carlo estimate of the sequence KL)."""
    r = (seq_logps - ref_seq_logps).detach()
    coef = r - leave_one_out_baseline(r, group)
    return LossOutput(coef * seq_logps, {"online_kl": r.mean()})


# ---------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------
def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of softmax(logits) over the last dim: -Σ p log p with log p = log_softmax(z).

    logits (..., V) -> (...). Computed in at least fp32 on ``chunk_size`` rows at a time so a
    large vocabulary never needs a full-batch fp32 copy (keeps autograd; detach for metrics).
    log_softmax (not logsumexp(z) - Σ p z) avoids cancellation when logits are large.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])
    pieces = []
    for chunk in flat.split(chunk_size):
        log_probs = torch.log_softmax(chunk.to(dtype), dim=-1)
        pieces.append(-(log_probs.exp() * log_probs).sum(-1))
    if not pieces:
        return logits.new_zeros(logits.shape[:-1], dtype=dtype)
    return torch.cat(pieces).reshape(logits.shape[:-1])


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over unmasked tokens: 1 is a perfect critic,
    0 no better than a constant, < 0 worse. NaN when the returns have no variance."""
    var_returns = masked_var(returns, mask)
    ratio = masked_var(returns - values, mask) / var_returns
    return torch.where(var_returns > 0, 1 - ratio, torch.full_like(ratio, math.nan)).detach()


# ---------------------------------------------------------------------------------------
# KL coefficient control
# ---------------------------------------------------------------------------------------
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): steer the observed KL toward ``target``.

    e = clip(KL / target - 1, -0.2, 0.2); β ← β (1 + e · n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController: target and horizon must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Fold in the KL measured over the last ``n_steps`` samples; return the new β."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
