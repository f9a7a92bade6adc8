"""Reference handling: a frozen copy, the policy with adapters disabled, or precomputed log-probs.

``precomputed`` runs the initial policy once over every training and evaluation example before
training and keeps only the summed log-probs (two floats per pair). They are cached on disk,
keyed by a fingerprint of the model's weights and one of the encoded dataset, under
``$PREFOPT_CACHE/reference_logps/``, so a second run on the same data and model reuses them
and no reference model sits in memory during training.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from prefopt.dist import current
from prefopt.errors import ConfigError
from prefopt.models.lora import AdapterDisabledReference, adapters_disabled, is_peft

log = logging.getLogger("prefopt.reference")

REFERENCE_KINDS = ("copy", "lora", "precomputed", "none")
_CACHE_VERSION = "v1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PREFOPT_CACHE", Path.home() / ".cache" / "prefopt"))


# --------------------------------------------------------------------------- fingerprints
def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's architecture and weights (adapter weights excluded).

    Per tensor it hashes name, shape, dtype, the first 256 values and the float64 sum and
    absolute sum, so any training step changes it while hashing stays one cheap pass.
    """
    h = hashlib.sha256(_CACHE_VERSION.encode())
    base = model.get_base_model() if is_peft(model) else model
    config = getattr(base, "config", None)
    if config is not None:
        h.update(type(base).__name__.encode())
        h.update(json.dumps({k: v for k, v in config.to_dict().items()
                             if k not in ("_name_or_path", "transformers_version", "name_or_path")},
                            sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in base.state_dict().items():
            if "lora_" in name:
                continue
            name = name.replace("base_layer.", "")
            flat = t.detach().reshape(-1)
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if flat.is_floating_point():
                head = flat[:256].float().cpu().numpy().tobytes()
                stats = torch.stack([flat.double().sum(), flat.double().abs().sum()]).cpu().numpy().tobytes()
            else:
                head = flat[:256].cpu().numpy().tobytes()
                stats = str(int(flat.long().sum())).encode()
            h.update(head)
            h.update(stats)
    return h.hexdigest()[:24]


def data_fingerprint(rows: Sequence, fields: Sequence[str]) -> str:
    """A digest of the token ids (``fields`` of each encoded row), in order."""
    h = hashlib.sha256(_CACHE_VERSION.encode())
    for row in rows:
        for f in fields:
            ids = getattr(row, f)
            h.update(f"{len(ids)}:".encode())
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- store
@dataclass
class PrecomputedReference:
    """Reference summed log-probs of examples ``0..N-1``: ``values[name]`` is an (N,) float tensor
    (``chosen``/``rejected`` for pairs; ``completion``/``kl`` for unpaired feedback)."""

    values: dict[str, torch.Tensor]
    path: Path | None = None
    from_cache: bool = False
    seconds: float = 0.0

    def lookup(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return tuple(v[idx] for v in self.values.values())

    def __len__(self) -> int:
        return int(next(iter(self.values.values())).shape[0])


def cached_reference(model: torch.nn.Module, rows: Sequence, *, fields: Sequence[str], names: Sequence[str],
                     compute: Callable[[torch.nn.Module, Sequence], tuple[torch.Tensor, ...]],
                     kind: str, cache_dir: Path | None = None, use_cache: bool = True) -> PrecomputedReference:
    """Reference log-probs of ``rows`` under ``model`` (its base when it has adapters), from the
    on-disk cache when the same model and data were seen before, else computed and cached.
    Computed under the caller's autocast, if any (mixed precision: the same numerics as the policy's
    forward), which is part of the cache key.

    ``compute(model, rows)`` returns one (N,) tensor per name, in row order.
    """
    if not rows:
        return PrecomputedReference({n: torch.zeros(0) for n in names})
    key = f"{kind}-{model_fingerprint(model)}-{data_fingerprint(rows, fields)}{_autocast_tag(_device(model).type)}"
    path = (cache_dir or default_cache_dir()) / "reference_logps" / f"{key}.pt"
    stored = _read_cache(path, names, len(rows)) if use_cache and path.exists() else None
    # Every rank computes (its share) unless every rank found the cache: one decision for all.
    if current().all_reduce(torch.tensor([float(stored is not None)]), op="min").item() > 0:
        log.info("reference log-probs: reused %s", path)
        return PrecomputedReference(stored, path, from_cache=True)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapters_disabled(model):
            tensors = sharded_compute(compute, model, rows)
    finally:
        model.train(was_training)
    values = {n: t.detach().float().cpu() for n, t in zip(names, tensors)}
    seconds = time.perf_counter() - t0
    if use_cache and current().is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(values, tmp)
        tmp.replace(path)
        log.info("reference log-probs: %d examples in %.1f s, cached at %s", len(rows), seconds, path)
    return PrecomputedReference(values, path if use_cache else None, from_cache=False, seconds=seconds)


def _autocast_tag(device_type: str) -> str:
    """'' in full precision, '-bfloat16' / '-float16' under autocast: the values differ, so the cache keys do."""
    if not torch.is_autocast_enabled(device_type):
        return ""
    return "-" + str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")


def _read_cache(path: Path, names: Sequence[str], n: int) -> dict | None:
    try:
        stored = torch.load(path, weights_only=True)
        if list(stored) == list(names) and all(v.shape[0] == n for v in stored.values()):
            return stored
    except Exception as exc:  # a corrupt cache file is recomputed, not fatal
        log.warning("reference log-probs: ignoring unreadable cache %s (%s)", path, exc)
    return None


def sharded_compute(compute: Callable, model, rows: Sequence) -> tuple[torch.Tensor, ...]:
    """``compute(model, rows)`` with the rows spread over data-parallel ranks (rank r takes rows
    r, r + W, ...) and the results gathered back into row order on every rank."""
    rt = current()
    if not rt.distributed:
        return compute(model, rows)
    share = list(rows[rt.rank::rt.world_size])
    mine = [t.detach().float().cpu() for t in compute(model, share)] if share else []
    parts = rt.all_gather_object(mine)
    out = [torch.empty(len(rows)) for _ in max(parts, key=len)]
    for r, part in enumerate(parts):
        for full, piece in zip(out, part):
            full[r::rt.world_size] = piece
    return tuple(out)


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pair_reference_logps(model, pairs: Sequence, pad_id: int, batch_size: int = 32, *,
                         pair_logps: Callable, cache_dir: Path | None = None,
                         use_cache: bool = True) -> PrecomputedReference:
    """Precomputed (chosen, rejected) reference log-probs of EncodedPairs, row i = pairs[i].

    ``pair_logps(model, batch, pad_id) -> (chosen, rejected, chosen_len, rejected_len)`` is the
    training algorithm's own forward, so cached values equal what training would compute.
    """
    from prefopt.data.tokenize import collate_pairs

    def compute(m, rows):
        out_c, out_r = [], []
        device = _device(m)
        for s in range(0, len(rows), batch_size):
            batch = collate_pairs(list(rows[s:s + batch_size]), pad_id)
            batch.chosen, batch.rejected = batch.chosen.to(device), batch.rejected.to(device)
            c, r, _, _ = pair_logps(m, batch, pad_id)
            out_c.append(c)
            out_r.append(r)
        return torch.cat(out_c), torch.cat(out_r)

    _check_positions(pairs)
    return cached_reference(model, pairs, fields=("prompt_ids", "chosen_ids", "rejected_ids"),
                            names=("chosen", "rejected"), compute=compute, kind="pairs",
                            cache_dir=cache_dir, use_cache=use_cache)


def feedback_reference_logps(model, examples: Sequence, pad_id: int, batch_size: int = 32, *,
                             cache_dir: Path | None = None, use_cache: bool = True) -> PrecomputedReference:
    """Precomputed (completion, kl) reference log-probs of EncodedFeedback rows."""
    from prefopt.data.tokenize import collate_sequences
    from prefopt.models.logprobs import sequence_logps

    def compute(m, rows):
        out, out_kl = [], []
        device = _device(m)
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            seq = collate_sequences([(r.prompt_ids, r.completion_ids) for r in chunk], pad_id).to(device)
            kl = collate_sequences([(r.kl_prompt_ids, r.kl_completion_ids) for r in chunk], pad_id).to(device)
            out.append(sequence_logps(m, seq)[0])
            out_kl.append(sequence_logps(m, kl)[0])
        return torch.cat(out), torch.cat(out_kl)

    _check_positions(examples)
    return cached_reference(model, examples,
                            fields=("prompt_ids", "completion_ids", "kl_prompt_ids", "kl_completion_ids"),
                            names=("completion", "kl"), compute=compute, kind="feedback",
                            cache_dir=cache_dir, use_cache=use_cache)


def _check_positions(rows: Sequence) -> None:
    for i, r in enumerate(rows):
        if r.index != i:
            raise ValueError(f"precomputed reference: row {i} has index {r.index}; rows must be indexed "
                             "0..N-1 in order (the index keys the cache)")


# --------------------------------------------------------------------------- strategies
def frozen_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen deep copy of ``model`` as it is now (adapters merged away for PEFT models), its
    float32 parameters cast to ``dtype`` when given (mixed precision: half the memory, and a
    forward that reads bf16 weights instead of casting fp32 ones on every call)."""
    from prefopt.rollout.weights import cast_floating_params, castable

    ref = copy.deepcopy(model)
    if is_peft(ref):
        ref = ref.merge_and_unload()
    if dtype is not None and castable(ref):
        cast_floating_params(ref, dtype)
    ref.requires_grad_(False).eval()
    return ref


def reference_module(kind: str, model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module | None:
    """The module a reference pass runs for ``kind`` (None for 'precomputed' and 'none'); a 'copy'
    holds its weights in ``dtype`` when given."""
    if kind not in REFERENCE_KINDS:
        raise ConfigError(f"algo.reference: got '{kind}', expected one of {', '.join(REFERENCE_KINDS)}")
    if kind == "copy":
        return frozen_copy(model, dtype)
    if kind == "lora":
        return AdapterDisabledReference(model)
    return None
