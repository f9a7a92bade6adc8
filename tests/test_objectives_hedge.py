"""Hedge (multiplicative weights): hand values, regret bounds, tracking, checkpoints, ensembles."""
import json
import math

import pytest
import torch

from prefopt.errors import ConfigError, DataError
from prefopt.objectives.hedge import Hedge, HedgeJudge, HedgeReward, feedback_losses, tuned_eta


def test_hand_values_two_experts():
    h = Hedge(["a", "b"], eta=math.log(3))
    assert h.weights.tolist() == pytest.approx([0.5, 0.5])
    assert h.update([1.0, 0.0]).tolist() == pytest.approx([0.5])
    # w ∝ (e^{-ln 3}, 1) = (1/3, 1) -> (1/4, 3/4)
    assert h.weights.tolist() == pytest.approx([0.25, 0.75])
    assert h.update([0.0, 1.0]).tolist() == pytest.approx([0.75])
    # ensemble paid 1.25, each expert 1: regret 0.25; both experts at 1 -> weights back to uniform
    assert h.regret == pytest.approx(0.25) and h.weights.tolist() == pytest.approx([0.5, 0.5])
    assert h.combine([0.2, 0.6]).item() == pytest.approx(0.4)
    m = h.metrics()
    assert m["hedge/weight/a"] == pytest.approx(0.5) and m["hedge/regret"] == pytest.approx(0.25)


def stream(rounds, k, seed, switch=None):
    """Random losses in [0, 1]; expert 0 is best (mean 0.3) until ``switch``, then expert 1."""
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(rounds, k, generator=g, dtype=torch.float64) * 0.4 + 0.5
    best = torch.zeros(rounds, dtype=torch.long)
    if switch is not None:
        best[switch:] = 1
    losses[torch.arange(rounds), best] -= 0.4
    return losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regret_under_sqrt_T_lnK_over_2_for_the_tuned_eta(seed):
    T, K = 2000, 5
    h = Hedge(K, horizon=T)
    assert h.eta == pytest.approx(math.sqrt(8 * math.log(K) / T))
    losses = stream(T, K, seed, switch=T // 2)
    h.update(losses)
    bound = math.sqrt(T * math.log(K) / 2)
    assert h.regret_bound() == pytest.approx(bound)
    assert 0 < h.regret <= bound
    # the same stream measured outside the class: Σ⟨w_t, ℓ_t⟩ - min_k Σ ℓ_k
    cum = torch.zeros(K, dtype=torch.float64)
    paid = 0.0
    for row in losses:
        paid += float(torch.softmax(-h.eta * cum, 0) @ row)
        cum += row
    assert h.regret == pytest.approx(paid - float(cum.min()))


def test_adversarial_stream_regret_stays_under_the_bound():
    """Losses chosen against the current weights (the expert with the highest weight loses 1)."""
    T, K = 1000, 3
    for h in (Hedge(K, horizon=T), Hedge(K)):
        for _ in range(T):
            row = torch.zeros(K, dtype=torch.float64)
            row[int(h.weights.argmax())] = 1.0
            h.update(row)
        assert h.regret <= h.regret_bound()
    assert h.mode == "doubling" and h.regret_bound() == pytest.approx(
        math.sqrt(2) / (math.sqrt(2) - 1) * math.sqrt(T * math.log(K) / 2))


def test_weights_track_a_switch_of_the_best_expert():
    T, K = 3000, 4
    losses = stream(T, K, seed=5, switch=1000)
    for h in (Hedge(K, eta=0.05), Hedge(K)):
        h.update(losses[:1000])
        assert int(h.weights.argmax()) == 0 and float(h.weights[0]) > 0.9
        h.update(losses[1000:])
        assert int(h.weights.argmax()) == 1 and float(h.weights[1]) > 0.9
        assert h.metrics()["hedge/best_expert"] == 1.0


def test_doubling_trick_restarts_each_epoch():
    h = Hedge(["a", "b"])
    assert h.eta == pytest.approx(tuned_eta(2, 1))
    h.update([1.0, 0.0])  # epoch 0 (1 round) ends: weights restart
    assert h.epoch == 1 and h.weights.tolist() == pytest.approx([0.5, 0.5])
    assert h.eta == pytest.approx(math.sqrt(8 * math.log(2) / 2))
    h.update([1.0, 0.0])
    assert float(h.weights[1]) > 0.5 and h.epoch == 1
    h.update([1.0, 0.0])  # epoch 1 (2 rounds) ends
    assert h.epoch == 2 and h.weights.tolist() == pytest.approx([0.5, 0.5])


def test_state_dict_is_a_plain_tree_and_resumes_exactly():
    losses = stream(40, 3, seed=9)
    a = Hedge(["x", "y", "z"])
    a.update(losses[:13])
    state = a.state_dict()
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    json.dumps(plain)  # everything but the tensors is JSON
    assert {k for k, v in state.items() if isinstance(v, torch.Tensor)} == {"expert_loss", "epoch_loss"}
    b = Hedge(["x", "y", "z"])
    b.load_state_dict({**plain, **{k: v.tolist() for k, v in state.items() if isinstance(v, torch.Tensor)}})
    assert torch.equal(a.update(losses[13:]), b.update(losses[13:]))
    assert a.regret == b.regret and torch.equal(a.weights, b.weights)
    with pytest.raises(ConfigError, match="names"):
        Hedge(["x", "y", "w"]).load_state_dict(state)
    with pytest.raises(ConfigError, match="mode"):
        Hedge(["x", "y", "z"], eta=0.1).load_state_dict(state)


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="at least 2 experts"):
        Hedge(["only"])
    for eta in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="eta"):
            Hedge(3, eta=eta)
    with pytest.raises(ConfigError, match="horizon"):
        Hedge(3, horizon=0)
    with pytest.raises(ConfigError, match="not both"):
        Hedge(3, eta=0.1, horizon=10)
    h = Hedge(["a", "b"], eta=0.1)
    with pytest.raises(DataError, match=r"loss 1.5 for expert 'b' in round 1"):
        h.update([[0.0, 0.5], [0.2, 1.5]])
    assert h.rounds == 0  # a bad batch changes nothing
    with pytest.raises(DataError, match="nan"):
        h.update([float("nan"), 0.0])
    with pytest.raises(DataError, match="-0.1"):
        h.update([-0.1, 0.0])
    with pytest.raises(DataError, match="K = 2"):
        h.update([0.1, 0.2, 0.3])


def test_feedback_losses_hand_values():
    p = [[0.9, 0.2, 0.5]]
    assert feedback_losses(p, [1.0]).tolist()[0] == pytest.approx([0.1, 0.8, 0.5])
    assert feedback_losses(p, [1.0], "squared").tolist()[0] == pytest.approx([0.01, 0.64, 0.25])
    assert feedback_losses(p, [0.0], "zero_one").tolist()[0] == pytest.approx([1.0, 0.0, 0.5])
    with pytest.raises(DataError, match="label 2.0 for pair 0"):
        feedback_losses(p, [2.0])
    with pytest.raises(ConfigError, match="expected one of"):
        feedback_losses(p, [1.0], "hinge")


def test_hedge_judge_learns_to_trust_the_good_judge():
    def gold(prompt, a, b):
        return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5

    def adversarial(prompt, a, b):
        return 1.0 - gold(prompt, a, b)

    def coin(prompt, a, b):
        return 0.5

    ens = HedgeJudge([gold, coin, adversarial], Hedge(["gold", "coin", "adversarial"], eta=0.5))
    assert ens("p", "ab", "a") == pytest.approx(0.5)  # uniform start: (1 + 0.5 + 0) / 3
    a, b = ["aa", "a", "aaa", "a"] * 5, ["a", "aaa", "a", "aa"] * 5
    labels = [1.0 if len(x) > len(y) else 0.0 for x, y in zip(a, b)]
    losses = ens.feedback(["p"] * len(a), a, b, labels)
    assert losses[0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert ens.hedge.names[int(ens.hedge.weights.argmax())] == "gold"
    assert ens("p", "ab", "a") > 0.95

    def broken(prompt, a, b):
        return 3.0

    bad = HedgeJudge([gold, broken], Hedge(["gold", "broken"], eta=0.5))
    with pytest.raises(Exception, match="judge 'broken': returned 3.0 on pair 0"):
        bad.feedback(["p"], ["a"], ["b"], [1.0])
    with pytest.raises(ConfigError, match="experts"):
        HedgeJudge([gold, coin], Hedge(["coin", "gold"], eta=0.5))


def test_hedge_reward_combines_scorers_and_learns_from_pairs():
    def length(prompts, responses):
        return [float(len(r)) for r in responses]

    def shortness(prompts, responses):
        return [-float(len(r)) for r in responses]

    ens = HedgeReward([length, shortness], Hedge(["length", "shortness"], eta=1.0), temperature=0.5)
    assert ens(["p", "p"], ["abc", "a"]) == pytest.approx([0.0, 0.0])
    ens.feedback(["p"] * 6, ["aaa"] * 6, ["a"] * 6, [1.0] * 6)  # longer is better
    w = ens.hedge.weights
    assert float(w[0]) > 0.99
    assert ens(["p"], ["abc"])[0] == pytest.approx(3.0 * float(w[0] - w[1]))
