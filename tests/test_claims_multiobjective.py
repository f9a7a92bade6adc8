"""The multi-objective claims script's figures and verdicts (pure parts; the runs are the front tests')."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "claims_mo", Path(__file__).resolve().parents[1] / "benchmarks" / "claims" / "multiobjective.py")
claims_mo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(claims_mo)


def _seed(hv: dict, cpu: dict) -> dict:
    return {m: {"hypervolume": hv[m], "cpu_seconds": cpu[m]} for m in hv}


def test_ratios_and_verdicts_by_hand():
    runs = [_seed({"morlhf": 0.2, "soups": 0.2, "modpo": 0.1, "ric": 0.2}, {"morlhf": 30, "soups": 20, "modpo": 10, "ric": 10}),
            _seed({"morlhf": 0.2, "soups": 0.18, "modpo": 0.1, "ric": 0.18}, {"morlhf": 30, "soups": 20, "modpo": 10, "ric": 30})]
    c = claims_mo.claims(runs)
    assert c["soups_vs_morlhf"]["hv_ratio"] == pytest.approx([1.0, 0.9])
    assert c["soups_vs_morlhf"]["cost_ratio"] == pytest.approx([2 / 3, 2 / 3])
    assert c["modpo_vs_morlhf"]["compute_saving"] == pytest.approx([3.0, 3.0])
    assert c["ric_vs_soups"]["cost_ratio"] == pytest.approx([0.5, 1.5])
    v = claims_mo.verdicts(c)
    assert v["soups_vs_morlhf"] == "holds"  # hv 0.95 >= 0.9, cost 0.67 <= 0.75
    assert v["modpo_vs_morlhf"] == "partly (3x saving holds, front does not)"
    assert v["ric_vs_soups"] == "holds"  # hv 1.0, cost mean 1.0 <= 1
    assert claims_mo.mean_se([1.0, 3.0]) == "2.00 ± 1.00" and claims_mo.mean_se([0.5]) == "0.50 (1 seed)"
