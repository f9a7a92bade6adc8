"""Parameter-group rules: the one place that decides how each tensor is treated.

Every trainable parameter (``requires_grad``) falls into exactly one kind:

``matrix``
    A 2-D weight that is *not* an embedding or the LM head (attention and MLP
    projections, LoRA A/B factors). Projected by GaLore/APOLLO, orthogonalized
    by Muon. Gets weight decay.
``embedding``
    The weight of an :class:`torch.nn.Embedding` (or any parameter tied to one)
    and the LM head (``model.get_output_embeddings()`` when the model has it).
    Never projected/orthogonalized; optimized by the plain (AdamW-like) path of
    the chosen optimizer. Gets weight decay.
``other``
    Tensors with more than 2 dimensions (e.g. convolution kernels). Not
    projected. Gets weight decay.
``no_decay``
    Tensors with fewer than 2 dimensions: norm gains, biases, scalars. Not
    projected, no weight decay.

Frozen parameters (``requires_grad=False``) are left out, so LoRA/PEFT models
optimize only their adapters.
"""

from __future__ import annotations

import torch
from torch import nn

KINDS = ("matrix", "embedding", "other", "no_decay")
PROJECTABLE_KIND = "matrix"


def _embedding_param_ids(model: nn.Module) -> set[int]:
    """ids of embedding tables and of the LM head (tied or not)."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids.add(id(module.weight))
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if not callable(fn):
            continue
        try:
            emb = fn()
        except (NotImplementedError, AttributeError):
            continue
        if emb is None:
            continue
        if isinstance(emb, nn.Module):
            weight = getattr(emb, "weight", None)
            if isinstance(weight, torch.Tensor):
                ids.add(id(weight))
        elif isinstance(emb, torch.Tensor):
            ids.add(id(emb))
    return ids


def classify_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Map each kind in :data:`KINDS` to the trainable ``(name, param)`` pairs of that kind.

    Shared (tied) parameters appear once, under the first name
    ``model.named_parameters()`` gives them.
    """
    emb_ids = _embedding_param_ids(model)
    out: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in KINDS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in emb_ids:
            kind = "embedding"
        elif p.ndim == 2:
            kind = "matrix"
        elif p.ndim > 2:
            kind = "other"
        else:
            kind = "no_decay"
        out[kind].append((name, p))
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters of ``model`` into optimizer parameter groups.

    Returns one dict per non-empty kind, in the order of :data:`KINDS`, with keys
    ``params`` (list of tensors), ``param_names`` (their qualified names),
    ``kind`` (one of :data:`KINDS`) and ``weight_decay`` (``weight_decay`` for
    ``matrix``/``embedding``/``other``, ``0.0`` for ``no_decay``). Optimizer
    builders add their own keys (e.g. GaLore's ``rank``) to copies of these.
    """
    groups = []
    for kind, named in classify_parameters(model).items():
        if not named:
            continue
        groups.append(
            {
                "params": [p for _, p in named],
                "param_names": [n for n, _ in named],
                "kind": kind,
                "weight_decay": 0.0 if kind == "no_decay" else float(weight_decay),
            }
        )
    return groups
