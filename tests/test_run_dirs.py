"""Run directories that cannot be clobbered (locks, --overwrite) and setting changes on resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from prefopt.cli.main import main
from prefopt.cli.resume import resume_changes
from prefopt.errors import ConfigError
from prefopt.train.metrics import read_metrics
from prefopt.train.rundir import RunLockedError, acquire, prepare_new_run, release

# ----------------------------------------------------------------------------- run directories


def test_lock_names_a_live_owner_and_takes_over_a_stale_one(tmp_path, capsys):
    run = tmp_path / "runs" / "reuse"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from prefopt.train.rundir import acquire
        acquire({str(run)!r}); print("held", flush=True); time.sleep(60)""")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid} "):
            acquire(run)
        assert main(_cli(tmp_path / "runs", "train.steps=1")) == 2  # a second run of the same name
        assert f"runs/reuse is in use by process {holder.pid} on " in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=f"taking over the stale lock of process {holder.pid}"):
        acquire(run)
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    release(run)
    assert not (run / ".lock").exists()


def test_new_run_in_a_used_directory_needs_overwrite(tmp_path):
    (tmp_path / "checkpoint-60").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / ".lock").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run .*checkpoint-60, metrics.jsonl.*--resume.*--overwrite"):
        prepare_new_run(tmp_path, overwrite=False)
    prepare_new_run(tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def _cli(out, *extra):
    return ["train", "configs/sft/reviews.yaml", f"output_dir={out}", "run_name=reuse", "train.progress=false",
            "data.num_examples=48", "data.eval_examples=8", "train.batch_size=4", "train.eval_every=0",
            "train.threads=1", *extra]


def test_reused_run_name_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(_cli(out, "train.steps=3")) == 0
    assert main(_cli(out, "train.steps=1")) == 2
    assert "runs/reuse already holds a run" in capsys.readouterr().err
    assert (out / "reuse" / "checkpoint-3").exists()
    assert main(_cli(out, "train.steps=1", "--overwrite")) == 0
    assert sorted(p.name for p in (out / "reuse").glob("checkpoint-*")) == ["checkpoint-1"]
    assert [r["step"] for r in read_metrics(out / "reuse" / "metrics.jsonl") if "loss" in r][:1] == [1]


# ----------------------------------------------------------------------------- settings on resume


def test_resume_accepts_only_safe_changes():
    saved = {"train": {"steps": 60, "eval_every": 10, "lr_schedule": "cosine"}, "optim": {"name": "adamw"},
             "output_dir": "a"}
    assert resume_changes(saved, {**saved, "train": {**saved["train"], "steps": 100, "eval_every": 0},
                                  "output_dir": "b"}, 60) == {
        "output_dir": ("a", "b"), "train.eval_every": (10, 0), "train.steps": (60, 100)}
    with pytest.raises(ConfigError, match="optim.name was 'adamw' in this run, now 'lion'.*cannot change on resume"):
        resume_changes(saved, {**saved, "optim": {"name": "lion"}}, 60)
    with pytest.raises(ConfigError, match="train.lr_schedule was 'cosine'"):
        resume_changes(saved, {**saved, "train": {**saved["train"], "lr_schedule": "linear"}}, 60)
    with pytest.raises(ConfigError, match="train.steps=40 is below the checkpoint's step 60"):
        resume_changes(saved, {**saved, "train": {**saved["train"], "steps": 40}}, 60)


def test_resume_with_raised_steps_replans_the_schedule_and_records_it(tmp_path, capsys):
    from prefopt.train.schedule import lr_factor

    out = tmp_path / "runs"
    run = out / "reuse"
    assert main(_cli(out, "train.steps=3", "train.warmup_steps=1")) == 0
    lines_before = (run / "metrics.jsonl").read_text().count("\n")
    assert main(["train", "--resume", str(run)]) == 0  # finished, same settings: nothing to do
    assert (run / "metrics.jsonl").read_text().count("\n") == lines_before  # no second evaluation
    assert main(["train", "--resume", str(run), "optim.name=lion"]) == 2
    assert "optim.name was 'adamw' in this run, now 'lion'" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="train.steps 3 -> 6"):
        assert main(["train", "--resume", str(run), "train.steps=6"]) == 0
    lrs = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if "lr" in r}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    for s in (4, 5, 6):  # what a run planned for 6 steps uses, from the first step after the resume
        assert lrs[s] == pytest.approx(3e-3 * lr_factor(s - 1, schedule="cosine", total_steps=6, warmup_steps=1))
    assert lrs[4] > 0
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["changes"] == {"train.steps": [3, 6]} and record["checkpoint"] == "checkpoint-3"
    assert "steps: 6" in (run / "config.yaml").read_text()


def test_sigint_during_start_up_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    import prefopt.cli.run as run_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_mod, "build_model", interrupted)
    assert main(_cli(tmp_path / "runs", "train.steps=2")) == 130
    assert "interrupted during start-up: nothing was saved" in capsys.readouterr().err
    assert not list((tmp_path / "runs").rglob("checkpoint-*"))
    assert not (tmp_path / "runs" / "reuse" / ".lock").exists()


def test_resume_refuses_remote_code_from_the_run_folder(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name_or_path: 'tiny:llama-1m', trust_remote_code: true}\n")
    assert main(["train", "--resume", str(run)]) == 2
    assert "pass model.trust_remote_code=true on the command line" in capsys.readouterr().err
