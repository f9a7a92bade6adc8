"""Online-RL math: advantages, GAE, KL estimators, PPO losses, KL control.

Expected values are derived by hand in the comments.
"""
import math

import pytest
import torch

from prefopt.losses import (
    AdaptiveKLController, entropy_from_logits, explained_variance, gae, grpo_advantages,
    is_all_equal_group, kl_estimate, ppo_policy_loss, reinforce_pp_advantages,
    remax_advantages, rloo_advantages, value_loss, whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def approx(x, tol=1e-6):
    return pytest.approx(x, abs=tol)


# ---------------------------------------------------------------------------------------
# Sequence-level advantages
# ---------------------------------------------------------------------------------------
REWARDS = t(1.0, 2.0, 3.0, 10.0, 20.0, 5.0)
GROUP = torch.tensor([0, 0, 0, 7, 7, 3])  # ids need not be contiguous; group 3 is a singleton


def test_rloo_leave_one_out_baseline():
    # group 0: 1 - (2+3)/2 = -1.5; 2 - (1+3)/2 = 0; 3 - (1+2)/2 = 1.5
    # group 7: 10 - 20 = -10; 20 - 10 = 10;  singleton: no baseline -> 0
    assert rloo_advantages(REWARDS, GROUP).tolist() == [-1.5, 0.0, 1.5, -10.0, 10.0, 0.0]


def test_grpo_group_normalized():
    # group 0: mean 2, unbiased std sqrt((1 + 0 + 1)/2) = 1 -> [-1, 0, 1]
    # group 7: mean 15, std sqrt((25 + 25)/1) = sqrt(50) -> ±5/sqrt(50) = ±0.707107
    adv = grpo_advantages(REWARDS, GROUP)  # eps = 1e-6 shifts these by < 1e-6
    assert adv[:5].tolist() == approx([-1.0, 0.0, 1.0, -5 / math.sqrt(50), 5 / math.sqrt(50)])
    assert adv[5].item() == 0.0  # singleton: centred reward is 0
    # Dr. GRPO: mean-centred only
    assert grpo_advantages(REWARDS, GROUP, normalize_std=False).tolist() == \
        [-1.0, 0.0, 1.0, -5.0, 5.0, 0.0]


def test_grpo_all_equal_group_gives_zero_not_nan():
    assert grpo_advantages(t(1.0, 1.0), torch.tensor([0, 0])).tolist() == [0.0, 0.0]


def test_remax_subtracts_greedy_reward():
    # [1 - 0.5, 0 - 0.5] = [0.5, -0.5]
    assert remax_advantages(t(1.0, 0.0), t(0.5, 0.5)).tolist() == [0.5, -0.5]


def test_is_all_equal_group():
    rewards = t(1.0, 1.0, 0.0, 1.0, 2.0, 2.0)
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    assert is_all_equal_group(rewards, group).tolist() == [True, True, False, False, True, True]


# ---------------------------------------------------------------------------------------
# Token-level advantages
# ---------------------------------------------------------------------------------------
def test_whiten_over_masked_tokens():
    # unmasked [1, 2, 3, 4]: mean 2.5, population var (2.25+0.25+0.25+2.25)/4 = 1.25
    # -> (x - 2.5)/sqrt(1.25) = [-1.341641, -0.447214, 0.447214, 1.341641]
    x = t([1.0, 2.0, 3.0], [4.0, 9.0, 9.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    out = whiten(x, mask)
    assert out[mask].tolist() == approx([-1.341641, -0.447214, 0.447214, 1.341641])
    assert out[~mask].tolist() == [0.0, 0.0]


def test_reinforce_pp_returns_to_go_then_global_whitening():
    # γ = 0.5. row 0 rewards [0, 0, 1] -> returns [0.25, 0.5, 1]
    #          row 1 rewards [0, 2, pad] -> returns [1, 2, 0]
    # values [0.25, 0.5, 1, 1, 2]: mean 0.95, var (0.49+0.2025+0.0025+0.0025+1.1025)/5 = 0.36
    # -> (x - 0.95)/0.6 = [-1.166667, -0.75, 0.083333, 0.083333, 1.75]
    rewards = t([0.0, 0.0, 1.0], [0.0, 2.0, 7.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    out = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    assert out[mask].tolist() == approx([-1.166667, -0.75, 0.083333, 0.083333, 1.75], 1e-5)
    assert out[1, 2].item() == 0.0


def test_gae_hand_example():
    # γ = 0.9, λ = 0.8 (γλ = 0.72). Row 0: rewards [0, 0, 1], values [0.5, 0.6, 0.7]
    #   δ2 = 1 + 0.9·0 - 0.7 = 0.3                 A2 = 0.3
    #   δ1 = 0 + 0.9·0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72·0.3 = 0.246
    #   δ0 = 0 + 0.9·0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72·0.246 = 0.21712
    #   returns = A + V = [0.71712, 0.846, 1.0]
    # Row 1 (2 real tokens, padded value 99 must be ignored): rewards [0, 1], values [0.2, 0.4]
    #   δ1 = 1 - 0.4 = 0.6, A1 = 0.6;  δ0 = 0.9·0.4 - 0.2 = 0.16, A0 = 0.16 + 0.72·0.6 = 0.592
    #   returns [0.792, 1.0, 0]
    rewards = t([0.0, 0.0, 1.0], [0.0, 1.0, 0.0])
    values = t([0.5, 0.6, 0.7], [0.2, 0.4, 99.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert advantages.tolist() == [approx([0.21712, 0.246, 0.3]), approx([0.592, 0.6, 0.0])]
    assert returns.tolist() == [approx([0.71712, 0.846, 1.0]), approx([0.792, 1.0, 0.0])]


# ---------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------
def test_kl_estimators():
    # logp - ref = [0.5, -1]
    # k1 = [0.5, -1];  k2 = ½·[0.25, 1] = [0.125, 0.5]
    # k3 = e^{ref-logp} - (ref-logp) - 1 = [e^-0.5 + 0.5 - 1, e^1 - 1 - 1] = [0.106531, 0.718282]
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)
    assert kl_estimate(logp, ref, "k1").tolist() == approx([0.5, -1.0])
    assert kl_estimate(logp, ref, "k2").tolist() == approx([0.125, 0.5])
    assert kl_estimate(logp, ref, "k3").tolist() == approx(
        [math.exp(-0.5) - 0.5, math.e - 2.0])
    assert kl_estimate(logp, ref, "k3").tolist() == approx([0.106531, 0.718282])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, "k4")


# ---------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------
def test_ppo_clip_gradients_and_clipfrac():
    # log-ratios and advantages per token (clip 0.2):
    #   tok0: ρ = e^0.5 = 1.648721 > 1.2, A = +1 -> max(-1.6487, -1.2) = -1.2, clipped, grad 0
    #   tok1: ρ = 1,   A = +1 -> -1, grad dL/dlogp = -A ρ = -1
    #   tok2: ρ = e^-0.5 = 0.606531 < 0.8, A = +1 -> max(-0.6065, -0.8) = -0.6065 (pessimistic
    #         branch is the unclipped one), grad -0.606531
    #   tok3: ρ = e^0.5, A = -1 -> max(1.6487, 1.2) = 1.6487, unclipped, grad +1.648721
    #   tok4: padding with a garbage log-ratio of 200: loss 0, grad 0 (no NaN)
    # clipfrac = 1/4; approx_kl = ½ mean([0.25, 0, 0.25, 0.25]) = 0.09375
    old = t([0.0, 0.0, 0.0, 0.0, -100.0])
    logp = t([0.5, 0.0, -0.5, 0.5, 100.0]).requires_grad_()
    adv = t([1.0, 1.0, 1.0, -1.0, 1.0])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    out = ppo_policy_loss(logp, old, adv, mask)
    e = math.exp(0.5)
    assert out.losses[0].tolist() == approx([-1.2, -1.0, -1 / e, e, 0.0])
    out.losses.sum().backward()
    assert logp.grad[0].tolist() == approx([0.0, -1.0, -1 / e, e, 0.0])
    assert out.metrics["clipfrac"].item() == approx(0.25)
    assert out.metrics["approx_kl"].item() == approx(0.09375)


def test_ppo_clip_higher_and_sequence_advantages():
    # DAPO clip-higher 0.28: ρ = e^0.5 > 1.28 -> loss -1.28; advantages given per sequence (N,)
    out = ppo_policy_loss(t([0.5]), t([0.0]), t(1.0), torch.ones(1, 1, dtype=torch.bool),
                          clip_high=0.28)
    assert out.losses.item() == approx(-1.28)


def test_value_loss_clipping():
    # clip 0.2, ½ max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±0.2):
    #   tok0: V 1.0, old 0.5, R 2.0: unclipped 1, V_clip 0.7 -> 1.69; loss 0.845, grad 0
    #   tok1: V 1.0, old 0.5, R 0.5: unclipped 0.25, V_clip 0.7 -> 0.04; loss 0.125, grad V-R = 0.5
    #   tok2: V 0.5, old 0.5, R 0.0: both 0.25; loss 0.125
    # vf_clipfrac = 1/3
    values = t([1.0, 1.0, 0.5]).requires_grad_()
    out = value_loss(values, t([0.5, 0.5, 0.5]), t([2.0, 0.5, 0.0]),
                     torch.ones(1, 3, dtype=torch.bool), clip=0.2)
    assert out.losses[0].tolist() == approx([0.845, 0.125, 0.125])
    out.losses.sum().backward()
    assert values.grad[0].tolist() == approx([0.0, 0.5, 0.5])
    assert out.metrics["vf_clipfrac"].item() == approx(1 / 3)


# ---------------------------------------------------------------------------------------
# Diagnostics and KL control
# ---------------------------------------------------------------------------------------
def test_entropy_from_logits():
    # probs [¼, ¼, ½] (logits [0, 0, ln 2]): H = 2·¼·ln 4 + ½·ln 2 = 1.5 ln 2
    assert entropy_from_logits(t([0.0, 0.0, math.log(2)])).tolist() == approx([1.5 * math.log(2)])
    # huge logits stay exact: two equal -> ln 2 (also in fp32)
    assert entropy_from_logits(t([1000.0, 1000.0])).item() == approx(math.log(2))
    big = torch.tensor([1000.0, 1000.0])
    assert entropy_from_logits(big).item() == approx(math.log(2))
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)  # one chunk, no split
    assert torch.allclose(entropy_from_logits(logits, chunk_size=2), expected, atol=1e-6)


def test_explained_variance():
    # returns [1, 2, 3], values [1, 2, 2]: residual [0, 0, 1], var 2/9; var(returns) 2/3
    # 1 - (2/9)/(2/3) = 2/3
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert explained_variance(t([1.0, 2.0, 2.0]), t([1.0, 2.0, 3.0]), mask).item() == approx(2 / 3)
    assert explained_variance(t([1.0, 2.0, 3.0]), t([1.0, 2.0, 3.0]), mask).item() == approx(1.0)


def test_adaptive_kl_controller_direction_and_state():
    # KL 12 vs target 6: error clip(1, ±0.2) = 0.2 -> β = 0.1·(1 + 0.2·256/10000) = 0.100512
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, n_steps=256) == approx(0.100512, 1e-12)
    # KL 3: error clip(-0.5) = -0.2 -> β shrinks
    before = ctl.value
    assert ctl.update(3.0, n_steps=256) < before
    # KL on target: unchanged
    before = ctl.value
    assert ctl.update(6.0, n_steps=256) == before
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()
