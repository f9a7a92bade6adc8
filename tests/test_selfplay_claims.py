"""Smoke test of benchmarks/claims/selfplay_claims.py: the --quick run trains every method of both
claims on a briefly fine-tuned tiny model and writes results with the figures the claim rows read."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("selfplay_claims", ROOT / "benchmarks" / "claims" / "selfplay_claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mean_and_standard_error():
    claims = _load()
    m, se = claims.mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert claims.fmt([0.5]) == "0.500"


@pytest.mark.slow
def test_quick_claims_run_writes_results(tmp_path, capsys):
    claims = _load()
    threads = torch.get_num_threads()
    try:
        assert claims.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "quick" / "results-all.json").read_text())
    assert set(results["nash"]) == {"sppo", "inpo", "dpo_on_judge_labels"}
    for runs in results["nash"].values():
        assert runs[0]["steps"] == [0, 2, 4]  # evaluated at the start and after each of 2 iterations
        assert all(0.5 <= e <= 1.0 for e in runs[0]["exploitability"])
    hedge = results["hedge"]
    assert set(hedge) == {"gold_alone", "hedge", "uniform_mix"}
    assert hedge["uniform_mix"][0]["weights"]["lab:noisy"] == pytest.approx(1 / 3)  # no feedback: uniform
    assert hedge["hedge"][0]["regret"] <= hedge["hedge"][0]["regret_bound"]
    rows = capsys.readouterr().out.strip().splitlines()[-3:]
    assert all(r.startswith("| ") and r.count("|") == 6 for r in rows)
