"""Objectives: reward vectors, scalarization, non-dominated sets and hypervolume (hand-computed cases)."""
import numpy as np
import pytest
import torch

from prefopt.errors import ConfigError
from prefopt.objectives.pareto import default_reference, hypervolume, nondominated
from prefopt.objectives.scalarize import aggregate_members, chebyshev, check_simplex, linear
from prefopt.objectives.vectors import RewardVector


def test_reward_vector_stacks_in_order_and_names_missing_objectives():
    v = RewardVector({"brevity": [1.0, 2.0], "positivity": [0.5, -0.5]})
    assert v.stack().tolist() == [[1.0, 0.5], [2.0, -0.5]]
    assert v.means() == {"brevity": 1.5, "positivity": 0.0}
    with pytest.raises(ConfigError, match=r"unknown objective\(s\) \['infoness'\] \(available: brevity, positivity\)"):
        v.select(["infoness"])
    with pytest.raises(ValueError, match="has 1 values, expected 2"):
        RewardVector({"a": [1.0, 2.0], "b": [1.0]})


def test_linear_and_chebyshev_by_hand():
    r = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert linear(r, [0.25, 0.75]).tolist() == [2.5, 2.0]  # 0.25 + 2.25, 0.5 + 1.5
    # ideal (3, 3): row 0 distances (2, 0) -> max(0.5*2, 0.5*0) = 1; row 1 (1, 1) -> 0.5
    assert chebyshev(r, [0.5, 0.5], [3.0, 3.0]).tolist() == [-1.0, -0.5]
    # with w = (0.9, 0.1): row 0 -> max(1.8, 0) = 1.8; row 1 -> max(0.9, 0.1) = 0.9
    assert torch.allclose(chebyshev(r, [0.9, 0.1], [3.0, 3.0]), torch.tensor([-1.8, -0.9]))


def test_ensemble_aggregations_by_hand():
    r = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert aggregate_members(r, "mean").tolist() == [2.0, 2.0]
    assert aggregate_members(r, "min").tolist() == [1.0, 2.0]
    assert aggregate_members(r, "uwo", uwo_lambda=0.5).tolist() == [1.5, 2.0]  # var (pop.) = 1 and 0
    with pytest.raises(ConfigError, match="expected one of mean, min, uwo"):
        aggregate_members(r, "max")


@pytest.mark.parametrize("weights, message", [([0.5, 0.6], "summing to 1"), ([1.2, -0.2], "non-negative"),
                                              ([], "at least one")])
def test_simplex_refuses_bad_weights(weights, message):
    with pytest.raises(ConfigError, match=message):
        check_simplex(weights)
    assert check_simplex([0.3, 0.7]).tolist() == pytest.approx([0.3, 0.7])


def test_nondominated_2d_and_3d():
    pts = [[1, 3], [2, 2], [3, 1], [1, 1], [2, 2]]  # (1,1) dominated; duplicates of (2,2) both kept
    assert nondominated(pts).tolist() == [True, True, True, False, True]
    pts3 = [[1, 1, 1], [2, 1, 1], [1, 2, 0], [0, 0, 3]]  # (1,1,1) dominated by (2,1,1)
    assert nondominated(pts3).tolist() == [False, True, True, True]


def test_hypervolume_2d_by_hand():
    # staircase of boxes from (0,0): 1x3 + (2-1)x2 + (3-2)x1 = 6; a dominated point adds nothing
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume([[1, 3], [2, 2], [3, 1], [1, 1]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume([[1, 3]], [-1, 0]) == pytest.approx(6.0)  # (1+1) x 3


def test_hypervolume_3d_by_hand():
    # three boxes of volume 2 with pairwise and triple overlaps of 1: 3*2 - 3*1 + 1 = 4
    assert hypervolume([[2, 1, 1], [1, 2, 1], [1, 1, 2]], [0, 0, 0]) == pytest.approx(4.0)
    assert hypervolume([[1, 1, 1]], [0, 0, 0]) == pytest.approx(1.0)


def test_hypervolume_refuses_a_reference_the_front_does_not_dominate():
    with pytest.raises(ConfigError, match=r"reference point \[1.0, 0.0\] is not dominated"):
        hypervolume([[1, 3], [2, 2]], [1, 0])
    with pytest.raises(ConfigError, match="has 3 values for 2 objectives"):
        hypervolume([[1, 3]], [0, 0, 0])


def test_default_reference_lies_below_every_point():
    pts = np.array([[1.0, 3.0], [3.0, 1.0]])
    ref = default_reference(pts)
    assert ref.tolist() == pytest.approx([0.8, 0.8])
    assert hypervolume(pts, ref) > 0


def test_combine_weighted_by_hand_and_as_the_one_scalarization():
    import prefopt.models.reward as reward
    import prefopt.objectives.scalarize as objectives_scalarize
    from prefopt.losses.scalarize import combine_weighted

    r = torch.tensor([[1.0, -2.0], [0.5, 0.5]], dtype=torch.float64)
    w = [2.0, 0.5]
    # weighted parts: row 0 (2, -1), row 1 (1, 0.25)
    torch.testing.assert_close(combine_weighted(r, w, "sum"), torch.tensor([1.0, 1.25], dtype=torch.float64))
    torch.testing.assert_close(combine_weighted(r, w, "mean"), torch.tensor([0.4, 0.5], dtype=torch.float64))
    torch.testing.assert_close(combine_weighted(r, w, "min"), torch.tensor([-1.0, 0.25], dtype=torch.float64))
    # uwo: mean - 1 * population variance: row 0 0.5 - 2.25, row 1 0.625 - 0.140625
    torch.testing.assert_close(combine_weighted(r, w, "uwo"), torch.tensor([-1.75, 0.484375], dtype=torch.float64))
    with pytest.raises(ConfigError, match="reward_combine: got 'max'"):
        combine_weighted(r, w, "max")
    assert reward.aggregate(r, "min").tolist() == aggregate_members(r, "min").tolist() == [-2.0, 0.5]
    assert objectives_scalarize.combine_weighted is combine_weighted  # re-exported, not copied
