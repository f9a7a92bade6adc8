"""Smoke test of benchmarks/optimizers.py: the reduced (--quick) run writes its JSON, table and plot."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_optimizers", ROOT / "benchmarks" / "optimizers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_benchmark_writes_results(tmp_path, capsys):
    bench = _load_bench()
    threads = torch.get_num_threads()
    try:
        summary = bench.main(["--quick", "--optimizers", "adamw,adamw_8bit,galore_adamw,apollo_mini,lion",
                              "--out", str(tmp_path / "bench")])
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "bench"
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk["optimizers"]) == {"adamw", "adamw_8bit", "galore_adamw", "apollo_mini", "lion"}
    table = (out / "results.md").read_text()
    assert "| optimizer |" in table and "galore_adamw" in table and "Command: `python benchmarks/optimizers.py --quick" in table
    assert (out / "plot.png").stat().st_size > 1000
    for name, r in on_disk["optimizers"].items():
        for key in ("state_matrix_vs_adamw", "state_total_vs_adamw"):
            assert 0.0 < r[key] <= 2.0, (name, key, r[key])
        assert r["time_vs_adamw"] > 0  # timing on a shared machine: only its sign is stable
        assert r["sft_eval_loss"] > 0 and "gold_reward" in r["dpo"]
    r = on_disk["optimizers"]
    assert r["adamw"]["state_matrix_vs_adamw"] == 1.0
    assert r["lion"]["state_matrix_vs_adamw"] == pytest.approx(0.5, abs=0.01)
    assert r["apollo_mini"]["state_matrix_vs_adamw"] < 0.05
    assert r["adamw_8bit"]["state_matrix_vs_adamw"] < 0.3
    assert on_disk["targets"]["state/lion"]["met"]
    printed = capsys.readouterr().out
    assert "reproduce: python benchmarks/optimizers.py --quick" in printed
    assert summary["command"] == on_disk["command"]
