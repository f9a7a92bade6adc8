"""Scorers: reward functions by name, vector rewards, weighted sums, judges and every error path."""
import math

import pytest

from prefopt.errors import ConfigError
from prefopt.rollout.scorers import (Judge, RewardError, RewardFunction, WeightedFunction, WeightedReward,
                                     build_reward, judge_from_reward, resolve_judge, resolve_scorer)
from prefopt.tasks import get_task
from prefopt.train.online_config import RewardSpec

P = ["p0", "p1", "p2"]


def _rf(name, **kw):
    fn, label = resolve_scorer(name, options=kw.pop("options", None))
    return RewardFunction(fn, name, label, **kw)


def test_module_function_scalar_and_vector_components():
    out = _rf("online_reward_fns:length")(P, ["a b", "a", ""])
    assert out.components == {"length": [2.0, 1.0, 0.0]} and out.penalized == []
    out = _rf("online_reward_fns:vector")(P, ["a b", "a", ""])
    assert out.components == {"vector/words": [2.0, 1.0, 0.0], "vector/chars": [3.0, 1.0, 0.0]}


def test_factory_with_options():
    out = _rf("online_reward_fns:scaled", options={"factor": 2})(P, ["ab", "a", ""])
    assert out.components == {"scaled": [4.0, 2.0, 0.0]}


def test_weighted_sum_keeps_every_component():
    reward = build_reward([RewardSpec(name="online_reward_fns:vector", weights={"words": 2.0}),
                           RewardSpec(name="online_reward_fns:length", weight=-1.0)])
    out = reward(P, ["a b", "a", ""])
    assert set(out.components) == {"vector/words", "vector/chars", "length"}  # chars: logged, unweighted
    assert out.total == [2 * 2 - 2, 2 * 1 - 1, 0.0]


def test_gold_rewards_from_the_lab_task():
    task = get_task("reviews")
    reward = build_reward([RewardSpec(name="gold:positivity")], task=task)
    out = reward(["review of the zenta phone:"] * 2, [" the battery is great .", " i regret it ."])
    assert out.total == [1.0, -1.0] and list(out.components) == ["gold/positivity"]
    everything = build_reward([RewardSpec(name="gold", weights={"brevity": 1.0})], task=task)
    assert set(everything(["review of the zenta phone:"], [" ok ."]).components) == {
        "gold/positivity", "gold/informativeness", "gold/brevity"}
    with pytest.raises(ConfigError, match="no objective 'kindness'"):
        build_reward([RewardSpec(name="gold:kindness")], task=task)
    with pytest.raises(ConfigError, match="need a lab task"):
        build_reward([RewardSpec(name="gold:positivity")])


def test_combine_min_and_uwo():
    fns = [WeightedFunction(_rf("online_reward_fns:length")), WeightedFunction(_rf("online_reward_fns:constant"))]
    assert WeightedReward(fns, combine="min")(P[:1], ["a b c"]).total == [1.0]
    uwo = WeightedReward(fns, combine="uwo", uwo_lambda=0.5)(P[:1], ["a b c"]).total[0]
    assert uwo == pytest.approx(2.0 - 0.5 * 1.0)  # mean 2, population variance 1


def test_bad_names():
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        resolve_scorer("no_such_module:f")
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        resolve_scorer("online_reward_fns:missing")
    with pytest.raises(ConfigError, match="expected 'module:function'"):
        resolve_scorer("just_a_name")
    with pytest.raises(ConfigError, match="unknown component"):
        build_reward([RewardSpec(name="online_reward_fns:vector", weights={"wrods": 1.0})])(P, ["a", "b", "c"])


# ----------------------------------------------------------------------------- error paths


def test_raising_function_names_function_and_prompt():
    rf = _rf("online_reward_fns:raises_on_second")
    with pytest.raises(RewardError, match=r"reward 'online_reward_fns:raises_on_second': ZeroDivisionError: "
                                          r"division by zero on sample 1 \(prompt 0: 'p1'\)"):
        rf(P, ["ok", "boom", "ok"], row_prompt=[0, 0, 1])


def test_raising_function_penalty_mode_counts():
    rf = _rf("online_reward_fns:raises_on_second", on_error="penalty", penalty=-3.0)
    out = rf(P, ["ok", "boom", "ok"])
    assert out.components["raises_on_second"] == [0.5, -3.0, 0.5] and out.penalized == [1]
    total = WeightedReward([WeightedFunction(rf)], penalty=-3.0)(P, ["ok", "boom", "ok"])
    assert total.total == [0.5, -3.0, 0.5] and total.errors == 1


def test_wrong_length():
    with pytest.raises(RewardError, match=r"'online_reward_fns:short_by_one': returned 2 values for 3 responses"):
        _rf("online_reward_fns:short_by_one")(P, ["a", "b", "c"])
    with pytest.raises(RewardError, match="returned a float, expected a list of 3 floats"):
        _rf("online_reward_fns:not_a_list")(P, ["a", "b", "c"])
    # penalty mode retries one sample at a time; a function broken for every sample still stops the step
    with pytest.raises(RewardError, match="failed on every sample"):
        _rf("online_reward_fns:short_by_one", on_error="penalty")(P, ["a", "b", "c"])


def test_non_finite():
    with pytest.raises(RewardError, match=r"non-finite value nan on sample 2 \(prompt 2: 'p2'\)"):
        _rf("online_reward_fns:nan_on_boom")(P, ["a", "b", "boom"])
    out = _rf("online_reward_fns:nan_on_boom", on_error="penalty", penalty=-1.0)(P, ["a", "b", "boom"])
    assert out.components["nan_on_boom"] == [1.0, 1.0, -1.0] and out.penalized == [2]


def test_always_failing_function_in_penalty_mode_still_stops():
    with pytest.raises(RewardError, match="failed on every sample.*reward server down"):
        _rf("online_reward_fns:always_raise", on_error="penalty")(P, ["a", "b", "c"])


# ----------------------------------------------------------------------------- judges


def test_judges():
    judge = resolve_judge("online_reward_fns:longer_wins")
    probs, failed = judge(["p", "p"], ["long one", "a"], ["short", "abc"])
    assert probs == [1.0, 0.0] and failed == 0
    with pytest.raises(RewardError, match=r"judge 'online_reward_fns:bad_judge': returned 1.7, expected a "
                                          r"probability in \[0, 1\] on pair 0"):
        resolve_judge("online_reward_fns:bad_judge")(["p"], ["a"], ["b"])
    probs, failed = Judge(lambda p, a, b: 1 / 0, "div", on_error="penalty")(["p"], ["a"], ["b"])
    assert math.isnan(probs[0]) and failed == 1
    bt = judge_from_reward(lambda ps, rs: [float(len(r)) for r in rs])
    assert bt("p", "aaa", "a") == pytest.approx(1 / (1 + math.exp(-2)))
