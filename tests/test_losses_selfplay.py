"""Self-play / Nash losses and pair selection. Expected values derived by hand (python floats).

Shared pair, β = 0.1: logp(yw) = -5, ref(yw) = -6 -> Δ_w = 1; logp(yl) = -7, ref(yl) = -6.5 -> Δ_l = -0.5.
"""
import math

import pytest
import torch

from prefopt.losses import sppo_hard
from prefopt.losses.selfplay import (
    dno_pairs, geometric_mixture_logits, inpo, mean_win_rates, online_ipo, selm, spo_rewards,
    sppo, sppo_pairs,
)

BETA = 0.1


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


W3 = torch.tensor([[[0.5, 0.7, 0.9],
                    [0.3, 0.5, 0.6],
                    [0.1, 0.4, 0.5]]], dtype=torch.float64)


def test_sppo_hand_value_and_gradient():
    pc, pr = t(-5.0, grad=True), t(-7.0, grad=True)
    out = sppo(pc, pr, t(-6.0), t(-6.5), t(0.8), t(0.3), beta=BETA)
    # targets (0.8-0.5)/0.1 = 3 and (0.3-0.5)/0.1 = -2: ½[(1-3)² + (-0.5+2)²] = ½[4 + 2.25]
    assert out.losses.item() == pytest.approx(3.125)
    out.losses.sum().backward()
    assert pc.grad.item() == pytest.approx(1 - 3) and pr.grad.item() == pytest.approx(-0.5 + 2)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1)
    assert out.metrics["sppo/win_rate_chosen"].item() == pytest.approx(0.8)


def test_sppo_with_hard_win_rates_is_half_sppo_hard():
    args = (t(-5.0), t(-7.0), t(-6.0), t(-6.5))
    soft = sppo(*args, t(1.0), t(0.0), beta=BETA).losses
    hard = sppo_hard(*args, beta=BETA).losses
    assert soft.item() == pytest.approx(0.5 * hard.item())


def test_mean_win_rates_spo_rewards_and_sppo_pairs():
    assert mean_win_rates(W3)[0].tolist() == pytest.approx([2.1 / 3, 1.4 / 3, 1.0 / 3])
    # SPO leaves the diagonal out: (0.7+0.9)/2, (0.3+0.6)/2, (0.1+0.4)/2
    assert spo_rewards(W3)[0].tolist() == pytest.approx([0.8, 0.45, 0.25])
    pairs = sppo_pairs(W3)
    assert pairs.chosen.tolist() == [0] and pairs.rejected.tolist() == [2]
    assert pairs.chosen_score.item() == pytest.approx(0.7) and pairs.rejected_score.item() == pytest.approx(1 / 3)
    assert [x.tolist() for x in pairs.flat(3)] == [[0], [2]]


def test_sppo_pairs_ties_pick_two_different_samples():
    pairs = sppo_pairs(torch.full((2, 3, 3), 0.5))
    assert pairs.chosen.tolist() == [0, 0] and pairs.rejected.tolist() == [1, 1]
    assert [x.tolist() for x in pairs.flat(3)] == [[0, 3], [1, 4]]


def test_win_rate_statistics_need_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_win_rates(torch.full((4, 1, 1), 0.5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        spo_rewards(torch.full((4, 1, 1), 0.5))
    with pytest.raises(ValueError, match=r"\(P, K, K\)"):
        spo_rewards(torch.full((4, 3), 0.5))


def test_dno_pairs_keep_only_large_margins():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.45],
                           [0.5, 0.52, 0.49, 0.51]])
    # prompt 0 ranks 0, 2, 3, 1: pairs (0, 1) gap 0.8 kept, (2, 3) gap 0.05 dropped; prompt 1 gaps 0.03, 0.01.
    pairs = dno_pairs(scores, margin=0.2, pairs_per_prompt=2)
    assert pairs.prompt.tolist() == [0] and pairs.chosen.tolist() == [0] and pairs.rejected.tolist() == [1]
    both = dno_pairs(scores, margin=0.0, pairs_per_prompt=2)
    assert both.prompt.tolist() == [0, 0, 1, 1]
    assert both.chosen.tolist() == [0, 2, 1, 3] and both.rejected.tolist() == [1, 3, 2, 0]
    with pytest.raises(ValueError, match="pairs_per_prompt"):
        dno_pairs(scores, margin=0.1, pairs_per_prompt=3)
    with pytest.raises(ValueError, match="margin"):
        dno_pairs(scores, margin=-0.1)


def test_inpo_hand_value():
    # ℓ_θ = -5 - -7 = 2, ℓ_ref = -6 - -6.5 = 0.5, ℓ_t = -5.2 - -6 = 0.8; ρ = 0.25, η = 0.5 -> 1/(2η) = 1
    # residual = 2 - 0.125 - 0.6 = 1.275 -> (1.275 - 1)² = 0.075625
    out = inpo(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(-5.2), t(-6.0), eta=0.5, rho=0.25)
    assert out.losses.item() == pytest.approx(0.275 ** 2)
    with pytest.raises(ValueError, match="eta"):
        inpo(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(-5.2), t(-6.0), eta=0.0, rho=0.25)
    with pytest.raises(ValueError, match="rho"):
        inpo(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(-5.2), t(-6.0), eta=1.0, rho=1.5)


def test_inpo_expected_loss_is_minimized_at_the_mirror_descent_step():
    """Label y ≻ y' with probability p: the expected loss is stationary where ℓ_θ - ρℓ_ref - (1-ρ)ℓ_t
    = (2p - 1)/(2η) = (P(y ≻ π_t) - P(y' ≻ π_t))/η for π_t uniform on {y, y'} (P(y ≻ π_t) = p/2 + 1/4)."""
    p, eta, rho = 0.8, 0.25, 0.3
    ref_y, ref_y2, prev_y, prev_y2 = -6.0, -6.5, -5.2, -6.0
    anchor = rho * (ref_y - ref_y2) + (1 - rho) * (prev_y - prev_y2)
    target = ((p / 2 + 0.25) - ((1 - p) / 2 + 0.25)) / eta
    pol_y, pol_y2 = t(-5.0 + anchor + target, grad=True), t(-5.0, grad=True)
    forward = inpo(pol_y, pol_y2, t(ref_y), t(ref_y2), t(prev_y), t(prev_y2), eta=eta, rho=rho).losses
    backward = inpo(pol_y2, pol_y, t(ref_y2), t(ref_y), t(prev_y2), t(prev_y), eta=eta, rho=rho).losses
    (p * forward + (1 - p) * backward).sum().backward()
    assert abs(pol_y.grad.item()) < 1e-9 and abs(pol_y2.grad.item()) < 1e-9


def test_online_ipo_hand_value():
    # Δ(y) = 1, Δ(y') = -0.5; (P(y≻y'') - P(y'≻y''))/β = (0.7 - 0.4)/0.1 = 3 -> (1.5 - 3)² = 2.25
    out = online_ipo(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(0.7), t(0.4), beta=BETA)
    assert out.losses.item() == pytest.approx(2.25)
    # EGPO's variance-reduced form (y'' drawn like y, y'): targets (P(y ≻ y'), ½)
    out = online_ipo(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(0.65), t(0.5), beta=BETA)
    assert out.losses.item() == pytest.approx((1.5 - 1.5) ** 2)
    # b preferred: metrics treat b as the chosen side
    out = online_ipo(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(0.2), t(0.4), beta=BETA)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.05)


def test_selm_hand_value_and_optimism_sign():
    ref_resp = t(-4.0, grad=True)
    out = selm(t(-5.0), t(-7.0), t(-6.0), t(-6.5), ref_resp, t(-5.0), beta=BETA, alpha=0.5)
    # -log σ(0.1 * 1.5) + 0.5 * 0.1 * ((-4) - (-5))
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.15)) + 0.05)
    out.losses.sum().backward()
    # a positive gradient: descent lowers log π_θ(y_ref), as in shenao-zhang/SELM optimistic_dpo_loss
    assert ref_resp.grad.item() == pytest.approx(0.05)
    assert selm(t(-5.0), t(-7.0), t(-6.0), t(-6.5), t(-4.0), t(-5.0), beta=BETA, alpha=0.0).losses.item() \
        == pytest.approx(math.log1p(math.exp(-0.15)))


def test_geometric_mixture_logits():
    policy = torch.log(torch.tensor([[0.25, 0.75]]))
    ref = torch.log(torch.tensor([[0.75, 0.25]]))
    assert geometric_mixture_logits(policy, ref, 0.5).exp().tolist()[0] == pytest.approx([0.5, 0.5])
    assert geometric_mixture_logits(policy + 3.0, ref, 0.0).exp().tolist()[0] == pytest.approx([0.25, 0.75])
    assert geometric_mixture_logits(policy, ref - 1.0, 1.0).exp().tolist()[0] == pytest.approx([0.75, 0.25])
    a = 0.25 ** 0.75 * 0.75 ** 0.25
    b = 0.75 ** 0.75 * 0.25 ** 0.25
    assert geometric_mixture_logits(policy, ref, 0.25).exp().tolist()[0] == pytest.approx([a / (a + b), b / (a + b)])
    with pytest.raises(ValueError, match="mixture_coef"):
        geometric_mixture_logits(policy, ref, 1.5)


def test_losses_reject_bad_strengths():
    args = (t(-5.0), t(-7.0), t(-6.0), t(-6.5))
    with pytest.raises(ValueError, match="beta"):
        sppo(*args, t(0.8), t(0.3), beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        online_ipo(*args, t(0.8), t(0.3), beta=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        selm(*args, t(-4.0), t(-5.0), beta=BETA, alpha=-0.1)
