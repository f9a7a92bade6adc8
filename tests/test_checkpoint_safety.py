"""Checkpoints that cannot execute code or be loaded half-way: the tree format, manifests and the
fallback past a corrupted checkpoint, pickles that never run, a full disk, pruning, every optimizer
through the format, signals at awkward moments. (Run directories and settings on resume:
tests/test_run_dirs.py; kill -9 end to end: tests/test_resume_kill.py.)"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli.main import main
from prefopt.data.tokenize import EncodedPair, encode_prompt_response
from prefopt.optim import build_optimizer
from prefopt.tasks import get_task
from prefopt.train import checkpoint as ck
from prefopt.train.algorithms.sft import SFT
from prefopt.train.config import LoopConfig
from prefopt.train.loop import train
from prefopt.train.metrics import read_metrics
from prefopt.train.state_io import StateFormatError, decode_tree, encode_tree, fields_of, load_tree, save_tree
from test_optim import INSTALLED, cfg_for, tiny_llama
from test_optim import train as fit

# ----------------------------------------------------------------------------- the tree format


def test_plain_tree_round_trips_exactly(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tree = {"f": [1.5, float("inf"), -0.0, 1e-310, 2 ** 70], "t": (1, (None, True), "x"),
            "tensors": {"bf16": torch.randn(3).bfloat16(), "bool": torch.tensor([True, False]),
                        "i64": torch.tensor(7), "empty": torch.zeros(0, 2), "view": base[:, 1],
                        "same": base, "again": base, "transposed": base.t(), "u8": torch.randint(0, 255, (5,), dtype=torch.uint8)},
            "marker": {"__tensor__": "not a tensor", "__tuple__": [1]}, "nested": [[{"a": None}]], "nan": float("nan")}
    save_tree(tree, tmp_path, "s")
    back = load_tree(tmp_path, "s")
    assert back["t"] == (1, (None, True), "x") and isinstance(back["t"][1], tuple)
    assert back["f"][:4] == [1.5, float("inf"), -0.0, 1e-310] and str(back["f"][2]) == "-0.0"
    assert back["f"][4] == 2 ** 70 and isinstance(back["f"][4], int)
    assert back["marker"] == tree["marker"] and back["nested"] == tree["nested"] and back["nan"] != back["nan"]
    for k, v in tree["tensors"].items():
        assert back["tensors"][k].dtype == v.dtype and torch.equal(back["tensors"][k], v), k
    assert back["tensors"]["transposed"].stride() == base.t().stride()  # kernels may round by layout


@pytest.mark.parametrize("bad, where", [
    ({"a": {"b": [1, EncodedPair([1], [2], [3], 0)]}}, "state/a/b/1"),
    ({"opt": {"state": {3: torch.zeros(1)}}}, "state/opt/state"),
    ({"x": __import__("numpy").zeros(2)}, "state/x"),
    ({"s": {1, 2}}, "state/s"),
])
def test_tree_refuses_anything_else_naming_the_path(bad, where):
    with pytest.raises(StateFormatError) as err:
        encode_tree(bad)
    assert str(err.value).startswith(where + ":")


def test_dataclass_state_made_plain_at_the_boundary():
    pair = EncodedPair([1, 2], [3], [4], 5, scores={"a": (1.0, 2.0)})
    skeleton, tensors = encode_tree({"rows": [(fields_of(pair), 0.5, -0.5)]})
    back = decode_tree(json.loads(json.dumps(skeleton)), tensors)
    assert EncodedPair(**back["rows"][0][0]) == pair


# ----------------------------------------------------------------------------- a small SFT run


def _sft(tok):
    enc = [encode_prompt_response(tok, p, r, 64, 32) for p, r in get_task("reviews").sft_corpus(48, seed=0)]
    return SFT(enc[8:], enc[:8], pad_id=tok.pad_token_id, batch_size=4, seed=0)


def _model(tok):
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    return load_model(ModelConfig(name_or_path="tiny:llama-1m"), tok)


def _run(tok, run_dir, resume=False, **kw):
    model = _model(tok)
    cfg = LoopConfig(**{"steps": 4, "save_every": 2, "progress": False, "warmup_steps": 1, **kw})
    res = train(model, _sft(tok), torch.optim.AdamW(model.parameters(), lr=1e-3), cfg, run_dir, resume=resume)
    return model, res


@pytest.fixture(scope="module")
def finished_run(reviews_tokenizer, tmp_path_factory):
    """A 4-step run with checkpoints 2 and 4 (kept as a template: tests copy it)."""
    run_dir = tmp_path_factory.mktemp("run") / "r"
    _, res = _run(reviews_tokenizer, run_dir)
    return run_dir, load_file(res.final_checkpoint / "model" / "model.safetensors")


def _copy(finished_run, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(finished_run[0], run_dir)
    return run_dir


def test_checkpoint_layout_and_manifest(finished_run):
    run_dir, _ = finished_run
    ckpt = run_dir / "checkpoint-4"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format"] == "prefopt-checkpoint" and manifest["version"] == 1 and manifest["step"] == 4
    assert {"model/model.safetensors", "trainer_state.json", "trainer_state.safetensors"} <= set(manifest["files"])
    assert not list(ckpt.rglob("*.pt")) and not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pkl"))
    assert manifest["run_id"] == json.loads((run_dir / "checkpoint-2" / "manifest.json").read_text())["run_id"]
    state = ck.load_trainer_state(ckpt)
    assert state["step"] == 4 and set(state) >= {"optimizer", "scheduler", "algorithm", "rng", "loop"}
    assert isinstance(next(iter(state["optimizer"]["state"])), int)
    assert ck.verify_checkpoint(ckpt)["files"] == manifest["files"]


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _empty(f):
    f.write_bytes(b"")


def _break_header(f):
    data = bytearray(f.read_bytes())
    data[8:16] = b"{garbage"
    f.write_bytes(bytes(data))


def _flip_byte(f):  # same size, one byte changed in the middle of the weights
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, target", [
    (_truncate, "model/model.safetensors"), (_empty, "trainer_state.safetensors"),
    (_break_header, "model/model.safetensors"), (_flip_byte, "model/model.safetensors"),
    (_flip_byte, "trainer_state.json"),
])
def test_corrupted_newest_checkpoint_is_skipped_for_the_intact_one(damage, target, finished_run, tmp_path,
                                                                   reviews_tokenizer):
    run_dir = _copy(finished_run, tmp_path)
    damage(run_dir / "checkpoint-4" / target)
    with pytest.raises(ck.CheckpointError, match=f"checkpoint-4: {target}.*checkpoint_fallback=true"):
        _run(reviews_tokenizer, run_dir, resume=True, checkpoint_fallback=False)
    assert (run_dir / "checkpoint-4").exists()  # stopping leaves everything in place
    with pytest.warns(UserWarning, match=f"checkpoint-4: {target}.*moved to corrupt-checkpoint-4; resuming from "
                                         "checkpoint-2"):
        model, res = _run(reviews_tokenizer, run_dir, resume=True)
    assert res.final_checkpoint == run_dir / "checkpoint-4" and (run_dir / "corrupt-checkpoint-4").exists()
    for k, v in finished_run[1].items():  # steps 3-4 redone from checkpoint-2: the same weights
        assert torch.equal(model.state_dict()[k], v), k
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "eval/loss" not in r]
    assert steps == [1, 2, 3, 4]


def test_no_intact_checkpoint_is_an_error_naming_each(finished_run, tmp_path, reviews_tokenizer):
    run_dir = _copy(finished_run, tmp_path)
    _empty(run_dir / "checkpoint-4" / "trainer_state.json")
    (run_dir / "checkpoint-2" / "manifest.json").unlink()
    with pytest.raises(ck.CheckpointError, match="no intact checkpoint.*checkpoint-4: trainer_state.json has 0 "
                                                 "bytes.*checkpoint-2: no manifest.json"):
        ck.select_resume_checkpoint(run_dir)


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("layout", ["old_format", "unlisted_pickle"])
def test_pickle_in_a_checkpoint_never_runs(layout, finished_run, tmp_path, reviews_tokenizer, capsys):
    run_dir = _copy(finished_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoint-2")
    sentinel = tmp_path / "pwned"
    ckpt = run_dir / "checkpoint-4"
    if layout == "old_format":
        for f in ("manifest.json", "trainer_state.json", "trainer_state.safetensors"):
            (ckpt / f).unlink()
    with (ckpt / "trainer_state.pt").open("wb") as fh:
        pickle.dump({"step": 4, "x": _CreatesFile(str(sentinel))}, fh)
    message = "old checkpoint format" if layout == "old_format" else "trainer_state.pt is not in the manifest"
    with pytest.raises(ck.CheckpointError, match=message):
        _run(reviews_tokenizer, run_dir, resume=True)
    (run_dir / "config.yaml").write_text("model: {name_or_path: 'tiny:llama-1m'}\nalgo: {name: sft}\n"
                                         "data: {task: reviews}\n")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ck.CheckpointError, match=message):
        ck.load_trainer_state(ckpt)
    assert not sentinel.exists()


def test_full_disk_leaves_no_temporary_folder(tmp_path, tiny_llama, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".tmp-checkpoint-3" / "x"))
    monkeypatch.setattr(ck, "save_tree", full)
    with pytest.raises(ck.CheckpointError, match="could not write checkpoint .*checkpoint-3: No space left on device"):
        ck.save_checkpoint(tmp_path, 3, tiny_llama, None, {"algorithm": {}})
    assert not list(tmp_path.iterdir())


def test_pruning_never_removes_another_runs_checkpoints(tmp_path, tiny_llama):
    for step, run in ((55, "old"), (60, "old"), (10, "new"), (12, "new"), (14, "new")):
        ck.save_checkpoint(tmp_path, step, tiny_llama, None, {"algorithm": {}}, keep_last=2, run_id=run)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [f"checkpoint-{s}" for s in (12, 14, 55, 60)]


@pytest.mark.parametrize("name", INSTALLED)
def test_every_optimizer_round_trips_through_the_checkpoint(name, tmp_path):
    """3 steps, checkpoint (safetensors + JSON), fresh model and optimizer, 3 steps == 6 straight."""
    cfg = cfg_for(name)
    straight = tiny_llama()
    fit(straight, build_optimizer(straight, cfg), 6)
    first = tiny_llama()
    opt = build_optimizer(first, cfg)
    fit(first, opt, 3)
    ckpt = ck.save_checkpoint(tmp_path, 3, first, None, {"optimizer": opt.state_dict()})
    ck.verify_checkpoint(ckpt)
    resumed = tiny_llama(seed=123)
    ck.load_model_weights(resumed, ckpt)
    opt = build_optimizer(resumed, cfg)
    opt.load_state_dict(ck.load_trainer_state(ckpt)["optimizer"])
    fit(resumed, opt, 3)
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{name}: {n} differs after resume"


# ----------------------------------------------------------------------------- signals at awkward moments


def test_signal_during_a_save_or_an_update_waits_for_it(reviews_tokenizer, tmp_path, monkeypatch, finished_run):
    from prefopt.train.interrupt import TrainingInterrupted

    original = ck._write_manifest

    def manifest_then_signal(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # held: the checkpoint is completed first
        return original(*a, **k)
    monkeypatch.setattr(ck, "_write_manifest", manifest_then_signal)
    with pytest.raises(TrainingInterrupted) as stop:
        _run(reviews_tokenizer, tmp_path / "a")
    assert stop.value.checkpoint == tmp_path / "a" / "checkpoint-2" and stop.value.signum == signal.SIGTERM
    ck.verify_checkpoint(stop.value.checkpoint)
    assert not list((tmp_path / "a").glob(".tmp-*"))
    monkeypatch.setattr(ck, "_write_manifest", original)

    model = _model(reviews_tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1) or (len(calls) == 3 and os.kill(os.getpid(), signal.SIGINT)))
    cfg = LoopConfig(steps=4, save_every=2, progress=False, warmup_steps=1)
    with pytest.raises(TrainingInterrupted) as stop:  # SIGINT right after step 3's update: step 3 is kept
        train(model, _sft(reviews_tokenizer), opt, cfg, tmp_path / "b")
    assert stop.value.checkpoint == tmp_path / "b" / "checkpoint-3"
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
    resumed, _ = _run(reviews_tokenizer, tmp_path / "b", resume=True)
    for k, v in finished_run[1].items():
        assert torch.equal(resumed.state_dict()[k], v), k


@pytest.mark.parametrize("algo", ["iterative_dpo", "raft"])
def test_round_rows_resume_exactly_from_the_plain_format(algo, tmp_path):
    """A checkpoint in the middle of a round holds that round's rows (EncodedPair made plain)."""
    from test_online_algorithms import _cfg

    from prefopt.cli.run import run_train

    over = dict(online__steps_per_round=2, online__round_prompts=4, train__save_every=1)
    straight = run_train(_cfg(tmp_path / "a", algo, train__steps=3, **over))
    run_train(_cfg(tmp_path / "b", algo, train__steps=1, **over))
    rows = ck.load_trainer_state(tmp_path / "b" / algo / "checkpoint-1")["algorithm"]["sources"][0]["rows"]
    assert rows and isinstance(rows[0], (list, tuple))
    resumed = run_train(_cfg(tmp_path / "b", algo, train__steps=3, **over), resume=True)
    a = load_file(straight.result.final_checkpoint / "model" / "model.safetensors")
    b = load_file(resumed.result.final_checkpoint / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
