"""Data parallelism is exact: 2 ranks × batch B (torchrun, gloo, CPU) give the weights of 1 rank ×
batch 2B and of 1 rank × B with grad_accum 2, to 1e-5 after 4 AdamW steps, for a pairwise loss
(DPO; lab pairs of uneven lengths), a token-level policy-gradient term (GRPO, token_mean, online
samples) and a two-term hybrid recipe (HyPO: DPO + online reverse KL); FSDP2 equals DDP;
a 2-rank checkpoint resumes on 1 rank and a 1-rank checkpoint on 2 ranks (the CLI's --resume);
an error on one rank stops every rank with that rank's message.

Two torchrun launches (bounded by a timeout, process group killed on expiry); the 1-rank
references run in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli.config import from_dict
from prefopt.cli.run import run_train
from prefopt.train.config import TrainConfig
from prefopt.train.metrics import read_metrics

from offline_fixtures import lab_pairs, write_jsonl

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TOL = 1e-5
LAUNCH_TIMEOUT_S = 300


def torchrun(args: list[str], timeout: float = LAUNCH_TIMEOUT_S, nproc: int = 2, **env_over) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc ARGS``; on timeout the whole process group is killed."""
    env = {**os.environ, **env_over, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _config(out: Path, name: str, algo: str, pairs: Path, **over) -> dict:
    cfg = {"model": {"name_or_path": "tiny:llama-1m"},
           "data": {"task": "reviews", "path": str(pairs), "eval_examples": 4, "max_length": 64,
                    "max_prompt_length": 24},
           # eps 1e-6 (AdamW's default 1e-8): an element whose gradient is float noise around 0 would make a
           # lr-sized first step of either sign — in a 1-process run with accumulation as much as across ranks.
           "optim": {"lr": 1e-3, "eps": 1e-6},
           "train": {"steps": 4, "batch_size": 4, "progress": False, "lr_schedule": "constant", "threads": 1,
                     "save_every": 2, "keep_checkpoints": 3},
           "algo": {"name": algo},
           "output_dir": str(out), "run_name": name}
    if algo in ("grpo", "reinforce_pp"):
        cfg["data"] = {"task": "reviews", "eval_examples": 2}
        cfg.update(rollout={"max_new_tokens": 8},
                   online={"prompts_per_step": 2, "num_generations": 4, "num_prompts": 32, "eval_num_samples": 1,
                           "loss_aggregation": "token_mean", "reward": [{"name": "dist_reward_fns:words"}]})
    if algo == "hypo":
        cfg.update(rollout={"max_new_tokens": 6}, hypo={"prompts_per_step": 2, "num_samples": 2, "kl_coef": 0.5})
    for dotted, value in over.items():
        node = cfg
        *path, last = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def _local(cfg: dict, resume: Path | None = None):
    return run_train(from_dict(TrainConfig, cfg), resume=resume is not None, run_dir=resume)


def _weights(run: Path, step: int = 4) -> dict[str, torch.Tensor]:
    return load_file(run / f"checkpoint-{step}" / "model" / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _half(run: Path, to: Path) -> Path:
    """A copy of ``run`` holding only its step-2 checkpoint (as if it had stopped there)."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoint-4")
    return to


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    pairs = write_jsonl(out / "pairs.jsonl", lab_pairs(40))
    local = {
        "dpo_2b": _config(out, "dpo_2b", "dpo", pairs, train__batch_size=8),
        "dpo_accum": _config(out, "dpo_accum", "dpo", pairs, train__grad_accum=2),
        "grpo_2b": _config(out, "grpo_2b", "grpo", pairs, online__prompts_per_step=4),
        "grpo_accum": _config(out, "grpo_accum", "grpo", pairs, online__prompts_per_step=4, train__grad_accum=2),
        "hypo_2b": _config(out, "hypo_2b", "hypo", pairs, train__batch_size=8, hypo__prompts_per_step=4),
        "hypo_accum": _config(out, "hypo_accum", "hypo", pairs, train__grad_accum=2, hypo__prompts_per_step=4),
        "rpp_2b": _config(out, "rpp_2b", "reinforce_pp", pairs, online__prompts_per_step=4),
    }
    for cfg in local.values():
        _local(cfg)
    jobs = [{"config": _config(out, "dpo_ddp", "dpo", pairs)},
            {"config": _config(out, "dpo_fsdp2", "dpo", pairs, dist__strategy="fsdp2")},
            {"config": _config(out, "grpo_ddp", "grpo", pairs)},
            {"config": _config(out, "hypo_ddp", "hypo", pairs)},
            {"config": _config(out, "rpp_ddp", "reinforce_pp", pairs)},
            {"config": _config(out, "dpo_precomputed", "dpo", pairs, algo__reference="precomputed")},
            {"config": _config(out, "fail", "grpo", pairs, online__reward=[{"name": "dist_reward_fns:fails_on_rank_1"}]),
             "expect_error": str(out / "fail")}]
    spec = out / "spec.json"
    spec.write_text(json.dumps(jobs))
    # A fresh cache (the lab tokenizer copied in): the precomputed reference is computed here, not reused.
    cache = out / "cache"
    shutil.copytree(Path(os.environ["PREFOPT_CACHE"]) / "tokenizers", cache / "tokenizers")
    launched = torchrun([str(TESTS / "dist_worker.py"), str(spec)], PREFOPT_CACHE=str(cache))
    assert launched.returncode == 0, launched.stderr[-4000:]
    # 1 rank -> 2 ranks through the CLI: resume the 1-rank run's step-2 checkpoint with batch 4 per rank.
    resumed = _half(out / "dpo_2b", out / "dpo_1to2")
    cli = torchrun(["-m", "prefopt.cli.main", "train", "--resume", str(resumed), "train.batch_size=4"])
    assert cli.returncode == 0, cli.stderr[-4000:]
    # 2 ranks -> 1 rank: resume the 2-rank run's step-2 checkpoint with batch 8.
    _local(local["dpo_2b"] | {"run_name": "dpo_2to1"}, resume=_half(out / "dpo_ddp", out / "dpo_2to1"))
    return out, cli


@pytest.mark.parametrize("recipe", ["dpo", "grpo", "hypo"])
def test_two_ranks_equal_one_rank_with_twice_the_batch_and_with_accumulation(runs, recipe):
    out, _ = runs
    two = _weights(out / f"{recipe}_ddp")
    assert _max_diff(two, _weights(out / f"{recipe}_2b")) < TOL
    assert _max_diff(two, _weights(out / f"{recipe}_accum")) < TOL
    init = _weights(out / f"{recipe}_2b", 2)
    assert _max_diff(two, init) > 1e-4  # the steps did move the weights


def test_batch_whitening_and_reference_precompute_are_global(runs):
    out, _ = runs
    # REINFORCE++ whitens returns over the whole batch: over both ranks' tokens, not each rank's.
    assert _max_diff(_weights(out / "rpp_ddp"), _weights(out / "rpp_2b")) < TOL
    # Each rank precomputes half the reference log-probs; gathered, they train as the live reference does.
    assert _max_diff(_weights(out / "dpo_precomputed"), _weights(out / "dpo_ddp")) < TOL
    stats = read_metrics(out / "dpo_precomputed" / "metrics.jsonl")[0]
    assert stats["reference/precomputed_examples"] == 40 and stats["reference/cache_hit"] == 0.0


def test_fsdp2_equals_ddp(runs):
    out, _ = runs
    assert _max_diff(_weights(out / "dpo_fsdp2"), _weights(out / "dpo_ddp")) < TOL


def test_rank_zero_alone_writes_and_metrics_are_global(runs):
    out, _ = runs
    two = [r for r in read_metrics(out / "dpo_ddp" / "metrics.jsonl") if "loss" in r and "step" in r]
    one = [r for r in read_metrics(out / "dpo_2b" / "metrics.jsonl") if "loss" in r and "step" in r]
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one record per step: rank 1 wrote nothing
    for a, b in zip(two, one):
        for key in ("loss", "grad_norm", "rewards/accuracy", "rewards/margin"):
            assert abs(a[key] - b[key]) < 1e-5, key
    assert sorted(p.name for p in (out / "dpo_ddp").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resume_across_world_sizes(runs):
    out, cli = runs
    target = _weights(out / "dpo_2b")
    assert _max_diff(_weights(out / "dpo_2to1"), target) < TOL  # a 2-rank checkpoint continued on 1 rank
    assert _max_diff(_weights(out / "dpo_1to2"), target) < TOL  # a 1-rank checkpoint continued on 2 ranks
    assert cli.stdout.count("run: ") == 1  # rank 0 alone reports


def test_an_error_on_one_rank_stops_every_rank_with_its_message(runs):
    out, _ = runs
    outcomes = {r: (out / f"fail.rank{r}").read_text() for r in (0, 1)}
    assert "reward server down on rank 1" in outcomes[1]
    assert outcomes[0].startswith("TrainingError: rank 1 failed") and "reward server down on rank 1" in outcomes[0]
    assert not list((out / "fail").glob("checkpoint-*"))  # no checkpoint of a half step
