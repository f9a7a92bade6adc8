"""Trainer state on disk without pickle: the tensors of a plain tree in one safetensors file, the
rest of the tree as JSON.

A *plain tree* is what the loop checkpoints: dicts with ``str`` keys, lists, tuples, of
``torch.Tensor``, ``int``, ``float``, ``bool``, ``str`` and ``None``. Anything else is refused with
an error naming its path inside the tree, so state that would need pickle never reaches disk.
In the JSON, a tensor is ``{"__tensor__": NAME}`` (NAME is its key in the safetensors file; with
``"permute"`` when it is a transposed view, so it loads with the same strides), a tuple
is ``{"__tuple__": [...]}``, and a dict that happens to use one of these marker keys is wrapped as
``{"__dict__": {...}}``; floats keep their exact value (``repr`` round-trips, NaN/inf included).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from prefopt.errors import PrefoptError

TENSOR, TUPLE, DICT, PERMUTE = "__tensor__", "__tuple__", "__dict__", "permute"
_MARKERS = (TENSOR, TUPLE, DICT)
_SCALARS = (bool, int, float, str, type(None))


class StateFormatError(PrefoptError, TypeError):
    """A state tree holds something other than the plain types, or a state file is malformed."""


def encode_tree(tree, path: str = "state") -> tuple[object, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, {name: tensor}) of a plain tree; tensors are detached, contiguous, on CPU
    and share no memory (safetensors refuses shared storage)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def walk(node, where: str):
        if isinstance(node, torch.Tensor):
            t, order = _dense(node.detach().cpu())
            ptr = t.untyped_storage().data_ptr() if t.numel() else None
            if t.untyped_storage().nbytes() != t.nbytes or (ptr is not None and ptr in seen):
                t = t.clone()
                ptr = t.untyped_storage().data_ptr() if t.numel() else None
            if ptr is not None:
                seen.add(ptr)
            name = where if where not in tensors else f"{where}#{len(tensors)}"
            tensors[name] = t
            return {TENSOR: name, PERMUTE: order} if order else {TENSOR: name}
        if isinstance(node, _SCALARS):
            return node
        if isinstance(node, tuple):
            return {TUPLE: [walk(v, f"{where}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(node)]
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if not isinstance(k, str):
                    raise StateFormatError(f"{where}: dict key {k!r} is a {type(k).__name__}; a checkpointed "
                                           "state tree may only use str keys")
                out[k] = walk(v, f"{where}/{k}")
            return {DICT: out} if any(k in _MARKERS for k in out) else out
        raise StateFormatError(f"{where}: a {type(node).__module__}.{type(node).__qualname__} cannot be "
                               "checkpointed; a state tree may hold only dicts (str keys), lists, tuples, "
                               "tensors, int, float, bool, str and None")

    return walk(tree, path), tensors


def _dense(t: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
    """A contiguous tensor to store for ``t``, and the dimension order that gives ``t`` back as a view
    with its own strides (e.g. a transposed matrix: some kernels round differently on other strides,
    and a resumed run must be bit-identical); a tensor with gaps is stored as a contiguous copy."""
    if t.is_contiguous():
        return t, None
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d)))
    packed = t.permute(*order)
    if packed.is_contiguous():
        return packed, order
    return t.contiguous(), None


def _inverse(order: list[int]) -> list[int]:
    inv = [0] * len(order)
    for i, d in enumerate(order):
        inv[d] = i
    return inv


def decode_tree(skeleton, tensors: dict[str, torch.Tensor], path: str = "state"):
    """Inverse of :func:`encode_tree`."""
    def walk(node, where: str):
        if isinstance(node, list):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(node)]
        if not isinstance(node, dict):
            return node
        if TENSOR in node:
            if node[TENSOR] not in tensors:
                raise StateFormatError(f"{where}: tensor '{node[TENSOR]}' is missing from the tensor file")
            t = tensors[node[TENSOR]]
            return t.permute(*_inverse(node[PERMUTE])) if PERMUTE in node else t
        if TUPLE in node:
            return tuple(walk(v, f"{where}/{i}") for i, v in enumerate(node[TUPLE]))
        if DICT in node:
            node = node[DICT]
        return {k: walk(v, f"{where}/{k}") for k, v in node.items()}

    return walk(skeleton, path)


def save_tree(tree, directory: Path, name: str) -> list[Path]:
    """Write ``<name>.json`` and ``<name>.safetensors`` into ``directory``; return both paths."""
    from safetensors.torch import save_file

    skeleton, tensors = encode_tree(tree)
    directory = Path(directory)
    json_path, tensor_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    save_file(tensors, str(tensor_path))
    json_path.write_text(json.dumps(skeleton, allow_nan=True), encoding="utf-8")
    return [json_path, tensor_path]


def load_tree(directory: Path, name: str):
    """Read the tree :func:`save_tree` wrote (nothing is unpickled)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        skeleton = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / f"{name}.safetensors"))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own SafetensorError)
        raise StateFormatError(f"{directory}: cannot read {name}.json/.safetensors "
                               f"({type(exc).__name__}: {exc})") from None
    return decode_tree(skeleton, tensors)


def fields_of(obj) -> dict:
    """A dataclass instance as a shallow dict of its fields (for ``state_dict``: no copies)."""
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
