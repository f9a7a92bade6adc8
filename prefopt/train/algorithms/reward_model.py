"""Bradley-Terry reward-model training: -log σ(r(x, yw) - r(x, yl) - margin), for one model,
k heads on one backbone, or k separate models trained side by side.

Ensemble diversity: separate models get their own initialisation (seed) and their own data
order; with ``bootstrap`` each trains on its own resample of the pairs (drawn with
replacement). Heads share batches; with ``bootstrap`` each head weighs pair i by its own
Poisson(1) count (the online bootstrap), otherwise heads differ only by initialisation.
Evaluation reports held-out accuracy per member and of the aggregated reward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prefopt.data.tokenize import EncodedPair, collate_pairs
from prefopt.models.reward import AGGREGATIONS, RewardEnsemble, aggregate, reward_values
from prefopt.train.algorithms.base import Algorithm, StepLoss
from prefopt.train.algorithms.preference import concat_rows
from prefopt.train.sampler import EpochSampler
from prefopt.types import PreferenceBatch


def bt_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair (and per-member) Bradley-Terry loss -log σ(r_w - r_l - margin)."""
    return -F.logsigmoid(chosen - rejected - margin)


class RewardModeling(Algorithm):
    name = "reward_model"

    def __init__(self, train: list[EncodedPair], eval: list[EncodedPair], *, pad_id: int, batch_size: int,
                 ensemble_size: int = 1, kind: str = "models", bootstrap: bool = False, margin: float = 0.0,
                 margins: torch.Tensor | None = None, aggregation: str = "mean", uwo_lambda: float = 1.0,
                 seed: int = 0, shuffle: bool = True):
        if kind not in ("models", "heads"):
            raise ValueError(f"kind must be 'models' or 'heads', got '{kind}'")
        self.train_rows, self.eval_rows = train, eval
        self.pad_id, self.batch_size = pad_id, batch_size
        self.k, self.kind, self.bootstrap = ensemble_size, kind, bootstrap
        self.margin, self.margins = margin, margins  # margins: (N_train + N_eval,) by pair index
        self.aggregation, self.uwo_lambda = aggregation, uwo_lambda
        g = torch.Generator().manual_seed(seed * 7919 + 17)
        n = len(train)
        self.pools: list[list[int]] = []
        self.head_weights: torch.Tensor | None = None
        if kind == "models" and ensemble_size > 1:
            for i in range(ensemble_size):
                pool = torch.randint(0, n, (n,), generator=g).tolist() if bootstrap else list(range(n))
                self.pools.append(pool)
            self.samplers = [EpochSampler(n, seed + 1000 * i, shuffle) for i in range(ensemble_size)]
        else:
            self.pools = [list(range(n))]
            self.samplers = [EpochSampler(n, seed, shuffle)]
            if kind == "heads" and bootstrap and ensemble_size > 1:
                self.head_weights = torch.poisson(torch.ones(n, ensemble_size), generator=g)

    # ----------------------------------------------------------------- batches
    def _collate(self, rows: list[EncodedPair]) -> PreferenceBatch:
        return collate_pairs(rows, self.pad_id)

    def next_batches(self, model, num_micro: int) -> list[list[PreferenceBatch]]:
        """Each micro-batch is one PreferenceBatch per separately trained model (one for heads)."""
        out = []
        for _ in range(num_micro):
            out.append([self._collate([self.train_rows[pool[i]] for i in sampler.take(self.batch_size)])
                        for pool, sampler in zip(self.pools, self.samplers)])
        return out

    def units(self, batch: list[PreferenceBatch]) -> float:
        return float(len(batch[0]))

    # ----------------------------------------------------------------- forward
    def _rewards(self, model, batch: PreferenceBatch, member: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) chosen and rejected rewards (k = 1 for one member of a separate-model ensemble)."""
        net = model.members[member] if member is not None else model
        both = concat_rows(batch.chosen, batch.rejected, self.pad_id)
        r = reward_values(net, both.input_ids, both.attention_mask)
        B = len(batch)
        return r[:B], r[B:]

    def _margin(self, batch: PreferenceBatch) -> torch.Tensor:
        m = torch.full((len(batch), 1), float(self.margin))
        if self.margins is not None:
            m = m + self.margins[batch.index].unsqueeze(-1)
        return m

    def compute_loss(self, model, batch: list[PreferenceBatch]) -> StepLoss:
        separate = isinstance(model, RewardEnsemble)
        total = 0.0
        acc, margin_sum, chosen_sum, rejected_sum = 0.0, 0.0, 0.0, 0.0
        tokens = 0
        parts = list(enumerate(batch)) if separate else [(None, batch[0])]
        for member, b in parts:
            rc, rr = self._rewards(model, b, member)
            losses = bt_losses(rc, rr, self._margin(b))  # (B, k)
            w = b.chosen.weights.unsqueeze(-1) if b.chosen.weights is not None else torch.ones_like(losses)
            if self.head_weights is not None:
                w = w * self.head_weights[b.index]
            total = total + (losses * w).sum()
            rc, rr = rc.detach(), rr.detach()
            acc += float((rc > rr).float().mean())
            margin_sum += float((rc - rr).mean())
            chosen_sum += float(rc.mean())
            rejected_sum += float(rr.mean())
            tokens += int(b.chosen.attention_mask.sum() + b.rejected.attention_mask.sum())
        n = len(parts)
        metrics = {"rewards/accuracy": acc / n, "rewards/margin": margin_sum / n,
                   "rewards/chosen": chosen_sum / n, "rewards/rejected": rejected_sum / n}
        return StepLoss(total, metrics, tokens)

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def eval_rewards(self, model, rows: list[EncodedPair] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, k) rewards of chosen and rejected of the held-out pairs."""
        rows = self.eval_rows if rows is None else rows
        model.eval()
        cs, rs = [], []
        for start in range(0, len(rows), self.batch_size):
            b = self._collate(rows[start:start + self.batch_size])
            if isinstance(model, RewardEnsemble):
                pairs = [self._rewards(model, b, i) for i in range(len(model.members))]
                cs.append(torch.cat([p[0] for p in pairs], dim=-1))
                rs.append(torch.cat([p[1] for p in pairs], dim=-1))
            else:
                c, r = self._rewards(model, b)
                cs.append(c)
                rs.append(r)
        return torch.cat(cs), torch.cat(rs)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        rc, rr = self.eval_rewards(model)
        margin = torch.cat([self._margin(self._collate(self.eval_rows[s:s + self.batch_size]))
                            for s in range(0, len(self.eval_rows), self.batch_size)])
        result = {"loss": float(bt_losses(rc, rr, margin).mean()),
                  "accuracy": float((aggregate(rc, self.aggregation, self.uwo_lambda)
                                     > aggregate(rr, self.aggregation, self.uwo_lambda)).float().mean()),
                  "rewards/margin": float((rc - rr).mean())}
        if rc.shape[1] > 1:
            for i in range(rc.shape[1]):
                result[f"accuracy/member_{i}"] = float((rc[:, i] > rr[:, i]).float().mean())
            for how in AGGREGATIONS:
                result[f"accuracy/{how}"] = float((aggregate(rc, how, self.uwo_lambda)
                                                   > aggregate(rr, how, self.uwo_lambda)).float().mean())
            result["rewards/member_std"] = float(torch.cat([rc, rr]).std(-1, correction=0).mean())
        return result

    def state_dict(self) -> dict:
        return {"samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.samplers, state["samplers"]):
            s.load_state_dict(st)
