"""The self-play loss terms on ``selfplay`` batches (:class:`~prefopt.train.sources.selfplay.SelfPlayBatch`):
one term, the method picks which pure loss of :mod:`prefopt.losses.selfplay` (or DPO, for DNO) it
applies to the policy's log-probs and the batch's precomputed ones. Units: pairs."""
from __future__ import annotations

from typing import Callable

from prefopt.errors import ConfigError
from prefopt.losses.pairwise import dpo
from prefopt.losses.selfplay import inpo, online_ipo, selm, sppo
from prefopt.models.logprobs import sequence_logps
from prefopt.train.algorithms.base import StepLoss
from prefopt.train.algorithms.preference import pair_logps
from prefopt.train.recipe import LossTerm
from prefopt.types import LossOutput


def _sppo(t, pc, pr, lc, lr, x, model, batch) -> LossOutput:
    return sppo(pc, pr, x["ref_chosen"], x["ref_rejected"], x["win_chosen"], x["win_rejected"], beta=t.beta)


def _dno(t, pc, pr, lc, lr, x, model, batch) -> LossOutput:
    return dpo(pc, pr, x["ref_chosen"], x["ref_rejected"], beta=t.beta)


def _inpo(t, pc, pr, lc, lr, x, model, batch) -> LossOutput:
    return inpo(pc, pr, x["ref_chosen"], x["ref_rejected"], x["prev_chosen"], x["prev_rejected"],
                eta=t.eta, rho=t.rho)


def _selm(t, pc, pr, lc, lr, x, model, batch) -> LossOutput:
    anchor, _ = sequence_logps(model, batch.anchor)
    return selm(pc, pr, x["ref_chosen"], x["ref_rejected"], anchor, x["anchor_ref"], beta=t.beta, alpha=t.alpha)


def _online_ipo(t, pc, pr, lc, lr, x, model, batch) -> LossOutput:
    rc, rr = x["ref_chosen"], x["ref_rejected"]
    if t.normalize_logprobs:  # EGPO's default: length-averaged log-probs (policy and reference alike)
        lc, lr = lc.clamp(min=1), lr.clamp(min=1)
        pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
    return online_ipo(pc, pr, rc, rr, x["win_chosen"], x["win_rejected"], beta=t.beta)


METHOD_LOSSES: dict[str, Callable] = {"sppo": _sppo, "dno": _dno, "inpo": _inpo, "selm": _selm,
                                      "online_ipo": _online_ipo}


class SelfPlayTerm(LossTerm):
    """``method``'s loss on a SelfPlayBatch (pairs and their per-pair floats ``x``)."""

    kind = "selfplay"

    def __init__(self, method: str, *, beta: float, pad_id: int, prefix_sharing: bool = True,
                 padding_free: bool = True, eta: float = 1.0, rho: float = 0.1, alpha: float = 0.0,
                 normalize_logprobs: bool = False, throughput=None):
        if method not in METHOD_LOSSES:
            raise ConfigError(f"self-play term: unknown method '{method}' (known: {', '.join(METHOD_LOSSES)})")
        if not beta > 0:
            raise ConfigError(f"algo.beta: {method} needs β > 0, got {beta}")
        self.method, self.name, self.fn = method, method, METHOD_LOSSES[method]
        self.beta, self.pad_id, self.eta, self.rho, self.alpha = beta, pad_id, eta, rho, alpha
        self.perf = dict(prefix_sharing=prefix_sharing, padding_free=padding_free)
        self.normalize_logprobs, self.throughput = normalize_logprobs, throughput

    def loss(self, model, batch) -> StepLoss:
        pc, pr, lc, lr = pair_logps(model, batch.pairs, self.pad_id, **self.perf)
        out = self.fn(self, pc, pr, lc, lr, batch.x, model, batch)
        p = batch.pairs
        tokens = int(p.chosen.attention_mask.sum() + p.rejected.attention_mask.sum() - p.prompt_lengths.sum())
        if self.throughput is not None:
            self.throughput.add(tokens)
        return StepLoss(out.losses.sum(), {k: float(v) for k, v in out.metrics.items()}, tokens)
