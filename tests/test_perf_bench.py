"""Reduced-size smoke runs of the performance benchmarks (the full runs are not part of the suite).

The TRL side of ``benchmarks/vs_trl.py`` needs the optional ``bench`` extra (TRL 1.16); without it
those phases are skipped, but the prefopt side still runs.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

HAS_TRL = importlib.util.find_spec("trl") is not None
pytestmark = pytest.mark.slow


def _vs_trl():
    import vs_trl
    return vs_trl


def test_vs_trl_prefopt_side_smoke(tmp_path):
    vs_trl = _vs_trl()
    out = tmp_path / "vs_trl.json"
    assert vs_trl.main(["--quick", "--threads", "1", "--only", "prefopt_dpo,prefopt_dpo_live,prefopt_grpo",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for name in ("prefopt_dpo", "prefopt_dpo_live", "prefopt_grpo"):
        phase = report["phases"][name]
        assert "error" not in phase, phase.get("error")
        assert phase["s_per_step"] > 0 and phase["tokens_per_s"] > 0 and phase["peak_rss_mib"] > 0
        assert len(phase["losses"]) == (report["settings"]["grpo_steps"] if "grpo" in name
                                        else report["settings"]["steps"])
    assert report["phases"]["prefopt_dpo"]["precompute_s"] is not None
    # Both reference modes start from the same weights and data: the DPO loss starts at log 2.
    assert abs(report["phases"]["prefopt_dpo"]["losses"][0] - 0.6931) < 1e-3
    assert abs(report["phases"]["prefopt_dpo_live"]["losses"][0] - 0.6931) < 1e-3


@pytest.mark.skipif(not HAS_TRL, reason="TRL is not installed: pip install -e '.[bench]' (best in its own venv, "
                                        "see benchmarks/README.md) to run the TRL side of benchmarks/vs_trl.py")
def test_vs_trl_full_smoke_with_trl(tmp_path):
    vs_trl = _vs_trl()
    out = tmp_path / "vs_trl.json"
    assert vs_trl.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    errors = {k: v["error"] for k, v in report["phases"].items() if "error" in v}
    assert not errors, errors
    assert {r["trl"] for r in report["ratios"]} == {"trl_dpo", "trl_dpo_precomp", "trl_grpo"}
    for r in report["ratios"]:
        assert r["steps_per_s_ratio"] > 0 and r["peak_rss_ratio"] > 0
    # same data, weights and optimizer: the DPO loss curves of the two libraries agree
    for agreement in report["dpo_loss_agreement"].values():
        assert agreement["agree"], agreement


def test_scaling_smoke(tmp_path):
    import scaling

    out = tmp_path / "scaling.json"
    assert scaling.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["matmul_peak_flops"] > 0
    for key, point in report["points"].items():
        assert "error" not in point, (key, point.get("error"))
        assert point["tokens_per_s"] > 0 and point["peak_rss_mib"] > 0
        assert 0 < point["flops_fraction_of_peak"] < 1.5
    assert set(report["shared_vs_padded"]) == {"prompt=8", "response=4", "batch=2"}
    assert out.with_suffix(".png").exists()


def test_useful_flops_counts_each_prompt_once():
    import scaling

    from prefopt.data.tokenize import EncodedPair

    m = {"hidden": 4, "layers": 1, "inter": 8, "vocab": 10}
    one = scaling.useful_flops([EncodedPair([1, 2], [3], [4], 0)], m)
    per_layer = 2 * (4 * 16 + 3 * 32)
    ctx = (1 + 2) + 3 + 3
    assert one == 3.0 * (4 * per_layer + 4 * 4 * ctx + 2 * 4 * 10 * 2)


def test_vs_trl_135m_quick_reports_flops_against_both_matmul_peaks(tmp_path):
    """The real-size benchmark's --quick mode (a tiny model of the same code path): prefopt's phases in
    both precisions, achieved FLOP/s as fractions of bf16 and fp32 matmul peaks measured in the run."""
    import vs_trl_135m

    out = tmp_path / "vs_trl_135m.json"
    only = "prefopt_dpo_fp32,prefopt_dpo_bf16" + (",trl_dpo,trl_grpo" if HAS_TRL else "")
    assert vs_trl_135m.main(["--quick", "--threads", "1", "--only", only, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    peak = report["matmul_peak"]
    assert peak["bf16_gflops"] > 0 and peak["fp32_gflops"] > 0
    for name in only.split(","):
        phase = report["phases"][name]
        assert "error" not in phase, phase.get("error")
        assert phase["tokens_per_s"] > 0 and phase["peak_rss_mib"] > 0
        assert phase["frac_fp32_peak"] == pytest.approx(phase["achieved_gflops"] / peak["fp32_gflops"])
        assert 0 < phase["frac_bf16_peak"] < 1.5
    # the cached reference is computed in the run's precision: the first DPO loss is ln 2 in both
    for name in ("prefopt_dpo_fp32", "prefopt_dpo_bf16"):
        assert report["phases"][name]["losses"][0] == pytest.approx(0.693147, abs=1e-4)
    assert report["machine"]["load_avg_start"] and report["settings"]["vocab"] == vs_trl_135m.QUICK["vocab"]
    if HAS_TRL:
        assert {r["trl"] for r in report["ratios"]} >= {"trl_dpo", "trl_grpo"}


def test_decode_bounds_are_the_weight_bytes_and_matmul_flops_per_token():
    """Hand-derived: the tiny shape (vocab 4096, hidden 128, MLP 344, 4 layers, untied) has
    4·(4·128² + 3·128·344) + 4096·128 = 1 314 816 matmul weights (the head counts; the embedding
    is a lookup) and 1 314 816 + 4096·128 (embedding) + 9·128 (norms) = 1 840 256 parameters."""
    import rollout_vs_generate as rvg

    model, n_params = rvg.build_model("tiny")
    assert n_params == 1_840_256
    b = rvg.decode_bounds(model, rows=8, bandwidth_gbs=10.0, peak_gflops=100.0)
    assert b["matmul_weights"] == 1_314_816 and b["weight_bytes"] == 4 * 1_840_256
    assert b["bandwidth_bound_tokens_per_s"] == pytest.approx(8 * 10e9 / (4 * 1_840_256))
    assert b["compute_bound_tokens_per_s"] == pytest.approx(100e9 / (2 * 1_314_816))
    tied, _ = rvg.build_model("tiny", "bfloat16")
    assert rvg.decode_bounds(tied, 1, 1.0, 1.0)["weight_bytes"] == 2 * 1_840_256


def test_rollout_vs_generate_reports_decode_against_its_bounds(tmp_path):
    import rollout_vs_generate as rvg

    out = tmp_path / "rvg.json"
    rvg.main(["--model-size", "tiny", "--batch", "4", "--new-tokens", "6", "--repeats", "1", "--threads", "1",
              "--cases", "no_eos", "--weights", "--k", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    w = report["weights"]
    assert w["rows"] == 4 and set(w["median"]) == {"fp32", "fp32_autocast", "bf16_copy"}
    assert w["bf16_copy_vs_fp32"] == pytest.approx(w["median"]["bf16_copy"] / w["median"]["fp32"])
    r = report["decode_roofline"]
    assert r["rows"] == 4 and r["decode_tokens_per_s"] > 0 and r["copy_bandwidth_gbs"] > 0
    assert r["frac_of_bandwidth_bound"] == pytest.approx(r["decode_tokens_per_s"] / r["bandwidth_bound_tokens_per_s"])
    assert r["binding"] in ("memory bandwidth", "matmul compute")


def test_step_drift_repeats_one_batch_and_records_rss_per_step(tmp_path):
    import step_drift

    out = tmp_path / "drift.json"
    assert step_drift.main(["--quick", "--steps", "4", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["rss_mib"] > 0 and s["s"] > 0 for s in steps)
    assert steps[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # a cached reference: the DPO loss starts at ln 2
    assert steps[-1]["loss"] < steps[0]["loss"]  # the same batch every step: it is being fitted
