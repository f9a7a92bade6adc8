"""Pairwise preference losses, KTO and the loss registry.

Expected values are derived by hand with python floats (math.*), never with the code under
test. Shared example pair (B = 1), β = 0.1:
    policy chosen  logp(yw) = -5,  reference ref(yw) = -6    -> r_w = 1
    policy rejected logp(yl) = -7, reference ref(yl) = -6.5  -> r_l = -0.5
    h = r_w - r_l = 1.5, βh = 0.15, |yw| = 4, |yl| = 2
    rewards: chosen β r_w = 0.1, rejected β r_l = -0.05, margin 0.15, accuracy 1
"""
import math

import pytest
import torch

from prefopt.losses import (
    PAIRWISE_LOSSES, combine_losses, get_pairwise_loss, kto, validate_hparams,
)
from prefopt.losses.pairwise import log1m_exp

BETA = 0.1
PC, PR, RC, RR = -5.0, -7.0, -6.0, -6.5
LW, LL = 4, 2


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def run(name, beta=BETA, pc=PC, pr=PR, rc=RC, rr=RR, lw=LW, ll=LL, **hparams):
    fn = get_pairwise_loss(name)
    return fn(t(pc), t(pr), t(rc), t(rr), beta=beta,
              chosen_lengths=torch.tensor([lw]), rejected_lengths=torch.tensor([ll]), **hparams)


def close(actual, expected, tol=1e-9):
    return pytest.approx(expected, abs=tol) == float(torch.as_tensor(actual).detach())


# ---------------------------------------------------------------------------------------
# Hand-derived values, one test per loss
# ---------------------------------------------------------------------------------------
def test_dpo_value_and_metrics():
    # -log σ(0.15) = log(1 + e^-0.15) = log(1.860708) = 0.620957
    out = run("dpo")
    assert close(out.losses[0], -logsig(0.15))
    assert close(out.losses[0], 0.620957, tol=1e-6)
    m = out.metrics
    assert close(m["rewards/chosen"], 0.1) and close(m["rewards/rejected"], -0.05)
    assert close(m["rewards/margin"], 0.15) and close(m["rewards/accuracy"], 1.0)
    assert all(not v.requires_grad for v in m.values())


def test_cdpo_value():
    # ε = 0.2: 0.8·(-log σ(0.15)) + 0.2·(-log σ(-0.15)) = 0.8·0.620957 + 0.2·0.770957 = 0.650957
    out = run("cdpo", label_smoothing=0.2)
    assert close(out.losses[0], 0.8 * -logsig(0.15) + 0.2 * -logsig(-0.15))
    assert close(out.losses[0], 0.650957, tol=1e-6)


def test_robust_dpo_value_and_eps_check():
    # ε = 0.1: [0.9·0.620957 + 0.1·log σ(-0.15)] / 0.8 = (0.558861 - 0.077096) / 0.8 = 0.602207
    out = run("robust_dpo", label_smoothing=0.1)
    assert close(out.losses[0], (0.9 * -logsig(0.15) + 0.1 * logsig(-0.15)) / 0.8)
    assert close(out.losses[0], 0.602207, tol=1e-6)
    with pytest.raises(ValueError, match="robust_dpo.*label_smoothing"):
        run("robust_dpo", label_smoothing=0.5)


def test_ipo_value():
    # h̄ = r_w/|yw| - r_l/|yl| = 1/4 + 0.5/2 = 0.5; 1/(2β) = 5; (0.5 - 5)² = 20.25
    assert close(run("ipo").losses[0], 20.25)


def test_hinge_value_and_saturation():
    # max(0, 1 - 0.15) = 0.85; with β = 1: max(0, 1 - 1.5) = 0
    assert close(run("hinge").losses[0], 0.85)
    assert close(run("hinge", beta=1.0).losses[0], 0.0)


def test_rpo_value():
    # dpo + α·NLL(yw)/|yw| = 0.620957 + 0.5·(5/4) = 1.245957
    out = run("rpo", alpha=0.5)
    assert close(out.losses[0], -logsig(0.15) + 0.5 * 5 / 4)
    assert close(out.metrics["nll"], 1.25)


def test_simpo_value_reference_free():
    # β(logp(yw)/|yw| - logp(yl)/|yl|) - γ = 0.1·(-1.25 + 3.5) - 0.5 = -0.275
    # -log σ(-0.275) = log(1 + e^0.275) = log(2.316531) = 0.840071
    fn = get_pairwise_loss("simpo")
    out = fn(t(PC), t(PR), None, None, beta=BETA, chosen_lengths=torch.tensor([LW]),
             rejected_lengths=torch.tensor([LL]), gamma=0.5)
    assert close(out.losses[0], -logsig(-0.275))
    assert close(out.losses[0], 0.840071, tol=1e-6)
    # implicit rewards β·mean logp: -0.125 and -0.35
    assert close(out.metrics["rewards/chosen"], -0.125)
    assert close(out.metrics["rewards/rejected"], -0.35)


def test_orpo_value_reference_free():
    # mean logps x_w = -5/4 = -1.25, x_l = -7/2 = -3.5
    # log odds(x) = x - log(1 - e^x): -1.25 - log(1 - 0.286505) = -0.912400
    #                                 -3.5  - log(1 - 0.030197) = -3.469338
    # difference 2.556938; loss = 1.25 - 0.1·log σ(2.556938) = 1.25 + 0.1·0.074688 = 1.257469
    lo_w = -1.25 - math.log(1 - math.exp(-1.25))
    lo_l = -3.5 - math.log(1 - math.exp(-3.5))
    fn = get_pairwise_loss("orpo")
    out = fn(t(PC), t(PR), None, None, beta=BETA, chosen_lengths=torch.tensor([LW]),
             rejected_lengths=torch.tensor([LL]))
    assert close(out.losses[0], 1.25 - 0.1 * logsig(lo_w - lo_l))
    assert close(out.losses[0], 1.257469, tol=1e-6)
    assert close(out.metrics["log_odds_chosen"], lo_w - lo_l)
    assert close(out.metrics["nll"], 1.25)


def test_orpo_is_finite_when_mean_logp_reaches_zero():
    # p = exp(0) = 1 makes odds infinite; the stable log(1 - e^x) must keep loss and grads finite.
    pc = torch.tensor([0.0, -1e-9, -1e-4], requires_grad=True)
    pr = torch.tensor([-2.0, -2.0, -2.0])
    out = get_pairwise_loss("orpo")(pc, pr, None, None, beta=BETA,
                                    chosen_lengths=torch.ones(3), rejected_lengths=torch.ones(3))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all()


@pytest.mark.parametrize("x", [-1e-3, -0.3, -0.69, -0.7, -5.0, -40.0])
def test_log1m_exp_matches_direct_formula(x):
    assert close(log1m_exp(t(x))[0], math.log(-math.expm1(x)), tol=1e-12)


def test_nca_value():
    # βr_w = 0.1, βr_l = -0.05: -log σ(0.1) - ½ log σ(-0.1) - ½ log σ(0.05)
    expected = -logsig(0.1) - 0.5 * logsig(-0.1) - 0.5 * logsig(0.05)
    assert close(run("nca").losses[0], expected)


def test_exo_value():
    # ε = 0.01: σ(0.15)(log σ(0.15) - log 0.99) + σ(-0.15)(log σ(-0.15) - log 0.01)
    eps = 0.01
    expected = (sig(0.15) * (logsig(0.15) - math.log(1 - eps))
                + sig(-0.15) * (logsig(-0.15) - math.log(eps)))
    assert close(run("exo", label_smoothing=eps).losses[0], expected)
    with pytest.raises(ValueError, match="exo"):
        run("exo", label_smoothing=0.0)


def test_bco_pair_value():
    # δ = 0.02: -log σ(0.1 - 0.02) - log σ(-(-0.05 - 0.02)) = -log σ(0.08) - log σ(0.07)
    out = run("bco_pair", delta=0.02)
    assert close(out.losses[0], -logsig(0.08) - logsig(0.07))
    assert close(out.metrics["rewards/mean"], (0.1 - 0.05) / 2)


def test_sppo_hard_value():
    # (r_w - 1/(2β))² + (r_l + 1/(2β))² = (1 - 5)² + (-0.5 + 5)² = 16 + 20.25 = 36.25
    assert close(run("sppo_hard").losses[0], 36.25)


def test_apo_zero_and_apo_down_values():
    # apo_zero: (1 - σ(0.1)) + σ(-0.05);  apo_down: σ(0.1) + (1 - σ(0.15))
    assert close(run("apo_zero").losses[0], 1 - sig(0.1) + sig(-0.05))
    assert close(run("apo_down").losses[0], sig(0.1) + 1 - sig(0.15))


def test_aot_and_aot_pair_sort_over_the_batch():
    # rows: logp_w = [-5, -7], logp_l = [-7, -5], ref_w = [-6, -6], ref_l = [-6.5, -6]
    # aot: sort(logp_w - logp_l) = sort([2, -2]) = [-2, 2]; sort(ref_w - ref_l) = [0, 0.5]
    #      Δ = [-2, 1.5] -> losses [-log σ(-0.2), -log σ(0.15)]
    # aot_pair: sort(r_w) = sort([1, -1]) = [-1, 1]; sort(r_l) = sort([-0.5, 1]) = [-0.5, 1]
    #      Δ = [-0.5, 0] -> losses [-log σ(-0.05), -log σ(0) = log 2]
    args = (t(-5, -7), t(-7, -5), t(-6, -6), t(-6.5, -6))
    aot = get_pairwise_loss("aot")(*args, beta=BETA).losses
    aot_pair = get_pairwise_loss("aot_pair")(*args, beta=BETA).losses
    assert close(aot[0], -logsig(-0.2)) and close(aot[1], -logsig(0.15))
    assert close(aot_pair[0], -logsig(-0.05)) and close(aot_pair[1], math.log(2))


def test_discopop_value():
    # z = 0.15, m = σ(z/τ) = σ(3): (1 - m)·(-log σ(0.15)) + m·e^-0.15
    m = sig(0.15 / 0.05)
    expected = (1 - m) * -logsig(0.15) + m * math.exp(-0.15)
    assert close(run("discopop", discopop_tau=0.05).losses[0], expected)


def test_sigmoid_norm_value():
    # β (r_w/|yw| - r_l/|yl|) = 0.1·(0.25 + 0.25) = 0.05 -> -log σ(0.05) = log(1.951229) = 0.668460
    assert close(run("sigmoid_norm").losses[0], -logsig(0.05))
    assert close(run("sigmoid_norm").losses[0], 0.668460, tol=1e-6)


def test_cpl_value_reference_free():
    # α defaults to β: -log σ(0.1·(-5) - 0.1·(-7)) = -log σ(0.2)
    # α = 1, λ = 0.5: -log σ(-5 - 0.5·(-7)) = -log σ(-1.5)
    fn = get_pairwise_loss("cpl")
    assert close(fn(t(PC), t(PR), None, None, beta=BETA).losses[0], -logsig(0.2))
    out = fn(t(PC), t(PR), None, None, beta=BETA, alpha=1.0, conservative_bias=0.5)
    assert close(out.losses[0], -logsig(-1.5))
    assert close(out.metrics["rewards/chosen"], -5.0)


# ---------------------------------------------------------------------------------------
# Properties shared by every loss
# ---------------------------------------------------------------------------------------
# Two rows: the shared pair (h = 1.5) and one where the policy prefers the rejected response
# (h = -2). All losses are unsaturated and decreasing in logp(yw) at both points (DiscoPOP is
# non-monotone only very near h = 0; NCA and SPPO only far above the reference).
GRAD_ROWS = dict(pc=[-5.0, -7.0], pr=[-7.0, -5.0], rc=[-6.0, -6.0], rr=[-6.5, -6.0])
# apo_down deliberately lowers the chosen likelihood (for chosen worse than the model's own).
RAISES_CHOSEN = sorted(set(PAIRWISE_LOSSES) - {"apo_down"})


def _grads(name):
    pc = torch.tensor(GRAD_ROWS["pc"], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(GRAD_ROWS["pr"], dtype=torch.float64, requires_grad=True)
    fn = get_pairwise_loss(name)
    refs = (None, None) if fn.reference_free else (t(*GRAD_ROWS["rc"]), t(*GRAD_ROWS["rr"]))
    out = fn(pc, pr, *refs, beta=BETA, chosen_lengths=torch.tensor([4, 3]),
             rejected_lengths=torch.tensor([2, 5]))
    out.losses.sum().backward()
    return out, pc.grad, pr.grad


@pytest.mark.parametrize("name", RAISES_CHOSEN)
def test_raising_chosen_logp_lowers_loss(name):
    out, chosen_grad, _ = _grads(name)
    assert out.losses.shape == (2,)
    assert (chosen_grad < 0).all(), chosen_grad


def test_apo_down_lowers_rejected_logp():
    # d/d logp(yl) of σ(βr_w) + 1 - σ(βh) is β σ'(βh) > 0: descent pushes the rejected down.
    _, _, rejected_grad = _grads("apo_down")
    assert (rejected_grad > 0).all()


def test_hinge_gradient_is_zero_when_saturated():
    pc = torch.tensor([-5.0], dtype=torch.float64, requires_grad=True)
    get_pairwise_loss("hinge")(pc, t(PR), t(RC), t(RR), beta=1.0).losses.sum().backward()
    assert pc.grad.item() == 0.0


@pytest.mark.parametrize("name", sorted(PAIRWISE_LOSSES))
def test_every_loss_reports_standard_metrics(name):
    out, _, _ = _grads(name)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert out.metrics[key].dim() == 0 and not out.metrics[key].requires_grad


def test_reference_based_losses_reject_missing_refs():
    with pytest.raises(ValueError, match="'dpo' needs reference"):
        get_pairwise_loss("dpo")(t(PC), t(PR), None, None, beta=BETA)


def test_length_losses_reject_missing_lengths():
    with pytest.raises(ValueError, match="'ipo' needs chosen_lengths"):
        get_pairwise_loss("ipo")(t(PC), t(PR), t(RC), t(RR), beta=BETA)


def test_declared_properties():
    assert {n for n, f in PAIRWISE_LOSSES.items() if f.reference_free} == {"simpo", "orpo", "cpl"}
    assert get_pairwise_loss("ipo").needs_lengths and not get_pairwise_loss("dpo").needs_lengths
    assert get_pairwise_loss("cdpo").hparams == {"label_smoothing": 0.1}
    assert get_pairwise_loss("dpo").hparams == {}


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
def test_unknown_loss_suggests_close_name():
    with pytest.raises(ValueError, match=r"unknown loss 'dpoo'; did you mean 'dpo'\? \(known: "):
        get_pairwise_loss("dpoo")
    with pytest.raises(ValueError, match=r"did you mean 'dpo'\? \(TRL calls it 'sigmoid'\)"):
        get_pairwise_loss("sigmoid")


def test_unknown_hparam_is_rejected_clearly():
    with pytest.raises(ValueError, match=r"'cdpo'.*'label_smothing'.*accepts: label_smoothing"):
        validate_hparams("cdpo", {"label_smothing": 0.1})
    with pytest.raises(ValueError, match=r"'dpo'.*'gamma'.*accepts: none"):
        validate_hparams("dpo", {"gamma": 1.0})
    with pytest.raises(ValueError, match="'simpo'.*'tau'"):  # also enforced when called
        run("simpo", tau=1.0)
    assert validate_hparams("simpo", {"gamma": 1.0}) == {"gamma": 1.0}
    assert validate_hparams("cdpo", {}) == {"label_smoothing": 0.1}


def test_combine_losses_weighted_sum_and_metrics():
    # dpo + 0.5·simpo(γ = 0): 0.620957 + 0.5·(-log σ(0.225))
    combined = combine_losses([("dpo", 1.0, None), ("simpo", 0.5, {"gamma": 0.0})])
    assert not combined.reference_free and combined.needs_lengths
    out = combined(t(PC), t(PR), t(RC), t(RR), beta=BETA, chosen_lengths=torch.tensor([LW]),
                   rejected_lengths=torch.tensor([LL]))
    assert close(out.losses[0], -logsig(0.15) + 0.5 * -logsig(0.225))
    assert close(out.metrics["dpo/rewards/margin"], 0.15)
    assert close(out.metrics["simpo/rewards/margin"], 0.225)
    assert close(out.metrics["rewards/margin"], 0.15)  # first loss, unprefixed
    assert close(out.metrics["simpo/loss"], -logsig(0.225))


def test_combine_reference_free_losses_run_without_refs():
    combined = combine_losses([("simpo", 1.0, {}), ("cpl", 2.0, {})])
    assert combined.reference_free and combined.needs_lengths
    out = combined(t(PC), t(PR), None, None, beta=BETA, chosen_lengths=torch.tensor([LW]),
                   rejected_lengths=torch.tensor([LL]))
    assert close(out.losses[0], -logsig(0.225 - 0.5) + 2 * -logsig(0.2))


def test_combine_losses_validates_specs_up_front():
    with pytest.raises(ValueError, match="'rpo'.*'alpah'"):
        combine_losses([("dpo", 1.0, {}), ("rpo", 1.0, {"alpah": 1.0})])
    with pytest.raises(ValueError, match="unknown loss 'simpoo'"):
        combine_losses([("simpoo", 1.0, {})])
    with pytest.raises(ValueError, match="twice"):
        combine_losses([("dpo", 1.0, {}), ("dpo", 1.0, {})])


# ---------------------------------------------------------------------------------------
# KTO
# ---------------------------------------------------------------------------------------
def test_kto_values_and_metrics():
    # r = policy - ref = [0.5, -0.5]; labels [desirable, undesirable]
    # z0 = mean([-5 + 5.4, -6 + 6.2]) = mean([0.4, 0.2]) = 0.3
    # desirable:   1 - σ(0.1·(0.5 - 0.3)) = 1 - σ(0.02)
    # undesirable: λU·(1 - σ(0.1·(0.3 + 0.5))) = 2·(1 - σ(0.08))
    policy = torch.tensor([-3.0, -4.0], dtype=torch.float64, requires_grad=True)
    kl_policy = torch.tensor([-5.0, -6.0], dtype=torch.float64, requires_grad=True)
    out = kto(policy, t(-3.5, -3.5), torch.tensor([True, False]), kl_policy,
              t(-5.4, -6.2), beta=BETA, undesirable_weight=2.0)
    assert close(out.losses[0], 1 - sig(0.02)) and close(out.losses[1], 2 * (1 - sig(0.08)))
    assert close(out.metrics["kl"], 0.3)
    assert close(out.metrics["rewards/desirable"], 0.05)
    assert close(out.metrics["rewards/undesirable"], -0.05)
    out.losses.sum().backward()
    assert kl_policy.grad is None  # z0 is a detached baseline


def test_kto_reference_point_is_clamped_at_zero():
    # z0 = mean([-0.4]) < 0 -> 0; desirable loss 1 - σ(0.1·0.5)
    out = kto(t(-3.0), t(-3.5), torch.tensor([True]), t(-5.4), t(-5.0), beta=BETA)
    assert close(out.metrics["kl"], 0.0) and close(out.losses[0], 1 - sig(0.05))
    assert "rewards/undesirable" not in out.metrics


def test_kto_gradient_direction():
    policy = torch.tensor([-3.0, -4.0], dtype=torch.float64, requires_grad=True)
    kto(policy, t(-3.5, -3.5), torch.tensor([True, False]), None, None,
        beta=BETA).losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # raise desirable, lower undesirable
