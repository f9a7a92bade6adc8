"""MODPO loss (hand-derived values, the reference code's formula) and its margin sources."""
import copy
import math

import pytest
import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.errors import ConfigError, DataError
from prefopt.losses.modpo import check_modpo_weights, modpo
from prefopt.losses.pairwise import dpo
from prefopt.objectives.margins import (add_scorer_columns, implicit_reward_columns, implicit_reward_margins,
                                        score_margins, scorer_margins, stack_margins)

T = torch.tensor


def test_modpo_two_objectives_by_hand():
    # β = 0.5, w = (0.5, 0.5). Δ(yw) = -1 - (-2) = 1, Δ(yl) = -3 - (-2) = -1; margins r(yw) = 0.4, r(yl) = -0.6.
    # r̂(yw) = (0.5·1 - 0.5·0.4) / 0.5 = 0.6; r̂(yl) = (0.5·(-1) - 0.5·(-0.6)) / 0.5 = -0.4; logit 1.
    out = modpo(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5, chosen_margins=T([0.4]),
                rejected_margins=T([-0.6]), weights=[0.5, 0.5])
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1.0)))  # -log σ(1) = 0.31326
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.4)
    assert out.metrics["rewards/accuracy"].item() == 1.0
    assert out.metrics["margins/chosen_minus_rejected"].item() == pytest.approx(0.5)  # 0.5·(0.4 + 0.6)


def test_modpo_three_objectives_and_hinge_by_hand():
    # β = 1, w = (0.25, 0.25, 0.5). Δ(yw) = 0.2, Δ(yl) = 0; margins yw (1, 2): w·r = 0.25 + 1 = 1.25; yl (0, 0).
    # r̂(yw) = (0.2 - 1.25) / 0.25 = -4.2, r̂(yl) = 0 -> logit -4.2.
    args = (T([0.2, 0.0]), T([0.0, 0.0]), T([0.0, 0.0]), T([0.0, 0.0]))
    kw = dict(beta=1.0, chosen_margins=T([[1.0, 2.0], [0.0, 0.0]]), rejected_margins=T([[0.0, 0.0], [0.0, 0.0]]),
              weights=[0.25, 0.25, 0.5])
    sig = modpo(*args, **kw).losses
    assert sig[0].item() == pytest.approx(4.2 + math.log1p(math.exp(-4.2)))  # log(1 + e^4.2) = 4.21489
    assert sig[1].item() == pytest.approx(math.log(2.0))  # logit 0
    hinge = modpo(*args, **kw, loss_type="hinge").losses
    assert hinge.tolist() == pytest.approx([5.2, 1.0])  # max(0, 1 - logit)


def test_modpo_matches_the_reference_formula():
    """Reference: ZHZisZZ/modpo @ 2e2df20, src/trainer/modpo_trainer.py lines 151-156 (MODPOTrainer.modpo_loss)::

        chosen_rewards   = (1/self.w[0])*(self.beta * (policy_chosen_logps   - reference_chosen_logps)   - chosen_margin_reward   @ self.w[1:])
        rejected_rewards = (1/self.w[0])*(self.beta * (policy_rejected_logps - reference_rejected_logps) - rejected_margin_reward @ self.w[1:])
        logits = chosen_rewards - rejected_rewards
        losses = -F.logsigmoid(logits)          # loss_type == "sigmoid"

    with margin rewards (B, n-1) from get_batch_metrics (line 192-194).
    """
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 for _ in range(4))
    mc, mr = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    w, beta = torch.tensor([0.2, 0.3, 0.5]), 0.1
    chosen_rewards = (1 / w[0]) * (beta * (pc - rc) - mc @ w[1:])
    rejected_rewards = (1 / w[0]) * (beta * (pr - rr) - mr @ w[1:])
    expected = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
    out = modpo(pc, pr, rc, rr, beta=beta, chosen_margins=mc, rejected_margins=mr, weights=w.tolist())
    torch.testing.assert_close(out.losses, expected)


def test_modpo_with_all_weight_on_the_preference_is_dpo_and_margins_get_no_gradient():
    pc = T([-1.0, -2.0], requires_grad=True)
    args = (pc, T([-2.5, -1.0]), T([-1.5, -1.8]), T([-2.0, -1.2]))
    margins = T([3.0, -1.0], requires_grad=True)
    out = modpo(*args, beta=0.3, chosen_margins=margins, rejected_margins=T([0.0, 5.0]), weights=[1.0, 0.0])
    torch.testing.assert_close(out.losses, dpo(*args, beta=0.3).losses)
    out.losses.sum().backward()
    assert margins.grad is None and pc.grad is not None


def test_modpo_refuses_bad_weights_and_margin_shapes():
    args = (T([-1.0, -1.0]), T([-2.0, -2.0]), T([-1.0, -1.0]), T([-2.0, -2.0]))
    m = T([0.0, 0.0])
    with pytest.raises(ConfigError, match=r"w0=0.0001 .* must be ≥ 0.001: the MODPO loss divides by it"):
        modpo(*args, beta=0.1, chosen_margins=m, rejected_margins=m, weights=[1e-4, 1 - 1e-4])
    with pytest.raises(ConfigError, match=r"sum 1.1\), expected weights summing to 1"):
        check_modpo_weights([0.5, 0.6])
    with pytest.raises(ConfigError, match="expected finite non-negative weights"):
        check_modpo_weights([1.2, -0.2])
    with pytest.raises(ConfigError, match=r"chosen margins: got shape \(3,\), expected \(2, 1\)"):
        modpo(*args, beta=0.1, chosen_margins=T([0.0, 0.0, 0.0]), rejected_margins=m, weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"rejected margins: got shape \(2, 1\), expected \(2, 2\)"):
        modpo(*args, beta=0.1, chosen_margins=torch.zeros(2, 2), rejected_margins=torch.zeros(2, 1),
              weights=[0.4, 0.3, 0.3])
    with pytest.raises(ConfigError, match="loss_type: got 'ipo'"):
        modpo(*args, beta=0.1, chosen_margins=m, rejected_margins=m, weights=[0.5, 0.5], loss_type="ipo")


def _batch(scores):
    pairs = [EncodedPair([1, 2], [3], [4, 5], index=10 + i, scores=s) for i, s in enumerate(scores)]
    return collate_pairs(pairs, pad_id=0)


def test_score_margins_read_columns_and_name_missing_ones():
    batch = _batch([{"brevity": (0.5, -0.5), "info": (1.0, 2.0)}, {"brevity": (0.25, 0.0), "info": (0.0, 1.0)}])
    chosen, rejected = score_margins(batch, "brevity")
    assert chosen.tolist() == [0.5, 0.25] and rejected.tolist() == [-0.5, 0.0]
    with pytest.raises(ConfigError, match=r"no score column 'positivity' \(available: brevity, info\)"):
        score_margins(batch, "positivity")
    partial = _batch([{"brevity": (0.5, -0.5)}, {"info": (0.0, 1.0)}])
    with pytest.raises(DataError, match="pair 11 has no 'brevity' score"):
        score_margins(partial, "brevity")


def test_scorer_margins_and_precomputed_columns():
    calls = []

    def scorer(prompts, responses):
        calls.append(len(responses))
        return {"len": [float(len(r)) for r in responses], "bang": [float("!" in r) for r in responses]}

    chosen, rejected = scorer_margins(scorer, ["p", "q"], ["aa!", "b"], ["c", "dddd"], "len")
    assert chosen.tolist() == [3.0, 1.0] and rejected.tolist() == [1.0, 4.0] and calls == [4]
    with pytest.raises(ConfigError, match=r"no objective 'size' \(available: len, bang\)"):
        scorer_margins(scorer, ["p"], ["a"], ["b"], "size")
    with pytest.raises(ConfigError, match=r"scorer returned shape \(1,\), expected \(2,\)"):
        scorer_margins(lambda p, r: [0.0], ["p"], ["a"], ["b"])
    rows = [{"prompt": "p", "chosen": "a!", "rejected": "bbb", "scores": {"gold": [1, 0]}},
            {"prompt": "q", "chosen": "c", "rejected": "d!"}]
    scored = add_scorer_columns(rows, scorer, ["bang"], batch_size=1)
    assert scored[0]["scores"] == {"gold": [1, 0], "bang": [1.0, 0.0]}
    assert scored[1]["scores"] == {"bang": [0.0, 1.0]}
    assert "bang" not in rows[0]["scores"]  # the input rows are not modified


def test_implicit_reward_margins_are_beta_log_ratios(tiny_llama):
    from prefopt.models.logprobs import sequence_logps

    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch([{}, {}])
    chosen, rejected = implicit_reward_margins(other, tiny_llama, batch, beta=0.2)
    with torch.no_grad():
        expected = 0.2 * (sequence_logps(other, batch.chosen)[0] - sequence_logps(tiny_llama, batch.chosen)[0])
    torch.testing.assert_close(chosen, expected)
    assert chosen.shape == rejected.shape == (2,) and bool((chosen != 0).all())
    same = implicit_reward_margins(tiny_llama, tiny_llama, batch, beta=0.2)
    assert same[0].abs().max().item() == 0.0
    pairs = [EncodedPair([1, 2], [3], [4, 5], index=10), EncodedPair([1, 2], [3, 6], [4], index=11)]
    columns = implicit_reward_columns(other, tiny_llama, pairs, 0.2, "rm_k", pad_id=0, batch_size=1)
    assert pairs[0].scores == {} and set(columns[1].scores) == {"rm_k"}
    direct = implicit_reward_margins(other, tiny_llama, collate_pairs(pairs, 0), beta=0.2)
    from_column = score_margins(collate_pairs(columns, 0), "rm_k")
    torch.testing.assert_close(from_column[0], direct[0])
    torch.testing.assert_close(from_column[1], direct[1])


def test_stack_margins_orders_sources_and_names_a_bad_one():
    c, r = stack_margins({"a": (T([1.0, 2.0]), T([0.0, 0.0])), "b": (T([3.0, 4.0]), T([5.0, 6.0]))}, 2)
    assert c.tolist() == [[1.0, 3.0], [2.0, 4.0]] and r.tolist() == [[0.0, 5.0], [0.0, 6.0]]
    with pytest.raises(ConfigError, match=r"modpo margin 'rm': rejected margins have shape \(2, 1\), expected \(2,\)"):
        stack_margins({"rm": (T([1.0, 2.0]), torch.zeros(2, 1))}, 2)
