"""Optimizer-state memory accounting, measured from the real state tensors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def _walk_tensors(value, seen_objects: set[int]):
    """Yield every tensor reachable from an optimizer-state value.

    Follows dicts, lists/tuples/sets and plain Python objects (e.g. a GaLore
    projector keeps its projection matrix in an attribute).
    """
    if isinstance(value, torch.Tensor):
        yield value
        return
    if value is None or isinstance(value, (str, bytes, int, float, bool, complex)):
        return
    if id(value) in seen_objects:
        return
    seen_objects.add(id(value))
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _walk_tensors(v, seen_objects)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _walk_tensors(v, seen_objects)
    elif hasattr(value, "__dict__") and not callable(value):
        for v in vars(value).values():
            yield from _walk_tensors(v, seen_objects)


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        ptr = id(t)
    return (t.device.type, t.device.index, ptr, t.storage_offset(), t.numel(), t.element_size())


def optimizer_state_bytes(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor] | None = None
) -> int:
    """Bytes held in ``optimizer.state``, summed over the actual state tensors.

    Counts every tensor reachable from the per-parameter state, including
    quantized buffers at their real element size (``uint8`` = 1 byte) with their
    block scales and code books, projection matrices kept inside projector
    objects, and scalar tensors such as step counters. A tensor shared by several
    parameters (e.g. a quantization code book) is counted once. Step counters
    kept as Python ints and hyper-parameters in ``param_groups`` are not tensors
    and count 0.

    ``params``: when given, only the state of these parameters is counted (e.g.
    the 2-D weight matrices, to compare optimizers on the tensors they project).
    """
    wanted = None if params is None else {id(p) for p in params}
    seen: set[tuple] = set()
    total = 0
    for p, state in optimizer.state.items():
        if wanted is not None and id(p) not in wanted:
            continue
        for t in _walk_tensors(state, set()):
            key = _storage_key(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
