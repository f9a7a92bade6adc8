"""The claims harness (benchmarks/claims/): statistics, verdict rules, arm availability, the
poor-coverage data builder, and one claim's --quick run end to end."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "benchmarks" / "claims"
sys.path.insert(0, str(CLAIMS))

import harness  # noqa: E402
import stats  # noqa: E402
from stats import (DEPENDS, DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_AVAILABLE, NOT_MEASURED,  # noqa: E402
                   AllOf, ByCondition, Greater, RatioBelow, summarize)


def table(**arms):
    return {arm: {m: summarize(v) for m, v in metrics.items()} for arm, metrics in arms.items()}


def test_summarize_mean_and_standard_error():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.n == 3
    assert s.se == pytest.approx(1.0 / math.sqrt(3))  # sd (n-1) = 1
    one = summarize([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.se)
    assert summarize([]).n == 0 and summarize([None, float("nan"), 4.0]).values == (4.0,)


def test_greater_decides_beyond_z_combined_standard_errors():
    # means 1.2 and 0.2, each se 0.2/sqrt(3); combined se 0.1633; d = 1.0 > 2 * 0.1633
    t = table(a={"g": [1.0, 1.2, 1.4]}, b={"g": [0.0, 0.2, 0.4]}, c={"g": [0.1, 0.3, 0.5]})
    assert Greater("g", "a", "b").judge(t, {}).verdict == HOLDS
    assert Greater("g", "b", "a").judge(t, {}).verdict == DOES_NOT_HOLD
    # c - b = 0.1 < 2 * 0.1633: the seeds cannot tell them apart
    assert Greater("g", "c", "b").judge(t, {}).verdict == INCONCLUSIVE
    assert Greater("g", "c", "b", z=0.5).judge(t, {}).verdict == HOLDS  # 0.1 > 0.5 * 0.1633
    assert Greater("g", "b", "a", lower_is_better=True).judge(t, {}).verdict == HOLDS
    # a margin of 0.8 leaves d = 0.2 < 0.3266
    assert Greater("g", "a", "b", margin=0.8).judge(t, {}).verdict == INCONCLUSIVE
    assert "difference +1" in Greater("g", "a", "b").judge(t, {}).why


def test_missing_arms_and_metrics_are_named_never_judged():
    t = table(a={"g": [1.0, 2.0]})
    status = {"h": NOT_AVAILABLE + " (algo.name 'h' is not in prefopt's algorithm table)"}
    j = Greater("g", "h", "a").judge(t, status)
    assert j.verdict == NOT_AVAILABLE and "'h'" in j.why
    assert Greater("g", "x", "a").judge(t, {}).verdict == NOT_MEASURED
    assert Greater("other", "a", "a").judge(t, {}).verdict == NOT_MEASURED


def test_ratio_below_uses_the_delta_method():
    # r = 50/100 = 0.5, se = 0.5 * (5/sqrt(3))/50 = 0.02887
    t = table(a={"m": [45.0, 50.0, 55.0]}, b={"m": [100.0, 100.0, 100.0]})
    assert RatioBelow("m", "a", "b", 0.6).judge(t, {}).verdict == HOLDS          # 0.5577 < 0.6
    assert RatioBelow("m", "a", "b", 0.55).judge(t, {}).verdict == INCONCLUSIVE  # 0.5577 > 0.55
    assert RatioBelow("m", "a", "b", 0.45).judge(t, {}).verdict == INCONCLUSIVE  # 0.4423 < 0.45
    assert RatioBelow("m", "a", "b", 0.4).judge(t, {}).verdict == DOES_NOT_HOLD  # 0.4423 > 0.4


def test_all_of_and_by_condition_combine_verdicts():
    t = table(a={"g": [1.0, 1.2, 1.4]}, b={"g": [0.0, 0.2, 0.4]}, c={"g": [0.1, 0.3, 0.5]})
    yes, no, unsure = Greater("g", "a", "b"), Greater("g", "b", "a"), Greater("g", "c", "b")
    absent = Greater("g", "hypo", "b")
    status = {"hypo": NOT_AVAILABLE}
    assert AllOf((yes, yes)).judge(t, status).verdict == HOLDS
    assert AllOf((yes, unsure)).judge(t, status).verdict == INCONCLUSIVE
    assert AllOf((yes, no, unsure)).judge(t, status).verdict == DOES_NOT_HOLD
    assert AllOf((yes, absent)).judge(t, status).verdict == HOLDS  # the missing arm is left out, and named
    assert "hypo" in AllOf((yes, absent)).judge(t, status).why
    assert AllOf((absent,)).judge(t, status).verdict == NOT_AVAILABLE
    assert ByCondition((("x", yes), ("y", no))).judge(t, status).verdict == DEPENDS
    assert ByCondition((("x", yes), ("y", unsure))).judge(t, status).verdict == DEPENDS
    assert ByCondition((("x", no), ("y", no))).judge(t, status).verdict == DOES_NOT_HOLD
    assert ByCondition((("x", no), ("y", unsure))).judge(t, status).verdict == INCONCLUSIVE
    assert ByCondition((("x", absent),)).judge(t, status).verdict == NOT_AVAILABLE


def test_availability_reads_the_algorithm_table_and_config_schema():
    assert harness.availability(harness.Arm("dpo", requires={"algo": "dpo"})) is None
    assert harness.availability(harness.Arm("k", requires={"keys": ["train.steps", "online.kl_coef"]})) is None
    missing = harness.availability(harness.Arm("h", requires={"algo": "no_such_algorithm"}))
    assert missing.startswith(NOT_AVAILABLE) and "no_such_algorithm" in missing
    assert harness.availability(harness.Arm("m", requires={"keys": ["no_such_section.ratio"]})).startswith(NOT_AVAILABLE)
    assert harness.availability(harness.Arm("m", requires={"keys": ["train.steps.deeper"]})).startswith(NOT_AVAILABLE)


def test_spec_merge_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: {train: {steps: 60, batch_size: 32}, algo: {name: dpo}}\n"
                    "quick: {base: {train: {steps: 2}}, arms: {a: {train: {batch_size: 4}}}}\n"
                    "arms: {a: {data: poor, requires: {algo: x}, config: {train: {batch_size: 16}, algo: {beta: 0.5}}}}\n")
    spec = harness.load_spec(path)
    arm = spec.arms[0]
    assert (arm.name, arm.options, arm.requires) == ("a", {"data": "poor"}, {"algo": "x"})
    full = harness.SeedContext(0, False, tmp_path, [arm], spec, 1).train_dict(arm, {"train": {"seed": 3}})
    assert full == {"train": {"steps": 60, "batch_size": 16, "seed": 3}, "algo": {"name": "dpo", "beta": 0.5}}
    quick = harness.SeedContext(0, True, tmp_path, [arm], spec, 1).train_dict(arm, {})
    assert quick["train"] == {"steps": 2, "batch_size": 4}
    path.write_text("arms: {}\nextra: 1\n")
    with pytest.raises(ValueError, match="extra"):
        harness.load_spec(path)
    with pytest.raises(SystemExit, match="distinct"):
        harness.parse_seeds("1,1")


def test_every_claim_config_loads_and_names_known_sections():
    from prefopt.cli.config import from_dict
    from prefopt.train.config import TrainConfig

    for path in sorted((CLAIMS / "configs").glob("*.yaml")):
        spec = harness.load_spec(path)
        assert spec.arms, path
        for arm in spec.arms:
            if harness.availability(arm) is None and spec.base:  # runnable arms must be valid train configs
                for quick in (False, True):  # from_dict validates, sections an algorithm ignores included
                    ctx = harness.SeedContext(0, quick, Path("/tmp"), [arm], spec, 1)
                    from_dict(TrainConfig, ctx.train_dict(arm, {"model": {"name_or_path": "tiny:llama-1m"}}))


def _samples():
    from prefopt.tasks.coverage import Samples
    # prompt p0: scores 1.0, -0.5, 0.0, -0.5; prompt p1: 0.0, 0.0 (same text), 0.5, -1.0
    texts = [" a", " b", " c", " d", " x", " x", " y", " z"]
    pos = [1.0, -0.5, 0.0, -0.5, 0.0, 0.0, 0.5, -1.0]
    return Samples(["p0", "p1"], texts, {"positivity": pos, "brevity": [0.1 * i for i in range(8)]}, 4)


def test_slice_pairs_keeps_only_the_low_slice():
    from prefopt.tasks.coverage import CoverageConfig, slice_pairs

    cfg = CoverageConfig(max_score=0.0, pairs_per_prompt=1, bt_temperature=0.0)
    rows, st = slice_pairs(_samples(), cfg, ("positivity", "brevity"), "positivity")
    # p0: kept b, c, d -> pair (b, c), c wins (0.0 > -0.5); p1: kept x, x, z -> the second x is a duplicate, pair (x, z)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p0", " c", " b"), ("p1", " x", " z")]
    assert rows[0]["scores"] == {"positivity": [0.0, -0.5], "brevity": [0.2, 0.1]}
    assert (st.samples, st.kept_samples, st.pairs, st.identical_skipped, st.prompts_without_pair) == (8, 6, 2, 1, 0)
    assert st.agree_with_gold == 1.0 and st.max_data_score == 0.0
    assert st.sample_near_optimal_frac == 1 / 8 and st.data_near_optimal_frac == 0.0


def test_slice_pairs_full_coverage_control_and_empty_responses():
    from prefopt.tasks.coverage import CoverageConfig, slice_pairs

    s = _samples()
    rows, st = slice_pairs(s, CoverageConfig(max_score=None, pairs_per_prompt=2, bt_temperature=0.0),
                           ("positivity",), "positivity")
    # p0: (a, b) and (c, d); p1: (x, y) with the duplicate x skipped, y wins (0.5 > 0.0); z has no partner
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" a", " b"), (" c", " d"), (" y", " x")]
    assert st.data_near_optimal_frac == 1 / 6 and st.max_data_score == 1.0  # " a" (1.0) is in the data
    s.texts[1] = "  "
    rows, st = slice_pairs(s, CoverageConfig(max_score=0.0, pairs_per_prompt=1, bt_temperature=0.0),
                           ("positivity",), "positivity")
    assert st.empty_skipped == 1 and rows[0]["chosen"] == " c" and rows[0]["rejected"] == " d"
    with pytest.raises(ValueError, match="pairs_per_prompt"):
        CoverageConfig(pairs_per_prompt=0).validate()


def test_best_of_n_gold():
    spec = importlib.util.spec_from_file_location("claim_rm_ensemble", CLAIMS / "rm_ensemble.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    proxy = [0.1, 0.9, 0.5, 0.0, 0.3, 0.2]  # 2 prompts x 3 samples
    gold = [1.0, -1.0, 0.0, 0.5, 0.0, 1.0]
    assert mod.bon_gold(proxy, gold, 2, 1) == pytest.approx((1.0 + 0.5) / 2)
    assert mod.bon_gold(proxy, gold, 2, 3) == pytest.approx((-1.0 + 0.0) / 2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_claim_end_to_end(tmp_path):
    import torch

    spec = importlib.util.spec_from_file_location("claim_hypo_coverage", CLAIMS / "hypo_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        report = harness.run_claim(mod.CLAIM, ["--quick", "--seeds", "0,1", "--out", str(tmp_path)], log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    on_disk = json.loads((tmp_path / "hypo_coverage.json").read_text())
    assert on_disk["verdict"] == report["verdict"] and report["verdict"] in stats.VERDICTS
    assert on_disk["command"].startswith("python benchmarks/claims/hypo_coverage.py --quick")
    assert [s["seed"] for s in on_disk["per_seed"]] == [0, 1]
    for arm in ("dpo_poor", "dpo_full", "online_dpo"):
        assert on_disk["arms"][arm]["status"] == "ran"
        s = on_disk["summary"][arm]["gold_reward"]
        assert s["n"] == 2 and -1.0 <= s["mean"] <= 1.0
        assert s["mean"] == pytest.approx(sum(s["values"]) / 2)
        assert all(arm in p["arms"] for p in on_disk["per_seed"])
    assert on_disk["arms"]["hypo"]["status"].startswith(NOT_AVAILABLE) or on_disk["arms"]["hypo"]["status"] == "ran"
    assert on_disk["per_seed"][0]["info"]["data"]["poor"]["data_near_optimal_frac"] == 0.0
    assert on_disk["machine"]["cpu_count"] and on_disk["wall_s"] > 0
    assert (tmp_path / "hypo_coverage.png").stat().st_size > 1000


def test_token_budget_cut_and_nested_keys(tmp_path):
    import lab

    class WordTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": text.split()})()

    path = lab.write_rows(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a b", "rejected": "c"},
                                                 {"prompt": "p", "chosen": "d", "rejected": "e f"}])
    # each pair: (2 + 1) + (1 + 1) = 5 tokens, end-of-sequence included
    assert lab.response_tokens(path, WordTokenizer()) == 10.0
    cut = lab.cut_to_tokens(path, 9, WordTokenizer(), tmp_path / "cut.jsonl")
    assert [json.loads(x)["chosen"] for x in cut.read_text().splitlines()] == ["a b"]
    assert lab.nested("mixture.source.path", "x") == {"mixture": {"source": {"path": "x"}}}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_hybrid_arm_runs_the_mixture(tmp_path):
    """One hybrid arm end to end through the harness: the mixture at ρ = 0.5 draws half of each
    step's 4 examples from the offline pairs (mix/offline_frac logged every step)."""
    import torch

    from prefopt.train.metrics import read_metrics

    spec = importlib.util.spec_from_file_location("claim_mixture_ratio", CLAIMS / "mixture_ratio.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        report = harness.run_claim(mod.CLAIM, ["--quick", "--seeds", "0", "--arms", "rho_0.5", "--out", str(tmp_path)],
                                   log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert report["arms"]["rho_0.5"]["status"] == "ran"
    assert report["arms"]["rho_0"]["status"] == "not selected (--arms)"
    assert report["verdict"] == NOT_MEASURED  # the rule's other arms (ρ = 0, ρ = 1) did not run
    steps = [m for m in read_metrics(tmp_path / "seed0" / "rho_0.5" / "metrics.jsonl") if "mix/offline_frac" in m]
    assert len(steps) == 2 and all(m["mix/offline_frac"] == 0.5 for m in steps)
    assert -1.0 <= report["summary"]["rho_0.5"]["gold_reward"]["mean"] <= 1.0
