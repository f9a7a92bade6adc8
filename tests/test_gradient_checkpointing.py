"""model.gradient_checkpointing: recomputed activations, the same training steps."""
from __future__ import annotations

import pytest

from offline_fixtures import lab_pairs, one_thread, write_jsonl  # noqa: F401
from prefopt.cli.config import from_dict
from prefopt.errors import ConfigError
from prefopt.train.config import TrainConfig


def _cfg(tmp_path, name: str, **model) -> TrainConfig:
    path = tmp_path / "pairs.jsonl"
    if not path.exists():
        write_jsonl(path, lab_pairs(24))
    return from_dict(TrainConfig, {
        "model": {"name_or_path": "tiny:llama-1m", **model},
        "data": {"task": "reviews", "eval_examples": 4, "path": str(path), "max_length": 64, "max_prompt_length": 24},
        "optim": {"lr": 1e-3}, "algo": {"name": "dpo", "reference": "copy"}, "output_dir": str(tmp_path),
        "run_name": name, "lora": {"enabled": name.startswith("lora")},
        "train": {"steps": 3, "batch_size": 4, "progress": False, "lr_schedule": "constant"}})


def _steps(out) -> list[tuple[float, float]]:
    from prefopt.train.metrics import read_metrics
    return [(r["loss"], r["grad_norm"]) for r in read_metrics(out.run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_checkpointed_steps_equal_plain_steps(kind, tmp_path, one_thread, monkeypatch):  # noqa: F811
    """DPO with a live reference, 3 steps: losses and gradient norms equal to 1e-6 with and without
    checkpointing, and checkpointing really ran (each decoder layer's MLP ran again in backward)."""
    from transformers.models.llama import modeling_llama

    from prefopt.cli.run import run_train

    plain = _steps(run_train(_cfg(tmp_path, f"{kind}-plain")))
    calls = {"n": 0}
    forward = modeling_llama.LlamaMLP.forward  # inside a layer: the layer's own forward is the checkpoint wrapper

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    ckpt = _steps(run_train(_cfg(tmp_path, f"{kind}-ckpt", gradient_checkpointing=True)))
    assert len(plain) == len(ckpt) == 3
    for (la, ga), (lb, gb) in zip(plain, ckpt):
        assert lb == pytest.approx(la, abs=1e-6) and gb == pytest.approx(ga, rel=1e-5)
    with_recompute = calls["n"]
    calls["n"] = 0
    run_train(_cfg(tmp_path, f"{kind}-plain-counted"))
    assert with_recompute > calls["n"]  # the backward ran the layers' forward again


def test_a_model_without_checkpointing_support_is_one_line():
    import torch

    from prefopt.models.config import ModelConfig
    from prefopt.models.lora import apply_checkpointing

    with pytest.raises(ConfigError, match="model.gradient_checkpointing: Linear does not support"):
        apply_checkpointing(torch.nn.Linear(2, 2), ModelConfig(gradient_checkpointing=True))
