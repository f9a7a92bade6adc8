"""Masked reductions, and the one per-token loss reduction that stays exact across gradient
accumulation and data-parallel ranks.

Why a ``normalizer``: averaging each micro-batch on its own and then averaging the
micro-batches weights tokens of short micro-batches more than those of long ones, so the
accumulated gradient differs from the full-batch one. Dividing every micro-batch's *sum* by
the same step-wide count makes Σ over micro-batches equal the full-batch value exactly.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

AGGREGATION_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x where mask is true. x, mask: same shape (mask bool or 0/1)."""
    # where(), not x * mask: masked slots may hold inf/NaN (e.g. exp of garbage log-probs).
    kept = torch.where(mask.to(torch.bool), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over unmasked entries (all, or along ``dim``). Empty -> 0, not NaN."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance of x over unmasked entries."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def step_normalizer(mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """This micro-batch's share of ``aggregate_loss``'s normalizer for ``mode``.

    Sum it over all micro-batches of the optimizer step (and all-reduce over ranks) and pass
    the total to every ``aggregate_loss`` call of that step.
    mask: (B, T). token_mean -> unmasked tokens; seq_mean_token_mean -> sequences with at
    least one token; seq_mean_token_sum -> sequences × max_len (Dr. GRPO's constant length;
    max_len defaults to T, but pass the generation limit so micro-batches agree).
    """
    mask = mask.to(torch.bool)
    if mode == "token_mean":
        return mask.sum()
    if mode == "seq_mean_token_mean":
        return mask.any(dim=-1).sum()
    if mode == "seq_mean_token_sum":
        return mask.any(dim=-1).sum() * (mask.shape[-1] if max_len is None else max_len)
    raise ValueError(f"unknown aggregation mode '{mode}' (known: {', '.join(AGGREGATION_MODES)})")


def aggregate_loss(losses: Tensor, mask: Tensor, mode: str = "token_mean",
                   normalizer: Tensor | float | None = None) -> Tensor:
    """Reduce per-token losses (B, T) with mask (B, T) to a scalar.

    modes:
      token_mean:          Σ_all tokens loss / normalizer, normalizer = unmasked tokens in the
                           WHOLE optimizer step (all micro-batches, all ranks).
      seq_mean_token_mean: Σ_seq (token mean of seq) / normalizer, normalizer = sequences in
                           the step. Each sequence counts equally regardless of length.
      seq_mean_token_sum:  Σ_seq (token sum of seq) / normalizer, normalizer a constant, e.g.
                           sequences × max generation length (Dr. GRPO: no length bias).
    normalizer=None uses this batch's own ``step_normalizer`` — exact only when the step is a
    single micro-batch. With DDP (which averages gradients over ranks) multiply by world size.
    """
    if normalizer is None:
        normalizer = step_normalizer(mask, mode)
    if mode == "token_mean":
        total = masked_sum(losses, mask)
    elif mode == "seq_mean_token_mean":
        total = masked_mean(losses, mask, dim=-1).sum()
    elif mode == "seq_mean_token_sum":
        total = masked_sum(losses, mask, dim=-1).sum()
    else:
        raise ValueError(f"unknown aggregation mode '{mode}' "
                         f"(known: {', '.join(AGGREGATION_MODES)})")
    if isinstance(normalizer, Tensor):
        normalizer = normalizer.to(total.dtype).clamp(min=1)
    else:
        normalizer = max(float(normalizer), 1.0)
    return total / normalizer
