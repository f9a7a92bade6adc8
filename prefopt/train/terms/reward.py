"""The Bradley-Terry reward-model term over ``reward_pairs`` batches: -log σ(r(x, yw) - r(x, yl) - margin)
per pair and member, summed; units: pairs (of one member's batch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prefopt.models.reward import RewardEnsemble, reward_values
from prefopt.train.algorithms.base import StepLoss
from prefopt.train.recipe import LossTerm
from prefopt.types import PreferenceBatch


def bt_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair (and per-member) Bradley-Terry loss -log σ(r_w - r_l - margin)."""
    return -F.logsigmoid(chosen - rejected - margin)


class BradleyTerryTerm(LossTerm):
    """``margin`` is constant; ``margins`` (N_train + N_eval,) adds a per-pair one by pair index;
    ``head_weights`` (N, k) weighs pair i for head j (bootstrapped heads)."""

    kind = "reward_pairs"
    name = "bradley_terry"

    def __init__(self, *, pad_id: int, margin: float = 0.0, margins: torch.Tensor | None = None,
                 head_weights: torch.Tensor | None = None):
        self.pad_id, self.margin, self.margins, self.head_weights = pad_id, margin, margins, head_weights

    def units(self, batch: list[PreferenceBatch]) -> float:
        return float(len(batch[0]))

    def rewards(self, model, batch: PreferenceBatch, member: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) chosen and rejected rewards (k = 1 for one member of a separate-model ensemble)."""
        from prefopt.train.algorithms.preference import concat_rows

        net = model.members[member] if member is not None else model
        both = concat_rows(batch.chosen, batch.rejected, self.pad_id)
        r = reward_values(net, both.input_ids, both.attention_mask)
        B = len(batch)
        return r[:B], r[B:]

    def pair_margin(self, batch: PreferenceBatch) -> torch.Tensor:
        m = torch.full((len(batch), 1), float(self.margin))
        if self.margins is not None:
            m = m + self.margins[batch.index].unsqueeze(-1)
        return m

    def loss(self, model, batch: list[PreferenceBatch]) -> StepLoss:
        separate = isinstance(model, RewardEnsemble)
        total = 0.0
        acc, margin_sum, chosen_sum, rejected_sum = 0.0, 0.0, 0.0, 0.0
        tokens = 0
        parts = list(enumerate(batch)) if separate else [(None, batch[0])]
        for member, b in parts:
            rc, rr = self.rewards(model, b, member)
            losses = bt_losses(rc, rr, self.pair_margin(b))  # (B, k)
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
