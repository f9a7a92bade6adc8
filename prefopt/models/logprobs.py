"""Per-token log-probs of response tokens without a full-vocabulary fp32 log-softmax for the batch.

The log-softmax is computed row-chunk by row-chunk as ``gather(logits) - logsumexp(logits)``,
so the fp32 working set is one chunk of rows, not ``B x T x V``.
"""
from __future__ import annotations

import functools
import inspect

import torch

from prefopt.types import SequenceBatch


def selective_log_softmax(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 4) -> torch.Tensor:
    """log p(labels) under ``softmax(logits)``.

    logits: (B, T, V) any float dtype; labels: (B, T) long. Returns (B, T) float32.
    """
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], chunk_rows):
        rows = logits[start:start + chunk_rows].float()
        picked = rows.gather(-1, labels[start:start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        out[start:start + chunk_rows] = picked - torch.logsumexp(rows, dim=-1)
    return out


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(model_cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_cls.forward).parameters


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep``; looked up once per class."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   first_label_pos: int = 1) -> torch.Tensor:
    """Logits predicting tokens ``first_label_pos .. T-1``: shape (B, T - first_label_pos, V).

    Where the model supports ``logits_to_keep``, the LM head runs only on those positions.
    """
    T = input_ids.shape[1]
    keep = T - first_label_pos + 1  # positions first_label_pos-1 .. T-1; the last one is dropped below
    kwargs = {"logits_to_keep": keep} if supports_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    return logits[:, -keep:-1]


def token_logps(model: torch.nn.Module, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the tokens in ``batch.loss_mask``.

    Returns (logps, mask), both (B, T - s) where s is the first position any row has a label;
    ``logps`` is 0 where ``mask`` is False.
    """
    has_label = batch.loss_mask.any(dim=0).nonzero()
    first = max(1, int(has_label[0])) if len(has_label) else 1
    logits = forward_logits(model, batch.input_ids, batch.attention_mask, first)
    labels = batch.input_ids[:, first:]
    mask = batch.loss_mask[:, first:]
    logps = selective_log_softmax(logits, labels) * mask
    return logps, mask


def sequence_logps(model: torch.nn.Module, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs (B,) and response lengths (B,) in tokens."""
    logps, mask = token_logps(model, batch)
    return logps.sum(-1), mask.sum(-1).float()
