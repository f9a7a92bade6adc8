"""Offline pairwise preference optimization: any loss of the DPO family on a fixed dataset."""
from __future__ import annotations

from typing import Callable

import torch

from prefopt.data.batching import PackedLayout, pack_pairs
from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.models.logprobs import sequence_logps
from prefopt.models.lora import reference_pass
from prefopt.models.prefix import layout_sequence_logps, packed_layout, supports_packing
from prefopt.train.algorithms.base import DatasetAlgorithm, StepLoss
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


def pair_logps_padded(model, batch: PreferenceBatch, pad_id: int):
    """Summed log-probs and lengths of chosen and rejected, from one forward over 2B padded rows
    (each prompt computed twice). The plain computation the shared/packed paths must equal."""
    both = concat_rows(batch.chosen, batch.rejected, pad_id)
    logps, lengths = sequence_logps(model, both)
    B = len(batch)
    return logps[:B], logps[B:], lengths[:B], lengths[B:]


def pair_layout(model, batch: PreferenceBatch, pad_id: int, *, prefix_sharing: bool = True,
                padding_free: bool = True) -> PackedLayout | None:
    """The packed layout ``pair_logps`` would use for ``batch`` (None: the padded path)."""
    if not (prefix_sharing or padding_free):
        return None
    return packed_layout(model, lambda cost: pack_pairs(batch, pad_id, prefix_sharing=prefix_sharing,
                                                        padding_free=padding_free, attention_cost=cost))


def pair_logps(model, batch: PreferenceBatch, pad_id: int, *, prefix_sharing: bool = True,
               padding_free: bool = True, layout: PackedLayout | None = None):
    """Summed log-probs and lengths (B,) each of chosen and rejected, from one forward pass.

    ``prefix_sharing``: each pair's prompt is computed once and both responses attend to it
    (gradients from both flow into the one copy). ``padding_free``: pairs are packed into rows
    without padding. Both are exact (equal to :func:`pair_logps_padded` up to float rounding);
    models without custom 4-D mask support take the padded path. ``layout`` reuses a layout from
    :func:`pair_layout` (e.g. for the policy and the reference pass of one batch).
    """
    if layout is None:
        layout = pair_layout(model, batch, pad_id, prefix_sharing=prefix_sharing, padding_free=padding_free)
    if layout is None or not supports_packing(model, layout):
        return pair_logps_padded(model, batch, pad_id)
    sums, counts = layout_sequence_logps(model, layout)
    B = len(batch)
    return sums[:B], sums[B:], counts[:B], counts[B:]


class PairwisePreference(DatasetAlgorithm):
    """DPO and its relatives: per step, B pairs → policy (and reference) log-probs → loss_fn."""

    name = "dpo"

    def __init__(self, train: list[EncodedPair], eval: list[EncodedPair], *, loss_fn: Callable, beta: float,
                 hparams: dict, pad_id: int, batch_size: int, reference: torch.nn.Module | None,
                 seed: int = 0, shuffle: bool = True, ref_store=None, prefix_sharing: bool = True,
                 padding_free: bool = True):
        # ref_store: precomputed reference log-probs (prefopt.models.reference.PrecomputedReference)
        # looked up by pair index, for 'algo.reference: precomputed' (no reference model in memory).
        if reference is None and ref_store is None and not getattr(loss_fn, "reference_free", False):
            raise ValueError("this loss needs a reference (algo.reference: copy, lora or precomputed)")
        super().__init__(train, eval, pad_id=pad_id, batch_size=batch_size, seed=seed, shuffle=shuffle)
        self.loss_fn, self.beta, self.hparams = loss_fn, beta, hparams
        self.reference, self.ref_store = reference, ref_store
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free  # see pair_logps

    def _collate(self, rows: list[EncodedPair]) -> PreferenceBatch:
        ref = self.ref_store.lookup([r.index for r in rows]) if self.ref_store is not None else None
        return collate_pairs(rows, self.pad_id, ref)

    @torch.no_grad()
    def reference_logps(self, batch: PreferenceBatch, layout: PackedLayout | None = None):
        """Cached values when the batch carries them, else a pass of the reference holding no graph."""
        if batch.ref_chosen_logps is not None:
            return batch.ref_chosen_logps, batch.ref_rejected_logps
        if self.reference is None:
            return None, None
        with reference_pass(self.reference) as reference:  # LoRA reference: the policy, adapters disabled
            rc, rr, _, _ = pair_logps(reference, batch, self.pad_id, prefix_sharing=self.prefix_sharing,
                                      padding_free=self.padding_free, layout=layout)
        return rc, rr

    def _loss(self, model, batch: PreferenceBatch):
        layout = pair_layout(model, batch, self.pad_id, prefix_sharing=self.prefix_sharing,
                             padding_free=self.padding_free)
        pc, pr, lc, lr = pair_logps(model, batch, self.pad_id, prefix_sharing=self.prefix_sharing,
                                    padding_free=self.padding_free, layout=layout)
        rc, rr = self.reference_logps(batch, layout)
        return self.loss_fn(pc, pr, rc, rr, beta=self.beta, chosen_lengths=lc, rejected_lengths=lr, **self.hparams)

    def compute_loss(self, model, batch: PreferenceBatch) -> StepLoss:
        out = self._loss(model, batch)
        weights = batch.chosen.weights if batch.chosen.weights is not None else torch.ones(len(batch))
        loss = (out.losses * weights).sum()
        # Real tokens of the data, each prompt counted once (whatever the layout computes).
        tokens = int(batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum()
                     - batch.prompt_lengths.sum())
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
