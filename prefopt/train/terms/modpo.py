"""The MODPO loss term: a :class:`PairwiseTerm` whose loss is :func:`prefopt.losses.modpo.modpo`,
with the margin objectives read from the batch's score columns (computed once before training,
see ``prefopt.cli.builders.multiobjective``)."""
from __future__ import annotations

from typing import Sequence

from prefopt.losses.modpo import check_modpo_weights, modpo
from prefopt.objectives.margins import score_margins, stack_margins
from prefopt.train.terms.preference import PairwiseTerm
from prefopt.types import PreferenceBatch


class ModpoTerm(PairwiseTerm):
    """MODPO on ``pairs``; ``columns[k]`` is the score column holding margin objective k+1's rewards
    (chosen, rejected), multiplied by ``scales[k]`` (default 1). Units: pairs, as any pairwise term."""

    def __init__(self, *, weights: Sequence[float], columns: Sequence[str], scales: Sequence[float] = (),
                 loss_type: str = "sigmoid", **pairwise):
        self.weights = check_modpo_weights(weights).tolist()
        self.columns, self.loss_type = list(columns), loss_type
        self.scales = [float(s) for s in scales] or [1.0] * len(self.columns)
        super().__init__(self._loss, hparams={}, name="modpo", **pairwise)

    def outputs(self, model, batch: PreferenceBatch):
        self._batch = batch  # the margins of this batch, read by _loss inside the pairwise computation
        try:
            return super().outputs(model, batch)
        finally:
            self._batch = None

    def _loss(self, pc, pr, rc, rr, *, beta, chosen_lengths=None, rejected_lengths=None):
        batch = self._batch
        margins = {}
        for column, scale in zip(self.columns, self.scales):
            chosen, rejected = score_margins(batch, column)
            margins[column] = (scale * chosen, scale * rejected)
        chosen, rejected = stack_margins(margins, len(batch))
        device = pc.device
        return modpo(pc, pr, rc, rr, beta=beta, chosen_margins=chosen.to(device), rejected_margins=rejected.to(device),
                     weights=self.weights, loss_type=self.loss_type)
