"""Front bookkeeping: simplex grids, points with standard errors and costs, non-dominated flags,
hypervolume, front.json round trip and resume, and the front plot."""
import json
import math

import pytest

from prefopt.errors import ConfigError, DataError
from prefopt.objectives.front import Cost, Front, FrontPoint, common_reference, simplex_grid

OBJ = ("info", "brev")


def test_simplex_grid_counts_order_and_exact_values():
    assert simplex_grid(2, 4) == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    grid = simplex_grid(3, 4)
    assert len(grid) == math.comb(4 + 2, 2) == 15 and len(set(grid)) == 15
    assert all(abs(sum(w) - 1.0) < 1e-12 and all(round(x * 4) == x * 4 for x in w) for w in grid)
    assert len(simplex_grid(3, 10)) == 66 and (0.1, 0.2, 0.7) in simplex_grid(3, 10)
    assert simplex_grid(1, 3) == [(1.0,)]
    with pytest.raises(ConfigError, match="got 2 objectives and 0 steps"):
        simplex_grid(2, 0)


def test_point_means_and_standard_errors_by_hand():
    p = FrontPoint.from_scores([0.5, 0.5], {"info": [1.0, 2.0, 3.0], "brev": [0.0, 0.0, 3.0], "pos": [9, 9, 9]},
                               OBJ, Cost(10, 500, 2.5), label="run-a")
    assert p.means == {"info": 2.0, "brev": 1.0}
    # info: sample variance 1, se = sqrt(1/3); brev: variance (1+1+4)/2 = 3, se = 1
    assert p.stderr["info"] == pytest.approx(math.sqrt(1 / 3)) and p.stderr["brev"] == pytest.approx(1.0)
    assert p.n == 3 and p.cost == Cost(10, 500, 2.5)
    assert FrontPoint.from_scores([1.0, 0.0], {"info": [1.0], "brev": [2.0]}, OBJ).stderr == {"info": None, "brev": None}
    with pytest.raises(ConfigError, match=r"unknown objective\(s\) \['brev'\] \(available: info\)"):
        FrontPoint.from_scores([1.0, 0.0], {"info": [1.0]}, OBJ)


def _point(w, info, brev, steps=1):
    return FrontPoint(tuple(w), {"info": info, "brev": brev}, {"info": 0.1, "brev": None}, 8, Cost(steps, 0, 1.0))


def _front(**kw):
    front = Front("soups", OBJ, **kw)
    for w, x, y in [((0.0, 1.0), 1.0, 3.0), ((0.5, 0.5), 2.0, 2.0), ((1.0, 0.0), 3.0, 1.0), ((0.25, 0.75), 1.0, 1.0)]:
        front.add(_point(w, x, y))
    return front


def test_flags_and_hypervolume_by_hand():
    front = _front(reference=(0.0, 0.0))
    assert [p.nondominated for p in front.points] == [True, True, True, False]  # (1, 1) is dominated by (2, 2)
    front.refresh()
    assert front.hypervolume == pytest.approx(6.0)  # staircase over (0, 0): 1·3 + 1·2 + 1·1
    front.add(_point((0.5, 0.5), 2.5, 2.5))  # replaces the point with the same weights
    assert len(front.points) == 4 and front.hypervolume is None
    front.refresh()
    assert front.hypervolume == pytest.approx(1 * 3 + 1.5 * 2.5 + 0.5 * 1)
    assert front.total_cost() == Cost(4, 0, 4.0)


def test_default_and_bad_reference_points():
    front = _front()
    front.refresh()  # default reference: 0.1 of each range below the worst values (1 - 0.2 = 0.8)
    assert front.reference == pytest.approx((0.8, 0.8)) and front.reference_source == "default"
    with pytest.raises(ConfigError, match=r"reference point \[1.5, 0.0\] is not dominated by the front: point \[1.0, 3.0\]"):
        _front(reference=(1.5, 0.0)).refresh()
    with pytest.raises(ConfigError, match="has 3 values for 2 objectives"):
        Front("soups", OBJ, reference=(0.0, 0.0, 0.0))


def test_front_json_round_trip_and_resume(tmp_path):
    front = _front(reference=(0.0, 0.0), shared_cost=Cost(100, 0, 30.0))
    front.refresh()
    path = front.save(tmp_path / "sweep" / "front.json")
    data = json.loads(path.read_text())
    assert data["hypervolume"] == pytest.approx(6.0) and data["total_cost"]["gradient_steps"] == 104
    assert data["points"][3]["nondominated"] is False and data["points"][0]["stderr"]["brev"] is None
    loaded = Front.load(path)
    assert loaded.to_dict() == front.to_dict()
    grid = simplex_grid(2, 4)
    assert loaded.pending(grid) == [(0.75, 0.25)]  # the finished points are not run again
    del data["points"][1]["means"]["brev"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad.json: points\[1\]: no mean/stderr for objective\(s\) \['brev'\]"):
        Front.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="cannot read the front"):
        Front.load(tmp_path / "missing.json")


def test_common_reference_compares_fronts_at_one_point():
    a, b = _front(), Front("morlhf", OBJ, [_point((0.5, 0.5), 0.0, 5.0)])
    assert common_reference([a, b]) == pytest.approx((-0.3, 0.6))  # worst (0, 1), ranges 3 and 4
    with pytest.raises(ConfigError, match="different objectives"):
        common_reference([a, Front("x", ("info", "pos"))])


def test_front_plots_two_and_three_objectives(tmp_path):
    from prefopt.report.front_plot import plot_fronts

    a = _front()
    a.refresh()
    b = Front("morlhf", OBJ, [_point((0.5, 0.5), 2.2, 2.4), _point((1.0, 0.0), 3.5, 0.5)])
    b.refresh()
    fig = plot_fronts([a, b], tmp_path / "front.png")
    assert (tmp_path / "front.png").stat().st_size > 1000 and len([ax for ax in fig.axes if ax.has_data()]) == 1
    three = Front("ric", ("a", "b", "c"))
    for w in simplex_grid(3, 2):
        three.add(FrontPoint(w, dict(zip("abc", w)), dict.fromkeys("abc", 0.05), 4))
    three.refresh()
    fig3 = plot_fronts([three], tmp_path / "front3.png")
    assert [ax.get_xlabel() + ax.get_ylabel() for ax in fig3.axes] == ["ab", "ac", "bc"]
    with pytest.raises(ValueError, match="different objectives"):
        plot_fronts([a, three])
