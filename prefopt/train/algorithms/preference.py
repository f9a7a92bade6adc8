"""Offline pairwise preference optimization: any loss of the DPO family on a fixed dataset."""
from __future__ import annotations

from typing import Callable

import torch

from prefopt.data.batching import PackedLayout, pack_pairs
from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.models.logprobs import sequence_logps
from prefopt.models.prefix import layout_sequence_logps, packed_layout, supports_packing
from prefopt.train.recipe import Part, Recipe
from prefopt.train.sources.offline import DatasetSource
from prefopt.train.terms.preference import PairwiseTerm, evaluate_pairs
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


class PairwisePreference(Recipe):
    """DPO and its relatives: a dataset source of pairs × a :class:`PairwiseTerm`."""

    name = "dpo"

    def __init__(self, train: list[EncodedPair], eval: list[EncodedPair], *, loss_fn: Callable, beta: float,
                 hparams: dict, pad_id: int, batch_size: int, reference: torch.nn.Module | None,
                 seed: int = 0, shuffle: bool = True, ref_store=None, prefix_sharing: bool = True,
                 padding_free: bool = True):
        # ref_store: precomputed reference log-probs (prefopt.models.reference.PrecomputedReference)
        # looked up by pair index, for 'algo.reference: precomputed' (no reference model in memory).
        self.term = PairwiseTerm(loss_fn, beta=beta, hparams=hparams, pad_id=pad_id, reference=reference,
                                 prefix_sharing=prefix_sharing, padding_free=padding_free,
                                 needs_reference_in_batch=ref_store is not None)
        self.ref_store, self.pad_id, self.batch_size = ref_store, pad_id, batch_size
        self.train_rows, self.eval_rows = train, eval
        self.source = DatasetSource(train, self._collate, kind="pairs", batch_size=batch_size, seed=seed,
                                    shuffle=shuffle)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=self._eval)

    def _collate(self, rows: list[EncodedPair]) -> PreferenceBatch:
        ref = self.ref_store.lookup([r.index for r in rows]) if self.ref_store is not None else None
        return collate_pairs(rows, self.pad_id, ref)

    def reference_logps(self, batch: PreferenceBatch, layout: PackedLayout | None = None):
        return self.term.reference_logps(batch, layout)

    def _eval(self, model) -> dict[str, float]:
        return evaluate_pairs(self.term, self.eval_rows, self._collate, self.batch_size, model)
