"""The demo pipeline end to end at reduced size, and the CLI's one-line errors."""
import json
import re

import pytest

from prefopt.cli.main import main


@pytest.mark.slow
def test_demo_pipeline_reduced(tmp_path):
    from prefopt.cli.demo import DemoConfig, run_demo

    cfg = DemoConfig(sft_steps=30, sft_examples=600, pref_prompts=64, dpo_steps=6, batch_size=8,
                     eval_prompts=16, eval_samples=2, curve_points=2, max_new_tokens=16, progress=False)
    summary = run_demo(cfg, tmp_path / "demo", log=lambda *_: None)
    on_disk = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert on_disk == summary
    for key in ("gold_reward", "win_rate_vs_sft", "kl_to_sft"):
        assert isinstance(summary["dpo"][key], float)
    assert isinstance(summary["sft"]["gold_reward"], float) and summary["seconds"] > 0
    assert 0.0 <= summary["dpo"]["win_rate_vs_sft"] <= 1.0
    html = (tmp_path / "demo" / "report.html").read_text()
    for section in ("training-curves", "evaluation", "reward-vs-kl", "front", "samples", "config", "environment"):
        assert f"<section id='{section}'>" in html
    images = re.findall(r"<img src='([^']+)'", html)
    assert len(images) >= 6 and all((tmp_path / "demo" / src).is_file() for src in images)
    samples = (tmp_path / "demo" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * cfg.eval_prompts * cfg.eval_samples  # every held-out sample of SFT and DPO
    for stage in ("sft", "dpo"):
        assert (tmp_path / "demo" / stage / "metrics.jsonl").exists()
        assert list((tmp_path / "demo" / stage).glob("checkpoint-*/model/model.safetensors"))

    # Deterministic for a given seed: a second run gives the same figures.
    again = run_demo(cfg, tmp_path / "again", log=lambda *_: None)
    summary.pop("seconds"), again.pop("seconds")
    assert again == summary


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config file not found") and "\n" not in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: ten\n")
    assert main(["train", str(bad)]) == 2
    assert "train.steps: got 'ten'" in capsys.readouterr().err

    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"model: {{name_or_path: {tmp_path}/nope/model}}\nalgo: {{name: dpo}}\n"
                   f"data: {{path: {tmp_path}/prefs.jsonl}}\noutput_dir: {tmp_path}/runs\n")
    assert main(["train", str(cfg)]) == 2
    assert (f"model.name_or_path: got '{tmp_path}/nope/model', expected an existing path"
            in capsys.readouterr().err)  # checked before any work


def test_cli_bad_data_row_names_file_row_field(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"model: {{name_or_path: 'tiny:llama-1m'}}\nalgo: {{name: dpo}}\n"
                   f"data: {{task: reviews, path: {data}}}\noutput_dir: {tmp_path}/runs\n"
                   "train: {progress: false}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{data}, row 2: missing field 'rejected'" in err
    assert not list((tmp_path / "runs").rglob("checkpoint-*"))


def test_cli_train_and_resume(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", "configs/sft/reviews.yaml", f"output_dir={out}", "run_name=r", "train.steps=2",
            "train.progress=false", "data.num_examples=64", "data.eval_examples=8", "train.batch_size=4"]
    assert main(args) == 0
    assert (out / "r" / "checkpoint-2").exists()
    # Resume with a longer budget: continues from step 2.
    assert main(["train", "--resume", str(out / "r"), "train.steps=3"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "r" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line and '"eval/' not in line]
    assert steps == [1, 2, 3]


def test_tasks_command(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "reviews" in out and "arithmetic" in out
