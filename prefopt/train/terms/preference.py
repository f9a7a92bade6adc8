"""Loss terms over fixed or freshly labelled data: any pairwise loss (``pairs``), KTO
(``feedback``) and SFT / NLL (``sequences``, token-level units)."""
from __future__ import annotations

from typing import Callable

import torch

from prefopt.data.batching import PackedLayout, pack_sequences
from prefopt.errors import ConfigError
from prefopt.losses.kto import kto
from prefopt.models.logprobs import sequence_logps, token_logps
from prefopt.models.lora import reference_pass
from prefopt.models.prefix import layout_token_logps, packed_layout
from prefopt.train.algorithms.base import StepLoss
from prefopt.train.recipe import LossTerm
from prefopt.types import FeedbackBatch, PreferenceBatch, SequenceBatch


class PairwiseTerm(LossTerm):
    """Any pairwise loss ``loss_fn(pc, pr, rc, rr, beta=, chosen_lengths=, rejected_lengths=, **hparams)``.

    Reference log-probs come from the batch when a cache or the source supplies them, else from a
    no-grad pass of ``reference``. ``logps(model, batch, pad_id, prefix_sharing=, padding_free=,
    layout=)`` computes summed log-probs (default :func:`prefopt.train.algorithms.preference.pair_logps`).
    Units: pairs (weighted by each pair's weight)."""

    kind = "pairs"

    def __init__(self, loss_fn: Callable, *, beta: float, hparams: dict, pad_id: int, reference=None,
                 prefix_sharing: bool = True, padding_free: bool = True, logps: Callable | None = None,
                 name: str = "pairwise", needs_reference_in_batch: bool = False):
        from prefopt.train.algorithms import preference
        self.loss_fn, self.beta, self.hparams, self.pad_id = loss_fn, beta, hparams, pad_id
        self.reference, self.name = reference, name
        self.prefix_sharing, self.padding_free = prefix_sharing, padding_free
        self.logps = logps or preference.pair_logps
        self._layout = preference.pair_layout
        self.reference_free = getattr(loss_fn, "reference_free", False)
        if reference is None and not self.reference_free and not needs_reference_in_batch:
            raise ConfigError("algo.reference: this loss needs a reference (algo.reference: copy, lora or precomputed)")

    def _pair_logps(self, model, batch: PreferenceBatch, layout: PackedLayout | None = None):
        return self.logps(model, batch, self.pad_id, prefix_sharing=self.prefix_sharing,
                          padding_free=self.padding_free, layout=layout)

    @torch.no_grad()
    def reference_logps(self, batch: PreferenceBatch, layout: PackedLayout | None = None):
        """Cached values when the batch carries them, else a pass of the reference holding no graph."""
        if batch.ref_chosen_logps is not None:
            return batch.ref_chosen_logps, batch.ref_rejected_logps
        if self.reference is None:
            return None, None
        with reference_pass(self.reference) as reference:  # LoRA reference: the policy, adapters disabled
            rc, rr, _, _ = self._pair_logps(reference, batch, layout)
        return rc, rr

    def outputs(self, model, batch: PreferenceBatch):
        """The loss function's LossOutput (per-pair losses, metrics) for ``batch``."""
        layout = None
        if batch.ref_chosen_logps is None and self.reference is not None:  # share one layout with the reference
            layout = self._layout(model, batch, self.pad_id, prefix_sharing=self.prefix_sharing,
                                  padding_free=self.padding_free)
        pc, pr, lc, lr = self._pair_logps(model, batch, layout)
        rc, rr = self.reference_logps(batch, layout)
        return self.loss_fn(pc, pr, rc, rr, beta=self.beta, chosen_lengths=lc, rejected_lengths=lr, **self.hparams)

    def loss(self, model, batch: PreferenceBatch) -> StepLoss:
        out = self.outputs(model, batch)
        weights = batch.chosen.weights if batch.chosen.weights is not None else torch.ones(len(batch))
        # Real tokens of the data, each prompt counted once (whatever the layout computes).
        tokens = int(batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum()
                     - batch.prompt_lengths.sum())
        return StepLoss((out.losses * weights).sum(), {k: float(v) for k, v in out.metrics.items()}, tokens)


@torch.no_grad()
def evaluate_pairs(term: PairwiseTerm, rows: list, collate: Callable, batch_size: int, model) -> dict[str, float]:
    """Held-out mean loss and mean metrics of ``term`` over ``rows`` (pairs)."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for start in range(0, len(rows), batch_size):
        out = term.outputs(model, collate(rows[start:start + batch_size]))
        k = len(out.losses)
        sums["loss"] = sums.get("loss", 0.0) + float(out.losses.sum())
        for name, v in out.metrics.items():
            sums[name] = sums.get(name, 0.0) + float(v) * k
        n += k
    model.train(was_training)
    return {k: v / n for k, v in sums.items()}


class KTOTerm(LossTerm):
    """KTO on ``feedback`` batches; units: examples. The mismatched pairs' mean log-ratio is the
    detached KL baseline z0 (:func:`prefopt.losses.kto.kto`)."""

    kind = "feedback"
    name = "kto"

    def __init__(self, *, beta: float, reference=None, desirable_weight: float = 1.0,
                 undesirable_weight: float = 1.0, has_store: bool = False):
        if reference is None and not has_store:
            raise ConfigError("algo.reference: kto needs a reference (copy, lora or precomputed)")
        self.beta, self.reference = beta, reference
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    @torch.no_grad()
    def reference_logps(self, batch: FeedbackBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.ref_logps is not None:
            return batch.ref_logps, batch.ref_kl_logps
        with reference_pass(self.reference) as ref:
            return sequence_logps(ref, batch.sequences)[0], sequence_logps(ref, batch.kl_sequences)[0]

    def outputs(self, model, batch: FeedbackBatch):
        policy, _ = sequence_logps(model, batch.sequences)
        with torch.no_grad():  # z0 is detached in the loss: no graph needed
            kl_policy, _ = sequence_logps(model, batch.kl_sequences)
        ref, kl_ref = self.reference_logps(batch)
        return kto(policy, ref, batch.labels, kl_policy, kl_ref, beta=self.beta,
                   desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight)

    def loss(self, model, batch: FeedbackBatch) -> StepLoss:
        out = self.outputs(model, batch)
        weights = batch.sequences.weights if batch.sequences.weights is not None else torch.ones(len(batch))
        metrics = {k: float(v) for k, v in out.metrics.items()}
        metrics["kto/desirable_fraction"] = float(batch.labels.float().mean())
        tokens = int(batch.sequences.attention_mask.sum() + batch.kl_sequences.attention_mask.sum())
        return StepLoss((out.losses * weights).sum(), metrics, tokens)


class SFTTerm(LossTerm):
    """Completion-only NLL; units: response tokens (the step's loss is the mean NLL per token).

    ``padding_free``: rows packed without padding (exact)."""

    kind = "sequences"

    def __init__(self, *, pad_id: int, padding_free: bool = True, name: str = "sft", throughput=None):
        self.pad_id, self.padding_free, self.name, self.throughput = pad_id, padding_free, name, throughput

    def units(self, batch: SequenceBatch) -> float:
        return float(batch.loss_mask[:, 1:].sum())

    def response_logps(self, model, batch: SequenceBatch) -> torch.Tensor:
        """Log-probs of every response token of the batch, flattened (packed when possible)."""
        if self.padding_free:
            layout = packed_layout(model, lambda cost: pack_sequences(batch, self.pad_id, attention_cost=cost))
            if layout is not None:
                return layout_token_logps(model, layout)
        logps, mask = token_logps(model, batch)
        return logps[mask]

    def loss(self, model, batch: SequenceBatch) -> StepLoss:
        logps = self.response_logps(model, batch)
        nll = -logps.sum()
        tokens = int(batch.attention_mask.sum())
        if self.throughput is not None:
            self.throughput.add(tokens)
        return StepLoss(nll, {"sft/nll": float(nll.detach()) / max(1, logps.numel())}, tokens)
