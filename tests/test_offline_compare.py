"""``prefopt compare`` end to end at a reduced size: SFT → samples → losses × flip rates → tables."""
import json

import pytest

from prefopt.cli.main import main

from offline_fixtures import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_compare_smoke(tmp_path, capsys):
    rc = main(["compare", "sft_steps=8", "sft_examples=200", "pref_prompts=24", "heldout_pairs=12", "steps=2",
               "eval_prompts=6", "eval_samples=1", "losses=[dpo,simpo,kto]", "flip_rates=[0.0,0.4]",
               "batch_size=4", "max_new_tokens=10", "threads=1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    assert [(r["loss"], r["flip_rate"]) for r in summary["results"]] == [
        (loss, eps) for eps in (0.0, 0.4) for loss in ("dpo", "simpo", "kto")]
    for r in summary["results"]:
        assert 0.0 <= r["win_rate_vs_sft"] <= 1.0 and 0.0 <= r["ranking_accuracy"] <= 1.0
        assert r["reference"] == ("none" if r["loss"] == "simpo" else "precomputed")
    # nested noise: ε = 0 flips nothing, 0.4 flips some
    assert summary["data"]["eps0"]["flipped"] == 0 and summary["data"]["eps0.4"]["flipped"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| gold reward | ε=0 | ε=0.4 |" in md and "| kto |" in md and "| gold reward |" in out
    assert (tmp_path / "gold_vs_flip.png").stat().st_size > 1000


def test_relabel_is_nested_across_flip_rates():
    from prefopt.cli.compare import relabel

    base = [{"prompt": "p", "chosen": f"a{i}", "rejected": f"b{i}", "scores": {"g": [1.0, 0.0]}} for i in range(200)]
    low, s_low = relabel(base, 0.2, seed=0)
    high, s_high = relabel(base, 0.4, seed=0)
    flipped_low = {i for i, r in enumerate(low) if r["chosen"].startswith("b")}
    flipped_high = {i for i, r in enumerate(high) if r["chosen"].startswith("b")}
    assert flipped_low < flipped_high and s_low["flipped"] == len(flipped_low)
    assert all(r["scores"]["g"] == [0.0, 1.0] for i, r in enumerate(high) if i in flipped_high)
    assert 20 <= len(flipped_low) <= 60 and 55 <= len(flipped_high) <= 105


def test_compare_config_rejects_bad_values():
    from prefopt.cli.compare import CompareConfig
    from prefopt.cli.config import from_dict
    from prefopt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"flip_rates\[1\]: got 0.5, expected a number in \[0, 0.5\)"):
        from_dict(CompareConfig, {"flip_rates": [0.0, 0.5]})
    with pytest.raises(ConfigError, match="did you mean 'simpo'"):
        from_dict(CompareConfig, {"losses": ["simpoo"]})
