"""Crash-proof resume: a real SIGKILL (or SIGTERM) of a `prefopt train` subprocess at several points,
then `--resume`, gives final weights bit-identical to an uninterrupted run and a metrics.jsonl with
every step exactly once, for an offline (SFT), an online (RLOO) and a hybrid (HyPO) recipe."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli.main import main
from prefopt.train.checkpoint import list_checkpoints, load_trainer_state

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("kill_driver.py")

SFT = ["configs/sft/reviews.yaml", "train.steps=8", "train.save_every=2", "train.eval_every=3",
       "train.keep_checkpoints=2", "train.warmup_steps=2", "train.batch_size=4", "train.progress=false",
       "train.threads=1", "data.num_examples=64", "data.eval_examples=8"]
RLOO = ["configs/online/rloo_reviews.yaml", "model.name_or_path=tiny:llama-1m", "train.steps=4", "train.save_every=1",
        "train.eval_every=2", "train.warmup_steps=1", "train.batch_size=4", "train.progress=false", "train.threads=1",
        "data.eval_examples=3", "rollout.max_new_tokens=8", "online.prompts_per_step=3", "online.num_prompts=32",
        "online.eval_num_samples=1", "online.reward=[{name: 'online_reward_fns:length'}]"]

HYPO = ["model.name_or_path=tiny:llama-1m", "data.task=reviews", "algo.name=hypo", "algo.reference=copy",
        "hypo.num_samples=2", "hypo.prompts_per_step=2", "train.steps=4", "train.save_every=1", "train.eval_every=2",
        "train.warmup_steps=1", "train.batch_size=4", "train.progress=false", "train.threads=1",
        "data.eval_examples=2", "data.max_length=64", "data.max_prompt_length=24", "rollout.max_new_tokens=6"]


def _driven(point: str, n: int, sig: str, args: list[str]) -> subprocess.CompletedProcess:
    """`prefopt ARGS` in a subprocess that sends itself ``sig`` at the ``n``-th ``point``."""
    return subprocess.run([sys.executable, str(DRIVER), point, str(n), sig, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})


def _start(run_dir: Path, recipe: list[str], point: str, n: int, sig: str) -> subprocess.CompletedProcess:
    return _driven(point, n, sig, ["train", *recipe, f"output_dir={run_dir.parent}", f"run_name={run_dir.name}"])


def _interrupted(run_dir: Path, point: str, n: int, sig: str) -> subprocess.CompletedProcess:
    return _driven(point, n, sig, ["train", "--resume", str(run_dir)])


def _expect(proc: subprocess.CompletedProcess, sig: str) -> None:
    code = -signal.SIGKILL if sig == "KILL" else 128 + getattr(signal, f"SIG{sig}")
    assert proc.returncode == code, proc.stderr[-3000:]
    if sig != "KILL":
        assert "holds the last completed step; continue with `prefopt train --resume" in proc.stderr, proc.stderr


def _same(record: dict) -> dict:
    """A metrics record without its timings (wall-clock: differs between any two runs)."""
    return {k: v for k, v in record.items()
            if not k.startswith(("time/", "memory/")) and not k.endswith(("tokens/s", "per_s", "seconds"))}


def _check(run_dir: Path, reference: Path, eval_steps: list[int], steps: int) -> None:
    assert main(["train", "--resume", str(run_dir)]) == 0
    final = list_checkpoints(run_dir)[-1]
    assert final.name == f"checkpoint-{steps}"
    a, b = load_file(reference / final.name / "model" / "model.safetensors"), load_file(final / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = load_trainer_state(reference / final.name), load_trainer_state(final)
    for k, v in sa["optimizer"]["state"].items():
        assert all(torch.equal(v[s], sb["optimizer"]["state"][k][s]) for s in v), k
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]  # no torn line
    train_steps = Counter(r["step"] for r in records if "loss" in r and not any(k.startswith("eval/") for k in r))
    assert sorted(train_steps) == list(range(1, steps + 1)) and set(train_steps.values()) == {1}, train_steps
    evals = Counter(r["step"] for r in records if any(k.startswith("eval/") for k in r))
    assert sorted(evals) == eval_steps and set(evals.values()) == {1}, evals
    ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(ref)
    for r, q in zip(records, ref):  # the same values, in the same order
        assert _same(r) == _same(q), {k: (r.get(k), q.get(k)) for k in _same(r) | _same(q) if r.get(k) != q.get(k)}
    assert not list(run_dir.glob(".tmp-*")) and not (run_dir / ".lock").exists()


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory) -> Path:
    reference = tmp_path_factory.mktemp("ref") / "r"
    assert main(["train", *SFT, f"output_dir={reference.parent}", "run_name=r"]) == 0
    return reference


@pytest.mark.slow
def test_sft_survives_sigkill_inside_a_step_a_save_and_an_evaluation(tmp_path, sft_reference):
    run = tmp_path / "runs" / "r"
    _expect(_start(run, SFT, "backward", 3, "KILL"), "KILL")  # inside step 3: checkpoint-2 stays the newest
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"] and (run / ".lock").exists()
    _expect(_interrupted(run, "save", 1, "KILL"), "KILL")  # while checkpoint-4 is written (stale lock taken over)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"] and (run / ".tmp-checkpoint-4").exists()
    _expect(_interrupted(run, "eval_log", 2, "KILL"), "KILL")  # half of step 6's evaluation line is on disk
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    _check(run, sft_reference, [3, 6, 8], 8)


def _signal_on(monkeypatch, module, attr: str, n: int, sig=signal.SIGTERM) -> None:
    original, calls = getattr(module, attr), {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)
    monkeypatch.setattr(module, attr, wrapper)


def test_sigterm_inside_a_step_and_during_an_evaluation_saves_and_resumes_exactly(tmp_path, sft_reference,
                                                                                  monkeypatch, capsys):
    import prefopt.train.loop as loop

    run = tmp_path / "runs" / "r"
    with monkeypatch.context() as m:
        _signal_on(m, torch.autograd, "backward", 4)  # inside step 4
        assert main(["train", *SFT, f"output_dir={run.parent}", "run_name=r"]) == 128 + signal.SIGTERM
    assert f"interrupted (SIGTERM): {run / 'checkpoint-3'} holds the last completed step" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-3"]
    with monkeypatch.context() as m:
        _signal_on(m, loop, "_evaluate", 1)  # step 6's evaluation
        assert main(["train", "--resume", str(run)]) == 128 + signal.SIGTERM
    assert load_trainer_state(run / "checkpoint-6")["loop"]["eval_pending"] is True  # evaluated first on resume
    with monkeypatch.context() as m:
        _signal_on(m, torch.autograd, "backward", 1, signal.SIGINT)  # SIGINT works the same way
        assert main(["train", "--resume", str(run)]) == 128 + signal.SIGINT
    assert load_trainer_state(run / "checkpoint-6")["loop"]["eval_pending"] is False
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored after the run
    _check(run, sft_reference, [3, 6, 8], 8)


@pytest.mark.slow
def test_rloo_survives_sigkill_inside_a_rollout_a_save_and_an_evaluation(tmp_path):
    reference = tmp_path / "ref" / "r"
    assert main(["train", *RLOO, f"output_dir={reference.parent}", "run_name=r"]) == 0
    run = tmp_path / "runs" / "r"
    _expect(_start(run, RLOO, "generate", 2, "KILL"), "KILL")  # inside step 2's rollout
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1"]
    _expect(_interrupted(run, "save", 1, "KILL"), "KILL")  # while checkpoint-2 is written
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1"] and (run / ".tmp-checkpoint-2").exists()
    _expect(_interrupted(run, "eval", 1, "KILL"), "KILL")  # step 2's evaluation
    _check(run, reference, [2, 4], 4)


@pytest.mark.slow
def test_hypo_survives_sigkill_inside_a_step_a_save_and_an_evaluation(tmp_path):
    """The hybrid recipe: offline pairs (DPO) plus the online reverse-KL term on fresh samples."""
    from offline_fixtures import lab_pairs, write_jsonl

    pairs = write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(16))
    recipe = [*HYPO, f"data.path={pairs}"]
    reference = tmp_path / "ref" / "r"
    assert main(["train", *recipe, f"output_dir={reference.parent}", "run_name=r"]) == 0
    run = tmp_path / "runs" / "r"
    _expect(_start(run, recipe, "generate", 2, "KILL"), "KILL")  # inside step 2's fresh samples
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1"]
    _expect(_interrupted(run, "save", 1, "KILL"), "KILL")  # while checkpoint-2 is written
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1"]
    _expect(_interrupted(run, "backward", 3, "KILL"), "KILL")  # inside a step after resuming
    _check(run, reference, [2, 4], 4)
