"""Masked reductions and the accumulation-safe loss aggregation."""
import math

import pytest
import torch

from prefopt.losses import (
    AGGREGATION_MODES, aggregate_loss, masked_mean, masked_sum, step_normalizer,
)

LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_masked_sum_and_mean():
    # unmasked: 1, 2, 4 -> sum 7, mean 7/3; per row: sums [3, 4], means [1.5, 4]
    assert masked_sum(LOSSES, MASK).item() == 7.0
    assert masked_mean(LOSSES, MASK).item() == pytest.approx(7 / 3)
    assert masked_sum(LOSSES, MASK, dim=-1).tolist() == [3.0, 4.0]
    assert masked_mean(LOSSES, MASK, dim=-1).tolist() == [1.5, 4.0]


def test_masked_reductions_ignore_garbage_and_empty_rows():
    x = torch.tensor([[1.0, math.nan], [math.inf, 2.0]])
    mask = torch.tensor([[1, 0], [0, 0]])
    assert masked_sum(x, mask).item() == 1.0
    assert masked_mean(x, mask, dim=-1).tolist() == [1.0, 0.0]  # empty row -> 0, not NaN


def test_aggregate_loss_hand_values():
    # token_mean: (1 + 2 + 4) / 3 tokens = 7/3
    # seq_mean_token_mean: (1.5 + 4) / 2 sequences = 2.75
    # seq_mean_token_sum: (3 + 4) / (2 sequences × T=3) = 7/6
    assert aggregate_loss(LOSSES, MASK, "token_mean").item() == pytest.approx(7 / 3)
    assert aggregate_loss(LOSSES, MASK, "seq_mean_token_mean").item() == pytest.approx(2.75)
    assert aggregate_loss(LOSSES, MASK, "seq_mean_token_sum").item() == pytest.approx(7 / 6)
    assert aggregate_loss(LOSSES, MASK, "seq_mean_token_sum", normalizer=14).item() == 0.5
    with pytest.raises(ValueError, match="unknown aggregation mode 'mean'"):
        aggregate_loss(LOSSES, MASK, "mean")


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_micro_batches_sum_to_full_batch(mode):
    # 5 sequences of lengths 1..5 (T = 6), split unevenly into micro-batches of 2 and 3 rows,
    # each trimmed to its own longest sequence as a collator would pad it.
    torch.manual_seed(0)
    losses = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 1, 5, 2, 4])
    mask = torch.arange(6) < lengths[:, None]
    max_len = 6
    full = aggregate_loss(losses, mask, mode, step_normalizer(mask, mode, max_len))

    micro = [(losses[:2, :3], mask[:2, :3]), (losses[2:, :5], mask[2:, :5])]
    normalizer = sum(step_normalizer(m, mode, max_len) for _, m in micro)
    accumulated = sum(aggregate_loss(x, m, mode, normalizer) for x, m in micro)
    assert accumulated.item() == pytest.approx(full.item(), abs=1e-12)

    full_grad, = torch.autograd.grad(full, losses)
    accumulated_grad, = torch.autograd.grad(accumulated, losses)
    assert torch.allclose(accumulated_grad, full_grad, atol=1e-12)


def test_naive_per_micro_batch_means_are_biased():
    # Why the normalizer exists: averaging micro-batch means over-weights short micro-batches.
    # rows [1, 2 | 4]: naive ((1+2)/2 + 4/1) / 2 = 2.75 != 7/3
    first, second = (LOSSES[:1], MASK[:1]), (LOSSES[1:], MASK[1:])
    naive = (aggregate_loss(*first) + aggregate_loss(*second)) / 2
    assert naive.item() == pytest.approx(2.75)
    assert aggregate_loss(LOSSES, MASK).item() == pytest.approx(7 / 3)
