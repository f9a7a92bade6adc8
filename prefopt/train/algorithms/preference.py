"""Offline pairwise preference optimization: any loss of the DPO family on a fixed dataset."""
from __future__ import annotations

from typing import Callable

import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.models.logprobs import sequence_logps
from prefopt.train.algorithms.base import Algorithm, StepLoss
from prefopt.train.sampler import EpochSampler
from prefopt.types import PreferenceBatch, SequenceBatch


def concat_rows(a: SequenceBatch, b: SequenceBatch, pad_id: int) -> SequenceBatch:
    """Stack two batches row-wise (padding the shorter on the right) for one forward pass."""
    T = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return SequenceBatch(
        torch.cat([pad(a.input_ids, pad_id), pad(b.input_ids, pad_id)]),
        torch.cat([pad(a.attention_mask, 0), pad(b.attention_mask, 0)]),
        torch.cat([pad(a.loss_mask, False), pad(b.loss_mask, False)]),
        torch.cat([a.weights, b.weights]) if a.weights is not None and b.weights is not None else None,
    )


def pair_logps(model, batch: PreferenceBatch, pad_id: int):
    """Summed log-probs and lengths of chosen and rejected, from one forward over 2B rows."""
    both = concat_rows(batch.chosen, batch.rejected, pad_id)
    logps, lengths = sequence_logps(model, both)
    B = len(batch)
    return logps[:B], logps[B:], lengths[:B], lengths[B:]


class PairwisePreference(Algorithm):
    """DPO and its relatives: per step, B pairs → policy (and reference) log-probs → loss_fn."""

    name = "dpo"

    def __init__(self, train: list[EncodedPair], eval: list[EncodedPair], *, loss_fn: Callable, beta: float,
                 hparams: dict, pad_id: int, batch_size: int, reference: torch.nn.Module | None,
                 seed: int = 0, shuffle: bool = True):
        if reference is None and not getattr(loss_fn, "reference_free", False):
            raise ValueError("this loss needs a reference model (algo.reference: copy)")
        self.train_rows, self.eval_rows = train, eval
        self.loss_fn, self.beta, self.hparams = loss_fn, beta, hparams
        self.pad_id, self.batch_size = pad_id, batch_size
        self.reference = reference
        self.sampler = EpochSampler(len(train), seed, shuffle)

    def _collate(self, rows: list[EncodedPair]) -> PreferenceBatch:
        return collate_pairs(rows, self.pad_id)

    def next_batches(self, model, num_micro: int) -> list[PreferenceBatch]:
        return [self._collate([self.train_rows[i] for i in self.sampler.take(self.batch_size)])
                for _ in range(num_micro)]

    @torch.no_grad()
    def reference_logps(self, batch: PreferenceBatch):
        if batch.ref_chosen_logps is not None:
            return batch.ref_chosen_logps, batch.ref_rejected_logps
        if self.reference is None:
            return None, None
        rc, rr, _, _ = pair_logps(self.reference, batch, self.pad_id)
        return rc, rr

    def _loss(self, model, batch: PreferenceBatch):
        pc, pr, lc, lr = pair_logps(model, batch, self.pad_id)
        rc, rr = self.reference_logps(batch)
        return self.loss_fn(pc, pr, rc, rr, beta=self.beta, chosen_lengths=lc, rejected_lengths=lr, **self.hparams)

    def compute_loss(self, model, batch: PreferenceBatch) -> StepLoss:
        out = self._loss(model, batch)
        weights = batch.chosen.weights if batch.chosen.weights is not None else torch.ones(len(batch))
        loss = (out.losses * weights).sum()
        tokens = int(batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum())
        return StepLoss(loss, {k: float(v) for k, v in out.metrics.items()}, tokens)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for start in range(0, len(self.eval_rows), self.batch_size):
            batch = self._collate(self.eval_rows[start:start + self.batch_size])
            out = self._loss(model, batch)
            k = len(batch)
            sums["loss"] = sums.get("loss", 0.0) + float(out.losses.sum())
            for name, v in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v) * k
            n += k
        return {k: v / n for k, v in sums.items()}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
