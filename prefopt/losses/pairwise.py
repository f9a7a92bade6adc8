"""Pairwise preference losses: one small pure function per variant.

Every loss has the same signature::

    loss_fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            *, beta, chosen_lengths=None, rejected_lengths=None, **hparams) -> LossOutput

Inputs are (B,) per-example *summed* response log-probs; ``*_lengths`` are (B,) response
token counts (float or long). Reference-free losses accept ``None`` for the ref tensors.
Each returns per-example ``losses`` (B,) and detached batch-mean metrics ``rewards/chosen``,
``rewards/rejected``, ``rewards/margin``, ``rewards/accuracy`` (rewards = beta * log-ratio, or
the loss's own implicit reward when reference-free), plus loss-specific metrics.

Notation in docstrings: r(y) = logp(y) - ref(y), h = r(yw) - r(yl), |y| = response length.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F

from prefopt.types import LossOutput

Tensor = torch.Tensor

# Keyword arguments every loss shares; anything else after `*` is a loss hyper-parameter.
_SHARED_KWARGS = ("beta", "chosen_lengths", "rejected_lengths")


# ---------------------------------------------------------------------------------------
# Declaring a loss
# ---------------------------------------------------------------------------------------
def mark_loss_properties(fn: Callable, *, reference_free: bool, needs_lengths: bool,
                         hparams: dict) -> Callable:
    """Attach the properties configs and trainers read (also used for combined losses)."""
    fn.reference_free = reference_free
    fn.needs_lengths = needs_lengths
    fn.hparams = dict(hparams)
    return fn


def _hparam_defaults(fn: Callable) -> dict:
    """Extra keyword-only parameters of ``fn`` and their defaults, read from its signature
    so the declaration cannot drift from the code."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _SHARED_KWARGS
    }


def check_hparams(name: str, accepted: dict, given: dict) -> None:
    """Reject hyper-parameters a loss does not take, naming the loss, the key and the options."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        options = ", ".join(sorted(accepted)) or "none"
        close = difflib.get_close_matches(unknown[0], accepted, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if "beta" in unknown:
            hint += " ('beta' is passed on its own, not as an hparam)"
        raise ValueError(f"loss '{name}' got unknown hyper-parameter(s) "
                         f"{', '.join(repr(k) for k in unknown)}; it accepts: {options}{hint}")


def pairwise_loss(*, reference_free: bool = False, needs_lengths: bool = False):
    """Decorator: declares a loss's properties and checks its inputs before the math runs
    (missing reference log-probs or lengths fail with the loss's name, not a TypeError)."""

    def decorate(fn: Callable) -> Callable:
        name = fn.__name__
        accepted = _hparam_defaults(fn)

        @functools.wraps(fn)
        def checked(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
                    ref_rejected_logps=None, *, beta, chosen_lengths=None,
                    rejected_lengths=None, **hparams) -> LossOutput:
            check_hparams(name, accepted, hparams)
            if not reference_free and (ref_chosen_logps is None or ref_rejected_logps is None):
                raise ValueError(f"loss '{name}' needs reference log-probs (ref_chosen_logps, "
                                 "ref_rejected_logps); got None")
            if needs_lengths:
                if chosen_lengths is None or rejected_lengths is None:
                    raise ValueError(f"loss '{name}' needs chosen_lengths and rejected_lengths")
                chosen_lengths = _as_lengths(chosen_lengths, policy_chosen_logps)
                rejected_lengths = _as_lengths(rejected_lengths, policy_rejected_logps)
            return fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps, beta=beta, chosen_lengths=chosen_lengths,
                      rejected_lengths=rejected_lengths, **hparams)

        return mark_loss_properties(checked, reference_free=reference_free,
                                    needs_lengths=needs_lengths, hparams=accepted)

    return decorate


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------
def _as_lengths(lengths: Tensor, like: Tensor) -> Tensor:
    # Long counts -> float in the log-probs' dtype; >= 1 so empty responses cannot divide by 0.
    return lengths.to(device=like.device, dtype=like.dtype).clamp(min=1.0)


def _logratios(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               ref_chosen_logps: Tensor, ref_rejected_logps: Tensor) -> tuple[Tensor, Tensor]:
    """r(yw), r(yl): policy minus reference summed log-probs."""
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def _reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor,
                    **extra: Tensor) -> dict[str, Tensor]:
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margin": (chosen - rejected).mean(),
        "rewards/accuracy": (chosen > rejected).float().mean(),
    }
    metrics.update({key: value.detach().mean() for key, value in extra.items()})
    return metrics


def _output(losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor,
            **extra: Tensor) -> LossOutput:
    return LossOutput(losses, _reward_metrics(chosen_rewards, rejected_rewards, **extra))


def _smoothed_sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """-(1-ε) log σ(z) - ε log σ(-z): the BT log-likelihood when a fraction ε of labels flip."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _check_range(name: str, key: str, value: float, low: float, high: float,
                 high_inclusive: bool = False) -> None:
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"loss '{name}': {key}={value} must be in [{low}, {high}{bracket}")


def log1m_exp(x: Tensor, eps: float = 1e-6) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable everywhere (Mächler 2012).

    Near 0, 1 - exp(x) cancels catastrophically, so use log(-expm1(x)); far below 0,
    log1p(-exp(x)) is exact. x is clamped to <= -eps so a response the model is certain of
    (mean log-prob 0) gives a finite value. Each branch gets a safe input so the branch
    torch.where discards cannot send inf/NaN into the gradient.
    """
    x = x.clamp(max=-eps)
    near_zero = x > -math.log(2.0)
    far = torch.full_like(x, -math.log(2.0))
    near_branch = torch.log(-torch.expm1(torch.where(near_zero, x, far)))
    far_branch = torch.log1p(-torch.exp(torch.where(near_zero, far, x)))
    return torch.where(near_zero, near_branch, far_branch)


# ---------------------------------------------------------------------------------------
# P0 losses
# ---------------------------------------------------------------------------------------
@pairwise_loss()
def dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """DPO (Rafailov et al. 2023): -log σ(β h)."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * (chosen_lr - rejected_lr))
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss()
def cdpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
         *, beta, chosen_lengths=None, rejected_lengths=None,
         label_smoothing: float = 0.1) -> LossOutput:
    """Conservative DPO: -(1-ε) log σ(βh) - ε log σ(-βh), ε = label_smoothing in [0, 0.5]."""
    _check_range("cdpo", "label_smoothing", label_smoothing, 0.0, 0.5, high_inclusive=True)
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    losses = _smoothed_sigmoid_loss(beta * (chosen_lr - rejected_lr), label_smoothing)
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss()
def robust_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
               *, beta, chosen_lengths=None, rejected_lengths=None,
               label_smoothing: float = 0.1) -> LossOutput:
    """rDPO (Chowdhury et al. 2024): [-(1-ε) log σ(βh) + ε log σ(-βh)] / (1-2ε).

    Unbiased estimate of the clean-label DPO loss when labels flip with rate ε < 1/2.
    """
    _check_range("robust_dpo", "label_smoothing", label_smoothing, 0.0, 0.5)
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_lr - rejected_lr)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss(needs_lengths=True)
def ipo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """IPO (Azar et al. 2023): (h̄ - 1/(2β))², h̄ from length-averaged log-ratios (as TRL)."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    mean_margin = chosen_lr / chosen_lengths - rejected_lr / rejected_lengths
    losses = (mean_margin - 1 / (2 * beta)) ** 2
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss()
def hinge(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
          *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """SLiC hinge: max(0, 1 - βh)."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1 - beta * (chosen_lr - rejected_lr))
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss(needs_lengths=True)
def rpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, chosen_lengths=None, rejected_lengths=None, alpha: float = 1.0) -> LossOutput:
    """RPO / DPO+SFT (Liu et al. 2024): -log σ(βh) + α NLL(yw)/|yw|.

    The per-token NLL on the chosen response acts as a regularizer against overoptimization.
    """
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    nll = -policy_chosen_logps / chosen_lengths
    losses = -F.logsigmoid(beta * (chosen_lr - rejected_lr)) + alpha * nll
    return _output(losses, beta * chosen_lr, beta * rejected_lr, nll=nll)


@pairwise_loss(reference_free=True, needs_lengths=True)
def simpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
          ref_rejected_logps=None, *, beta, chosen_lengths=None, rejected_lengths=None,
          gamma: float = 0.5) -> LossOutput:
    """SimPO (Meng et al. 2024): -log σ(β (logp(yw)/|yw| - logp(yl)/|yl|) - γ).

    γ is the target margin itself (TRL's ``simpo_gamma``), not a gamma/beta ratio.
    Implicit reward: β · mean token log-prob.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return _output(losses, chosen_rewards, rejected_rewards)


@pairwise_loss(reference_free=True, needs_lengths=True)
def orpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
         ref_rejected_logps=None, *, beta, chosen_lengths=None,
         rejected_lengths=None) -> LossOutput:
    """ORPO (Hong et al. 2024): NLL(yw)/|yw| - λ log σ(log odds(yw) - log odds(yl)).

    λ is ``beta`` (TRL's convention). odds(p) = p/(1-p), p = exp(mean token log-prob), so
    log odds = x - log(1 - exp(x)) with x the mean log-prob. Implicit reward: β · x.
    """
    chosen_mean = policy_chosen_logps / chosen_lengths
    rejected_mean = policy_rejected_logps / rejected_lengths
    log_odds = (chosen_mean - log1m_exp(chosen_mean)) - (rejected_mean - log1m_exp(rejected_mean))
    log_odds_ratio = F.logsigmoid(log_odds)
    nll = -chosen_mean
    losses = nll - beta * log_odds_ratio
    return _output(losses, beta * chosen_mean, beta * rejected_mean, nll=nll,
                   log_odds_ratio=log_odds_ratio, log_odds_chosen=log_odds)


# ---------------------------------------------------------------------------------------
# P1 losses (definitions follow TRL's DPOTrainer loss types and the cited papers)
# ---------------------------------------------------------------------------------------
@pairwise_loss()
def nca(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """NCA (Chen et al. 2024, TRL ``nca_pair``): -log σ(βr_w) - ½ log σ(-βr_w) - ½ log σ(-βr_l).

    Optimizes absolute likelihoods, so the chosen log-prob is pushed up, not only the margin.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = (-F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)
              - 0.5 * F.logsigmoid(-rejected_rewards))
    return _output(losses, chosen_rewards, rejected_rewards)


@pairwise_loss()
def exo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, chosen_lengths=None, rejected_lengths=None,
        label_smoothing: float = 1e-3) -> LossOutput:
    """EXO pairwise (Ji et al. 2024, eq. 16; TRL ``exo_pair``): KL(p_θ || p_data) over {yw, yl}
    with p_θ = (σ(βh), σ(-βh)) and p_data = (1-ε, ε):
    σ(βh)(log σ(βh) - log(1-ε)) + σ(-βh)(log σ(-βh) - log ε). Needs 0 < ε < 1."""
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"loss 'exo': label_smoothing={label_smoothing} must be in (0, 1)")
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_lr - rejected_lr)
    eps = label_smoothing
    losses = (torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-eps))
              + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(eps)))
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss()
def bco_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta, chosen_lengths=None, rejected_lengths=None,
             delta: float = 0.0) -> LossOutput:
    """BCO on pairs (Jung et al. 2024): -log σ(βr_w - δ) - log σ(-(βr_l - δ)).

    δ is a running mean of the rewards kept by the trainer (the loss stays pure); the batch
    value to fold into it is reported as metric ``rewards/mean``.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
    batch_mean = torch.cat([chosen_rewards, rejected_rewards]).mean()
    return _output(losses, chosen_rewards, rejected_rewards, **{"rewards/mean": batch_mean})


@pairwise_loss()
def sppo_hard(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
              *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """SPPO with hard labels (Wu et al. 2024): (r_w - 1/(2β))² + (r_l + 1/(2β))²."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    losses = (chosen_lr - 0.5 / beta) ** 2 + (rejected_lr + 0.5 / beta) ** 2
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss()
def apo_zero(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): (1 - σ(βr_w)) + σ(βr_l).
    For chosen outputs better than the model's own: raise chosen, lower rejected."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = (1 - torch.sigmoid(chosen_rewards)) + torch.sigmoid(rejected_rewards)
    return _output(losses, chosen_rewards, rejected_rewards)


@pairwise_loss()
def apo_down(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta, chosen_lengths=None, rejected_lengths=None) -> LossOutput:
    """APO-down (eq. 8): σ(βr_w) + (1 - σ(βh)).
    For chosen outputs worse than the model's own: lower both, the rejected more. By design
    it can lower the chosen likelihood."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = torch.sigmoid(chosen_rewards) + (1 - torch.sigmoid(chosen_rewards - rejected_rewards))
    return _output(losses, chosen_rewards, rejected_rewards)


@pairwise_loss()
def aot(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, chosen_lengths=None, rejected_lengths=None,
        label_smoothing: float = 0.0) -> LossOutput:
    """AOT paired (Melnyk et al. 2024): DPO on sorted quantiles,
    Δ = sort(logp_w - logp_l) - sort(ref_w - ref_l) over the batch.

    Losses are per sorted quantile, not per input row, and depend on the whole batch, so
    they are not invariant to micro-batch splitting.
    """
    policy_sorted = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0).values
    ref_sorted = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0).values
    losses = _smoothed_sigmoid_loss(beta * (policy_sorted - ref_sorted), label_smoothing)
    return _output(losses, beta * (policy_chosen_logps - ref_chosen_logps),
                   beta * (policy_rejected_logps - ref_rejected_logps))


@pairwise_loss()
def aot_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta, chosen_lengths=None, rejected_lengths=None,
             label_smoothing: float = 0.0) -> LossOutput:
    """AOT unpaired (TRL ``aot_pair``/``aot_unpaired``): Δ = sort(r_w) - sort(r_l) over the batch.
    Same batch-dependence caveat as ``aot``."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    delta = torch.sort(chosen_lr, dim=0).values - torch.sort(rejected_lr, dim=0).values
    losses = _smoothed_sigmoid_loss(beta * delta, label_smoothing)
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss()
def discopop(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta, chosen_lengths=None, rejected_lengths=None,
             discopop_tau: float = 0.05) -> LossOutput:
    """DiscoPOP / log-ratio modulated loss (Chan Lu et al. 2024, eq. 5), z = βh:
    (1 - m)·(-log σ(z)) + m·exp(-z), m = σ(z/τ). Not monotone in h near z = 0 (by design)."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen_lr - rejected_lr)
    modulation = torch.sigmoid(logits / discopop_tau)
    losses = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss(needs_lengths=True)
def sigmoid_norm(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, *, beta, chosen_lengths=None,
                 rejected_lengths=None) -> LossOutput:
    """Length-normalized DPO (Tülu 3 ``dpo_norm``, TRL ``sigmoid_norm``):
    -log σ(β (r(yw)/|yw| - r(yl)/|yl|)). Typical β is larger (e.g. 5)."""
    chosen_lr, rejected_lr = _logratios(policy_chosen_logps, policy_rejected_logps,
                                        ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * (chosen_lr / chosen_lengths - rejected_lr / rejected_lengths))
    return _output(losses, beta * chosen_lr, beta * rejected_lr)


@pairwise_loss(reference_free=True)
def cpl(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
        ref_rejected_logps=None, *, beta, chosen_lengths=None, rejected_lengths=None,
        alpha: float | None = None, conservative_bias: float = 1.0) -> LossOutput:
    """CPL (Hejna et al. 2024): regret-based preference model with α·logp as the advantage,
    -log [e^{α logp(yw)} / (e^{α logp(yw)} + e^{λ α logp(yl)})]
        = -log σ(α logp(yw) - λ α logp(yl)).

    alpha defaults to beta; conservative_bias λ in (0, 1] (1 = none) weights the rejected
    segment as in the paper's conservative variant. Implicit reward: α · logp.
    """
    _check_range("cpl", "conservative_bias", conservative_bias, 1e-12, 1.0, high_inclusive=True)
    alpha = beta if alpha is None else alpha
    chosen_rewards, rejected_rewards = alpha * policy_chosen_logps, alpha * policy_rejected_logps
    losses = -F.logsigmoid(chosen_rewards - conservative_bias * rejected_rewards)
    return _output(losses, chosen_rewards, rejected_rewards)
