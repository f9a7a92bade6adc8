"""Bradley-Terry reward-model training as a recipe: -log σ(r(x, yw) - r(x, yl) - margin), for one
model, k heads on one backbone, or k separate models trained side by side
(:class:`~prefopt.train.sources.reward_pairs.RewardPairSource` ×
:class:`~prefopt.train.terms.reward.BradleyTerryTerm`).

Ensemble diversity: separate models get their own initialisation (seed) and their own data
order; with ``bootstrap`` each trains on its own resample of the pairs (drawn with
replacement). Heads share batches; with ``bootstrap`` each head weighs pair i by its own
Poisson(1) count (the online bootstrap), otherwise heads differ only by initialisation.
Evaluation reports held-out accuracy per member and of the aggregated reward.
"""
from __future__ import annotations

import torch

from prefopt.data.tokenize import EncodedPair
from prefopt.models.reward import AGGREGATIONS, RewardEnsemble, aggregate
from prefopt.train.recipe import Part, Recipe
from prefopt.train.sources.reward_pairs import RewardPairSource
from prefopt.train.terms.reward import BradleyTerryTerm, bt_losses

__all__ = ["RewardModeling", "bt_losses"]


class RewardModeling(Recipe):
    name = "reward_model"

    def __init__(self, train: list[EncodedPair], eval: list[EncodedPair], *, pad_id: int, batch_size: int,
                 ensemble_size: int = 1, kind: str = "models", bootstrap: bool = False, margin: float = 0.0,
                 margins: torch.Tensor | None = None, aggregation: str = "mean", uwo_lambda: float = 1.0,
                 seed: int = 0, shuffle: bool = True):
        self.source = RewardPairSource(train, pad_id=pad_id, batch_size=batch_size, ensemble_size=ensemble_size,
                                       kind=kind, bootstrap=bootstrap, seed=seed, shuffle=shuffle)
        # margins: (N_train + N_eval,) by pair index
        self.term = BradleyTerryTerm(pad_id=pad_id, margin=margin, margins=margins,
                                     head_weights=self.source.head_weights)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=self._evaluate_rm)
        self.train_rows, self.eval_rows, self.batch_size = train, eval, batch_size
        self.aggregation, self.uwo_lambda = aggregation, uwo_lambda

    def load_state_dict(self, state: dict) -> None:
        if "samplers" in state:  # a checkpoint of the pre-recipe RewardModeling
            state = {"sources": [state], "terms": [[{}]]}
        super().load_state_dict(state)

    @property
    def pools(self) -> list[list[int]]:
        return self.source.pools

    @property
    def head_weights(self) -> torch.Tensor | None:
        return self.source.head_weights

    def _batches(self, rows: list[EncodedPair]):
        return [self.source.collate(rows[s:s + self.batch_size]) for s in range(0, len(rows), self.batch_size)]

    @torch.no_grad()
    def eval_rewards(self, model, rows: list[EncodedPair] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, k) rewards of chosen and rejected of the held-out pairs."""
        rows = self.eval_rows if rows is None else rows
        model.eval()
        cs, rs = [], []
        for b in self._batches(rows):
            members = range(len(model.members)) if isinstance(model, RewardEnsemble) else [None]
            pairs = [self.term.rewards(model, b, i) for i in members]
            cs.append(torch.cat([p[0] for p in pairs], dim=-1))
            rs.append(torch.cat([p[1] for p in pairs], dim=-1))
        return torch.cat(cs), torch.cat(rs)

    @torch.no_grad()
    def _evaluate_rm(self, model) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        rc, rr = self.eval_rewards(model)
        margin = torch.cat([self.term.pair_margin(b) for b in self._batches(self.eval_rows)])
        agg = lambda r, how: aggregate(r, how, self.uwo_lambda)  # noqa: E731
        result = {"loss": float(bt_losses(rc, rr, margin).mean()),
                  "accuracy": float((agg(rc, self.aggregation) > agg(rr, self.aggregation)).float().mean()),
                  "rewards/margin": float((rc - rr).mean())}
        if rc.shape[1] > 1:
            for i in range(rc.shape[1]):
                result[f"accuracy/member_{i}"] = float((rc[:, i] > rr[:, i]).float().mean())
            for how in AGGREGATIONS:
                result[f"accuracy/{how}"] = float((agg(rc, how) > agg(rr, how)).float().mean())
            result["rewards/member_std"] = float(torch.cat([rc, rr]).std(-1, correction=0).mean())
        return result
