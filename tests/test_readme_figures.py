"""scripts/readme_figures.py on synthetic runs: the README's marked figure blocks are rewritten
from the newest summaries, and nothing else in the file changes."""
import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
rf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rf)

README = """# title

text before
<!-- figures:demo (generated) -->
| old | table |
<!-- /figures:demo -->
middle text | with a pipe
<!-- figures:vs_trl (generated) -->
stale
<!-- /figures:vs_trl -->
text after
"""


def _demo(root: Path, name: str, gold: float, mtime: float) -> Path:
    d = root / name
    d.mkdir(parents=True)
    summary = {"objective": "positivity", "loss": "ipo", "seed": 3,
               "sft": {"gold_reward": 0.1234}, "dpo": {"gold_reward": gold, "win_rate_vs_sft": 0.8766, "kl_to_sft": 6.04},
               "preference_data": {"pairs": 1000, "flipped": 98}, "seconds": 41.5}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "environment.json").write_text(json.dumps({"cpu_count": 2, "load_avg_1m": 1.5}))
    os.utime(d / "summary.json", (mtime, mtime))
    return d / "summary.json"


def _vs_trl(root: Path) -> Path:
    data = {"ratios": [
        {"prefopt": "prefopt_dpo", "trl": "trl_dpo", "steps_per_s_ratio": 3.004, "peak_rss_ratio": 0.594},
        {"prefopt": "prefopt_dpo", "trl": "trl_dpo_precomp", "steps_per_s_ratio": 1.49, "peak_rss_ratio": 0.55},
        {"prefopt": "prefopt_dpo_live", "trl": "trl_dpo", "steps_per_s_ratio": 2.2, "peak_rss_ratio": 0.61},
        {"prefopt": "prefopt_grpo", "trl": "trl_grpo", "steps_per_s_ratio": 2.05, "peak_rss_ratio": 0.7}],
        "dpo_loss_agreement": {"trl_dpo": {"steps": 30, "max_abs_diff": 1.73e-6}},
        "versions": {"torch": "2.13.0", "transformers": "5.24.0", "trl": "1.16.0"}, "machine": {"cpus": 2}}
    path = root / "bench" / "vs_trl.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def test_demo_block_from_summary_and_environment(tmp_path):
    path = _demo(tmp_path, "demo-a", 0.95349, 1_000)
    assert rf.render_demo(path).splitlines() == [
        "| policy | gold positivity | win rate vs SFT | KL to SFT (nats/seq) |",
        "|---|---:|---:|---:|",
        "| SFT | 0.123 | 0.500 | 0.00 |",
        "| IPO | 0.953 | 0.877 | 6.04 |",
        "",
        f"From `{path.as_posix()}` (`prefopt demo`, seed 3): 1000 preference pairs (98 labels flipped), "
        "41.5 s wall on 2 CPU cores (load average 1.5 at the end).",
    ]


def test_vs_trl_block_marks_targets_met_and_missed(tmp_path):
    lines = rf.render_vs_trl(_vs_trl(tmp_path)).splitlines()
    assert lines[2:6] == [
        "| DPO, prefopt (cached reference) vs TRL default | **3.00x** | **0.59x** | ≥ 3.0x, ≤ 0.6x: met |",
        "| DPO, prefopt (cached reference) vs TRL `precompute_ref_log_probs=True` | 1.49x | **0.55x** | "
        "≥ 1.5x, ≤ 0.6x: **not met** |",
        "| DPO, prefopt (live reference) vs TRL default | 2.20x | 0.61x | – |",
        "| GRPO (4 generations, 32 new tokens) | **2.05x** | 0.70x | ≥ 2.0x: met |",
    ]
    assert "agree to 1.7e-06 over the 30 steps" in lines[7]
    assert "torch 2.13.0, transformers 5.24.0, trl 1.16.0; 2 CPU cores" in lines[8]


def test_vs_trl_135m_block_has_the_ratios_and_the_share_of_the_bf16_peak(tmp_path):
    data = {"ratios": [
        {"prefopt": "prefopt_dpo_bf16", "trl": "trl_dpo", "steps_per_s_ratio": 3.2, "peak_rss_ratio": 0.55},
        {"prefopt": "prefopt_grpo_fp32", "trl": "trl_grpo_fp32", "steps_per_s_ratio": 1.9, "peak_rss_ratio": 0.7}],
        "phases": {"prefopt_dpo_bf16": {"achieved_gflops": 156.4, "frac_bf16_peak": 0.489}},
        "matmul_peak": {"bf16_gflops": 320.0}, "versions": {"torch": "2.13.0"},
        "machine": {"cpus": 2, "load_avg_start": [0.6, 0.9, 1.0]}}
    path = tmp_path / "vs_trl_135m.json"
    path.write_text(json.dumps(data))
    lines = rf.render_vs_trl_135m(path).splitlines()
    assert lines[2] == ("| DPO, bf16: prefopt bf16-mixed vs TRL default (bf16 + checkpointing) | **3.20x** | 0.55x | "
                        "≥ 3.0x, ≤ 0.5x: **not met** |")
    assert lines[3] == "| GRPO, fp32: prefopt vs TRL | 1.90x | 0.70x | – |"
    assert "156 GFLOP/s of weight matmuls, 49% of the bf16 matmul peak" in lines[5] and "≥ 40%: met" in lines[5]
    assert "torch 2.13.0; 2 CPU cores, load average 0.6 at the start" in lines[6]


def _outside(text: str) -> list[str]:
    """The text around the blocks: before the first, between them, after the last."""
    head, rest = text.split("<!-- figures:demo (generated) -->\n")
    middle, rest = rest.split("<!-- /figures:demo -->")[1].split("<!-- figures:vs_trl (generated) -->\n")
    return [head, middle, rest.split("<!-- /figures:vs_trl -->")[1]]


def test_script_rewrites_only_the_blocks_from_the_newest_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    _demo(runs, "demo-old", 0.5, 1_000)
    newest = _demo(runs, "demo-new", 0.9, 2_000)
    _vs_trl(runs)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    args = ["--readme", str(readme), "--runs", str(runs)]
    assert rf.main(args + ["--check"]) == 1  # stale: the diff is printed, the file untouched
    assert "+| IPO | 0.900 |" in capsys.readouterr().out and readme.read_text() == README
    assert rf.main(args) == 0
    text = readme.read_text()
    assert "| IPO | 0.900 |" in text and f"`{newest.as_posix()}`" in text and "| IPO | 0.500 |" not in text
    assert _outside(text) == _outside(README)
    assert rf.main(args + ["--check"]) == 0  # now up to date
    assert rf.main(args) == 0 and readme.read_text() == text  # idempotent


def test_missing_sources_and_bad_blocks(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    empty = tmp_path / "none"
    empty.mkdir()
    assert rf.main(["--readme", str(readme), "--runs", str(empty)]) == 0  # nothing to take: left unchanged
    assert "figures:demo: no source" in capsys.readouterr().err and readme.read_text() == README
    assert rf.main(["--readme", str(readme), "--demo", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.json'}: no such file (figures:demo)"
    bad = tmp_path / "bad" / "summary.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"objective": "positivity", "sft": {}}))
    assert rf.main(["--readme", str(readme), "--demo", str(bad)]) == 2
    assert f"{bad}: missing field 'sft.gold_reward'" in capsys.readouterr().err
    readme.write_text(README.replace("figures:vs_trl", "figures:speed"))
    with pytest.raises(rf.FiguresError, match="unknown figures block"):
        rf.update(readme.read_text(), {})


def test_the_real_readme_has_both_blocks_and_they_parse():
    text = (ROOT / "README.md").read_text()
    assert sorted(m.group("name") for m in rf.BLOCK.finditer(text)) == ["demo", "vs_trl", "vs_trl_135m"]
    assert rf.update(text, {}, note=lambda _: None) == text  # no sources: unchanged, no error
