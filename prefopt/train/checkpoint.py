"""Atomic checkpoints: HF-format model (safetensors) + tokenizer + optimizer, scheduler, RNG, data position.

A checkpoint is written into ``<dir>/.tmp-checkpoint-N`` and renamed to ``checkpoint-N`` only when
complete, so an interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep_last: int = 2,
                    model_state: dict | None = None) -> Path:
    """Write ``run_dir/checkpoint-<step>`` atomically and prune all but the ``keep_last`` newest.
    ``model_state``: the full weights to save instead of ``model``'s own (an FSDP2-sharded model)."""
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    model.save_pretrained(tmp / "model", safe_serialization=True,
                          **({"state_dict": model_state} if model_state is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    torch.save({"rng": rng_state(), **trainer_state, "step": step}, tmp / STATE_FILE)
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    found = [p for p in run_dir.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=False)


def load_model_weights(model, ckpt: Path) -> None:
    """Load the checkpoint's weights into ``model`` in place (works for plain and PEFT models)."""
    model_dir = Path(ckpt) / "model"
    if hasattr(model, "load_checkpoint_dir"):  # models with their own layout (e.g. a reward ensemble)
        model.load_checkpoint_dir(model_dir)
        return
    if hasattr(model, "load_adapter") and (model_dir / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
        return
    missing, unexpected = model.load_state_dict(read_model_state(ckpt), strict=False)
    # Tied weights (e.g. lm_head = embeddings) are saved once; anything else missing is an error.
    missing = [m for m in missing if m not in _tied_names(model)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def read_model_state(ckpt: Path) -> dict:
    """The full weights of a checkpoint's model (all its safetensors files)."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted((Path(ckpt) / "model").glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _tied_names(model) -> set[str]:
    names = set()
    tied = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(tied, dict):
        names.update(tied)
    else:
        names.update(tied)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        names.add("lm_head.weight")
    return names
