"""Self-play / Nash losses under a general preference P(y ≻ y′), and the pure pieces around them.

Inputs are (B,) per-example *summed* response log-probs, like the pairwise losses; Δ(y) = log π_θ(y)
− log π_ref(y). Win-rate matrices are (P, K, K) with W[p, i, j] = P(y_i ≻ y_j) over the K samples of
prompt p and ½ on the diagonal. Each loss returns per-example ``losses`` (B,) and detached metrics.
Imports only torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.pairwise import _reward_metrics
from prefopt.types import LossOutput

Tensor = torch.Tensor


def _check_positive(loss: str, key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"loss '{loss}': {key} must be > 0, got {value}")


def _check_unit(loss: str, key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"loss '{loss}': {key} must be in [0, 1], got {value}")


def _check_win_rates(win_rates: Tensor, what: str) -> None:
    if win_rates.dim() != 3 or win_rates.shape[1] != win_rates.shape[2]:
        raise ValueError(f"{what}: expected a (P, K, K) win-rate matrix, got shape {tuple(win_rates.shape)}")
    if win_rates.shape[1] < 2:
        raise ValueError(f"{what}: needs at least 2 samples per prompt, got K = {win_rates.shape[1]}")


# ---------------------------------------------------------------------------------------
# Win-rate statistics (from the (P, K, K) matrix a preference source computes once per batch)
# ---------------------------------------------------------------------------------------
def mean_win_rates(win_rates: Tensor) -> Tensor:
    """SPPO's P̂(y_i ≻ π) = (1/K) Σ_j W[p, i, j], diagonal ½ included (uclaml/SPPO compute_prob.py). (P, K)."""
    _check_win_rates(win_rates, "mean_win_rates")
    return win_rates.mean(dim=-1)


def spo_rewards(win_rates: Tensor) -> Tensor:
    """SPO (Swamy et al. 2024, "A Minimaximalist Approach to RLHF"): each sample's reward is its win
    proportion against the *other* samples of its prompt, Σ_{j≠i} W[p, i, j] / (K − 1). (P, K)."""
    _check_win_rates(win_rates, "spo_rewards")
    k = win_rates.shape[-1]
    off_diagonal = win_rates.sum(dim=-1) - torch.diagonal(win_rates, dim1=-2, dim2=-1)
    return off_diagonal / (k - 1)


@dataclass
class SelectedPairs:
    """M pairs chosen from K samples per prompt; flat sample index = prompt * K + chosen/rejected.

    prompt / chosen / rejected: (M,) long (chosen and rejected are sample indices within the prompt).
    chosen_score / rejected_score: (M,) float, the ranking score of each side (e.g. P̂).
    """

    prompt: Tensor
    chosen: Tensor
    rejected: Tensor
    chosen_score: Tensor
    rejected_score: Tensor

    def flat(self, k: int) -> tuple[Tensor, Tensor]:
        """Row indices of chosen and rejected in the flat (P*K) sample layout."""
        return self.prompt * k + self.chosen, self.prompt * k + self.rejected


def sppo_pairs(win_rates: Tensor) -> SelectedPairs:
    """SPPO's pair per prompt: y_w = argmax P̂, y_l = argmin P̂ (P̂ = :func:`mean_win_rates`).

    When every P̂ of a prompt ties, argmax and argmin would be the same sample; the rejected one is
    then the lowest-scored *other* sample, so the two regression targets always cover two responses.
    """
    scores = mean_win_rates(win_rates)
    chosen = scores.argmax(dim=-1)
    others = scores.scatter(-1, chosen.unsqueeze(-1), float("inf"))
    rejected = others.argmin(dim=-1)
    prompt = torch.arange(scores.shape[0], device=scores.device)
    return SelectedPairs(prompt, chosen, rejected, scores[prompt, chosen], scores[prompt, rejected])


def dno_pairs(scores: Tensor, *, margin: float, pairs_per_prompt: int = 1) -> SelectedPairs:
    """DNO pair selection (Rosset et al. 2024, "Direct Nash Optimization", DNO-Prct): rank the K
    samples of each prompt by the judge's score and keep only large-margin pairs.

    ``scores`` (P, K): a per-sample ranking score — :func:`mean_win_rates` of the judge's win-rate
    matrix, or a reward. Pair r of a prompt is (r-th best, r-th worst) for r < ``pairs_per_prompt``
    (at most K // 2, so pairs are disjoint); a pair is kept when its score gap is ≥ ``margin``.
    The update on the kept pairs is DPO with the reference := the previous iterate.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"dno_pairs: expected (P, K) scores with K >= 2, got shape {tuple(scores.shape)}")
    if margin < 0:
        raise ValueError(f"dno_pairs: margin must be >= 0, got {margin}")
    k = scores.shape[1]
    if not 1 <= pairs_per_prompt <= k // 2:
        raise ValueError(f"dno_pairs: pairs_per_prompt must be in 1..{k // 2} for K = {k}, got {pairs_per_prompt}")
    # Stable descending order: ties keep sample order, so the selection is deterministic.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(pairs_per_prompt, device=scores.device)
    chosen, rejected = order[:, ranks], order[:, k - 1 - ranks]
    chosen_score, rejected_score = scores.gather(-1, chosen), scores.gather(-1, rejected)
    keep = (chosen_score - rejected_score) >= margin
    prompt = torch.arange(scores.shape[0], device=scores.device).unsqueeze(-1).expand_as(chosen)
    return SelectedPairs(prompt[keep], chosen[keep], rejected[keep], chosen_score[keep], rejected_score[keep])


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------
def sppo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, chosen_win_rate: Tensor, rejected_win_rate: Tensor,
         *, beta: float) -> LossOutput:
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization"; uclaml/SPPO ``sppo_loss``):
    ½[(Δ(y_w) − (P̂_w − ½)/β)² + (Δ(y_l) − (P̂_l − ½)/β)²].

    P̂ = each response's mean win rate over the K samples of its prompt (:func:`mean_win_rates`);
    β = 1/η (reference 0.001); the reference model is the previous iterate.
    """
    _check_positive("sppo", "beta", beta)
    chosen_lr = policy_chosen_logps - ref_chosen_logps
    rejected_lr = policy_rejected_logps - ref_rejected_logps
    chosen_target = (chosen_win_rate - 0.5) / beta
    rejected_target = (rejected_win_rate - 0.5) / beta
    losses = 0.5 * ((chosen_lr - chosen_target) ** 2 + (rejected_lr - rejected_target) ** 2)
    metrics = _reward_metrics(beta * chosen_lr, beta * rejected_lr,
                              **{"sppo/win_rate_chosen": chosen_win_rate,
                                 "sppo/win_rate_rejected": rejected_win_rate})
    return LossOutput(losses, metrics)


def inpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, prev_chosen_logps: Tensor, prev_rejected_logps: Tensor,
         *, eta: float, rho: float) -> LossOutput:
    """INPO (Zhang et al. 2025, "Iterative Nash Policy Optimization"):
    (ℓ_θ − ρ ℓ_ref − (1 − ρ) ℓ_t − 1/(2η))², ℓ_m = log π_m(y_w) − log π_m(y_l).

    π_t is the previous iterate (``prev_*``), π_ref the fixed reference. With labels y_w ≻ y_l drawn
    from P, the expected loss is minimized at ℓ_θ = ρ ℓ_ref + (1 − ρ) ℓ_t + (P(y_w ≻ π_t) −
    P(y_l ≻ π_t))/η, i.e. π_{t+1} ∝ π_t^{1−ρ} π_ref^{ρ} exp(P(· ≻ π_t)/η): η here is the inverse step
    size and ρ = τ/η (τ the KL-to-reference strength), as in ALGORITHMS.md.
    """
    _check_positive("inpo", "eta", eta)
    _check_unit("inpo", "rho", rho)
    policy = policy_chosen_logps - policy_rejected_logps
    ref = ref_chosen_logps - ref_rejected_logps
    prev = prev_chosen_logps - prev_rejected_logps
    residual = policy - rho * ref - (1 - rho) * prev
    losses = (residual - 1 / (2 * eta)) ** 2
    # Implicit rewards against the mirror-descent anchor ρ·ref + (1−ρ)·prev.
    chosen = policy_chosen_logps - rho * ref_chosen_logps - (1 - rho) * prev_chosen_logps
    rejected = policy_rejected_logps - rho * ref_rejected_logps - (1 - rho) * prev_rejected_logps
    return LossOutput(losses, _reward_metrics(chosen, rejected))


def online_ipo(policy_logps_a: Tensor, policy_logps_b: Tensor, ref_logps_a: Tensor, ref_logps_b: Tensor,
               win_rate_a: Tensor, win_rate_b: Tensor, *, beta: float) -> LossOutput:
    """Online IPO as used by EGPO (Zhou et al. 2025, "Extragradient Preference Optimization";
    zhourunlong/EGPO ``ExtragradientTrainer._compute_losses``):
    (Δ(y) − Δ(y′) − (P(y ≻ y″) − P(y′ ≻ y″))/β)².

    y, y′ are sampled from the geometric mixture of π_θ and π_ref (:func:`geometric_mixture_logits`),
    y″ ∼ π_θ; ``win_rate_a`` = P(y ≻ y″) (averaged over the y″ drawn), ``win_rate_b`` = P(y′ ≻ y″).
    When y″ is drawn like y, y′ the reference uses (P(y ≻ y′), ½). EGPO passes length-averaged
    log-probs by default (``normalize_logprobs``); the caller chooses.
    """
    _check_positive("online_ipo", "beta", beta)
    lr_a, lr_b = policy_logps_a - ref_logps_a, policy_logps_b - ref_logps_b
    losses = (lr_a - lr_b - (win_rate_a - win_rate_b) / beta) ** 2
    better_a = win_rate_a >= win_rate_b
    chosen, rejected = torch.where(better_a, lr_a, lr_b), torch.where(better_a, lr_b, lr_a)
    return LossOutput(losses, _reward_metrics(beta * chosen, beta * rejected,
                                              **{"online_ipo/win_rate_margin": (win_rate_a - win_rate_b).abs()}))


def selm(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, policy_ref_response_logps: Tensor, ref_ref_response_logps: Tensor,
         *, beta: float, alpha: float) -> LossOutput:
    """SELM (Zhang et al. 2024, "Self-Exploring Language Models"; shenao-zhang/SELM
    ``optimistic_dpo_loss``): −log σ(β(Δ(y_w) − Δ(y_l))) + αβ Δ(y_ref).

    y_ref is the reference (previous-iterate) model's own response to the prompt (greedy in the
    reference code). The sign matches the reference: minimizing lowers π_θ(y_ref)/π_ref(y_ref), the
    optimism bonus that moves mass away from what the reference already says (α 1e-4..1e-3, β 0.01).
    """
    _check_positive("selm", "beta", beta)
    if alpha < 0:
        raise ValueError(f"loss 'selm': alpha must be >= 0, got {alpha}")
    chosen_lr = policy_chosen_logps - ref_chosen_logps
    rejected_lr = policy_rejected_logps - ref_rejected_logps
    response_lr = policy_ref_response_logps - ref_ref_response_logps
    losses = -F.logsigmoid(beta * (chosen_lr - rejected_lr)) + alpha * beta * response_lr
    return LossOutput(losses, _reward_metrics(beta * chosen_lr, beta * rejected_lr,
                                              **{"selm/ref_response_logratio": response_lr}))


# ---------------------------------------------------------------------------------------
# Sampling pieces
# ---------------------------------------------------------------------------------------
def geometric_mixture_logits(policy_logits: Tensor, ref_logits: Tensor, mixture_coef: float) -> Tensor:
    """Per-token log-probs of the geometric mixture π_θ^{1−α} π_ref^{α} (normalized per token):
    log_softmax((1 − α)·policy_logits + α·ref_logits), α = ``mixture_coef`` (TRL's
    ``GeometricMixtureWrapper`` as used by EGPO: α = 1 samples from π_ref, α = 0 from π_θ)."""
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"geometric_mixture_logits: mixture_coef must be in [0, 1], got {mixture_coef}")
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"geometric_mixture_logits: policy logits {tuple(policy_logits.shape)} and "
                         f"reference logits {tuple(ref_logits.shape)} differ in shape")
    mixed = (1 - mixture_coef) * policy_logits.float() + mixture_coef * ref_logits.float()
    return torch.log_softmax(mixed, dim=-1)
