"""Checkpoints that cannot execute code and cannot be loaded half-way.

Layout of ``<run_dir>/checkpoint-N/``::

    model/                     HF ``save_pretrained`` output (safetensors weights, config, tokenizer)
    trainer_state.safetensors  every tensor of the trainer state (optimizer, RNG, algorithm buffers, ...)
    trainer_state.json         the rest of the trainer state (see ``state_io``: no pickle anywhere)
    config.yaml                the run's config when the checkpoint was written (if the run has one)
    manifest.json              written last: format, step, run id, size and sha256 of every other file

A checkpoint is written into ``.tmp-checkpoint-N``, flushed to disk, and renamed to
``checkpoint-N`` only when complete. Resuming verifies the manifest first; a checkpoint whose files
do not match it (truncated, emptied, edited, extra files such as a pickle) is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch

from prefopt.errors import TrainingError
from prefopt.train.state_io import StateFormatError, load_tree, save_tree

FORMAT, VERSION = "prefopt-checkpoint", 1
MANIFEST = "manifest.json"
STATE_NAME = "trainer_state"  # trainer_state.json + trainer_state.safetensors
OLD_STATE_FILE = "trainer_state.pt"  # the pickle of earlier versions: refused, never loaded
CONFIG_FILE = "config.yaml"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(TrainingError):
    """A checkpoint is missing, corrupted, of an old format or not a prefopt checkpoint."""


# ----------------------------------------------------------------------------- random state

def rng_state() -> dict:
    """Python, numpy and torch (CPU and initialized CUDA) generators as a plain tree."""
    import numpy as np

    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- optimizer state keys

def optimizer_to_tree(sd: dict) -> dict:
    """``optimizer.state_dict()`` with its int parameter ids as str keys (a plain tree)."""
    return {**sd, "state": {str(k): v for k, v in sd["state"].items()}}


def optimizer_from_tree(tree: dict) -> dict:
    return {**tree, "state": {int(k): v for k, v in tree["state"].items()}}


# ----------------------------------------------------------------------------- writing

def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep_last: int = 2,
                    run_id: str = "", model_state: dict | None = None) -> Path:
    """Write ``run_dir/checkpoint-<step>`` atomically; then prune this run's checkpoints (``run_id``)
    to the ``keep_last`` newest. ``trainer_state`` is a plain tree; its ``optimizer`` entry may be an
    ``optimizer.state_dict()``. A failed write (e.g. a full disk) leaves no temporary folder behind.
    ``model_state``: the full weights to save instead of ``model``'s own (an FSDP2-sharded model)."""
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    state = {"rng": rng_state(), **trainer_state, "step": step}
    if "optimizer" in state:
        state["optimizer"] = optimizer_to_tree(state["optimizer"])
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        _write_contents(tmp, run_dir, model, tokenizer, state, model_state)
        _write_manifest(tmp, step, run_id)
        if final.exists():
            _remove(final)
        tmp.rename(final)
        _fsync_dir(run_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        newest = latest_checkpoint(run_dir)
        raise CheckpointError(f"could not write checkpoint {final}: {exc.strerror or exc} "
                              f"({exc.filename or tmp}); newest complete checkpoint: {newest}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last, run_id)
    return final


def _write_contents(tmp: Path, run_dir: Path, model, tokenizer, state: dict, model_state: dict | None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(tmp / "model", safe_serialization=True,
                          **({"state_dict": model_state} if model_state is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    save_tree(state, tmp, STATE_NAME)
    if (run_dir / CONFIG_FILE).exists():
        shutil.copyfile(run_dir / CONFIG_FILE, tmp / CONFIG_FILE)


def _write_manifest(tmp: Path, step: int, run_id: str) -> None:
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(f)
        files[f.relative_to(tmp).as_posix()] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {"format": FORMAT, "version": VERSION, "step": step, "run_id": run_id, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync_file(tmp / MANIFEST)
    for d in {p.parent for p in tmp.rglob("*")} | {tmp}:
        _fsync_dir(d)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(ckpt: Path) -> None:
    """Rename first, then delete: a removal cut short leaves a ``.trash-*`` folder, never a damaged
    ``checkpoint-N``."""
    trash = ckpt.with_name(f".trash-{ckpt.name}")
    if trash.exists():
        shutil.rmtree(trash)
    ckpt.rename(trash)
    shutil.rmtree(trash)


def prune_checkpoints(run_dir: Path, keep_last: int, run_id: str) -> None:
    """Remove all but the ``keep_last`` newest checkpoints whose manifest names ``run_id``; checkpoints
    of any other run are never touched (``keep_last`` <= 0 keeps all)."""
    if keep_last <= 0:
        return
    ours = [c for c in list_checkpoints(run_dir) if read_manifest(c).get("run_id") == run_id]
    for old in ours[:-keep_last]:
        _remove(old)


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary folders of saves or removals cut short (call with the run lock held)."""
    for p in list(Path(run_dir).glob(".tmp-checkpoint-*")) + list(Path(run_dir).glob(".trash-checkpoint-*")):
        shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- finding and verifying

def checkpoint_step(path: Path) -> int | None:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _candidates(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with a manifest) in ``run_dir``, oldest first; not verified."""
    return [p for p in _candidates(run_dir) if (p / MANIFEST).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def read_manifest(ckpt: Path) -> dict:
    try:
        manifest = json.loads((Path(ckpt) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt}: unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{ckpt}/{MANIFEST}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{ckpt}/{MANIFEST}: format version {manifest.get('version')!r}, this prefopt "
                              f"reads version {VERSION}")
    return manifest


def verify_checkpoint(ckpt: Path) -> dict:
    """Check every file of ``ckpt`` against its manifest (sizes first, then sha256); return the
    manifest. Raises :class:`CheckpointError` naming the first file that does not match."""
    ckpt = Path(ckpt)
    if (ckpt / OLD_STATE_FILE).exists() and not (ckpt / MANIFEST).exists():
        raise CheckpointError(f"{ckpt}: old checkpoint format ({OLD_STATE_FILE}, a pickle that could run code "
                              "when loaded); it is not loaded. Start a new run (--overwrite) from its weights "
                              f"in {ckpt / 'model'} if you trust them")
    if not (ckpt / MANIFEST).is_file():
        raise CheckpointError(f"{ckpt}: no {MANIFEST} (an incomplete save or not a prefopt checkpoint)")
    manifest = read_manifest(ckpt)
    listed = manifest["files"]
    present = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {MANIFEST}
    extra = sorted(present - set(listed))
    if extra:
        raise CheckpointError(f"{ckpt}: file {extra[0]} is not in the manifest (a checkpoint holds only the files "
                              "its manifest lists; nothing else, e.g. a pickle, is ever loaded)")
    for rel, meta in listed.items():
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{ckpt}: {rel} is missing")
        if f.stat().st_size != meta.get("bytes"):
            raise CheckpointError(f"{ckpt}: {rel} has {f.stat().st_size} bytes, the manifest says {meta.get('bytes')} "
                                  "(truncated or rewritten)")
    for rel, meta in listed.items():
        if _sha256(ckpt / rel) != meta.get("sha256"):
            raise CheckpointError(f"{ckpt}: {rel} does not match its sha256 in the manifest (modified or corrupted)")
    return manifest


def select_resume_checkpoint(run_dir: Path, *, fallback: bool = True) -> Path:
    """The newest intact checkpoint of ``run_dir``. A newer one that fails verification is reported
    and, with ``fallback``, renamed to ``corrupt-checkpoint-N`` (kept for inspection, never pruned
    or loaded); without ``fallback`` the run stops with the error."""
    run_dir = Path(run_dir)
    candidates = _candidates(run_dir)[::-1]
    if not candidates:
        raise CheckpointError(f"--resume: no checkpoint in {run_dir} (the run stopped before its first save); "
                              "start it again with --overwrite")
    bad: list[tuple[Path, CheckpointError]] = []
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt)
        except CheckpointError as exc:
            if not fallback:
                raise CheckpointError(f"{exc}; set train.checkpoint_fallback=true to resume from the newest "
                                      "intact older checkpoint instead") from None
            bad.append((ckpt, exc))
            continue
        for damaged, why in bad:
            aside = _unused(damaged.with_name(f"corrupt-{damaged.name}"))
            damaged.rename(aside)
            warnings.warn(f"skipped {why}; moved to {aside.name}; resuming from {ckpt.name}", stacklevel=2)
        return ckpt
    raise CheckpointError(f"--resume: no intact checkpoint in {run_dir}: " + "; ".join(str(e) for _, e in bad))


def _unused(path: Path) -> Path:
    out, i = path, 1
    while out.exists():
        out, i = path.with_name(f"{path.name}.{i}"), i + 1
    return out


# ----------------------------------------------------------------------------- loading

def load_trainer_state(ckpt: Path) -> dict:
    """The trainer state of a checkpoint (call :func:`verify_checkpoint` first)."""
    ckpt = Path(ckpt)
    if (ckpt / OLD_STATE_FILE).exists():
        verify_checkpoint(ckpt)  # raises the old-format message
    try:
        state = load_tree(ckpt, STATE_NAME)
    except StateFormatError as exc:
        raise CheckpointError(str(exc)) from None
    if "optimizer" in state:
        state["optimizer"] = optimizer_from_tree(state["optimizer"])
    return state


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
        raise CheckpointError(f"checkpoint {ckpt} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def read_model_state(ckpt: Path) -> dict:
    """The full weights of a checkpoint's model (all its safetensors files)."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted((Path(ckpt) / "model").glob("*.safetensors")):
        state.update(load_file(f))
    return state


def _tied_names(model) -> set[str]:
    names = set(getattr(model, "_tied_weights_keys", None) or [])
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        names.add("lm_head.weight")
    return names
