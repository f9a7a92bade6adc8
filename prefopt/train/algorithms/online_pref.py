"""Online and iterative preference optimization as recipes on the single loop.

- ``online_dpo``: every step, two samples per prompt from the current policy, labelled by the
  reward (higher wins) or a pairwise judge, trained with any pairwise loss against the initial
  policy as reference (:class:`~prefopt.train.sources.online_pairs.OnlinePairSource` × PairwiseTerm).
- ``iterative_dpo``: rounds of {sample n per prompt → best vs worst by the reward → train the
  pairwise loss for ``steps_per_round`` steps → reference := the policy at the end of the round}.
  The reference log-probs of a round's pairs are computed once, by the policy at the round's
  start, so no reference copy is kept.
- ``raft``: the same rounds with SFT on each prompt's best sample (reward-ranked fine-tuning).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs, collate_sequences
from prefopt.errors import ConfigError
from prefopt.rollout.scorers import Judge
from prefopt.train.algorithms.preference import pair_logps
from prefopt.train.recipe import Part, Recipe
from prefopt.train.sources.experience import Experience, mean
from prefopt.train.sources.online_pairs import OnlinePairSource, RoundsSource, response_ids, split_even
from prefopt.train.terms.preference import PairwiseTerm, SFTTerm
from prefopt.types import PreferenceBatch, Sampled


def _logps(*args, **kwargs):
    # Looked up at call time, so one patch of this module's pair_logps reaches every online pass.
    return pair_logps(*args, **kwargs)


class _CountingPairwiseTerm(PairwiseTerm):
    """A pairwise term that feeds its source's learner throughput."""

    def __init__(self, *args, throughput, **kwargs):
        super().__init__(*args, **kwargs)
        self.throughput = throughput

    def loss(self, model, batch: PreferenceBatch):
        out = super().loss(model, batch)
        self.throughput.add(out.tokens)
        return out


class OnlineDPO(Recipe):
    """Two fresh samples per prompt → a pair labelled by the reward or the judge → pairwise loss."""

    name = "online_dpo"

    def __init__(self, experience: Experience, *, loss_fn: Callable, beta: float, hparams: dict,
                 reference=None, judge: Judge | None = None, prompts_per_step: int = 16, max_resample: int = 4,
                 prefix_sharing: bool = True, padding_free: bool = True):
        if reference is None and not getattr(loss_fn, "reference_free", False):
            raise ConfigError("algo.reference: this loss needs a reference model")
        perf = dict(prefix_sharing=prefix_sharing, padding_free=padding_free)
        self.source = OnlinePairSource(
            experience, reference=reference, judge=judge, prompts_per_step=prompts_per_step,
            max_resample=max_resample, pair_logps=lambda m, b: _logps(m, b, experience.pad_id, **perf))
        self.term = _CountingPairwiseTerm(loss_fn, beta=beta, hparams=hparams, pad_id=experience.pad_id,
                                          logps=_logps, needs_reference_in_batch=True,
                                          throughput=self.source.throughput, **perf)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=experience.evaluate)
        self.exp = experience


def best_worst(rewards: list[float], k: int) -> list[tuple[int, int, int]]:
    """(prompt, best row, worst row) for every prompt whose k samples do not all tie."""
    out = []
    for p in range(len(rewards) // k):
        rows = list(range(p * k, p * k + k))
        best = max(rows, key=lambda i: rewards[i])
        worst = min(rows, key=lambda i: rewards[i])
        if rewards[best] > rewards[worst]:
            out.append((p, best, worst))
    return out


def _rounds_source(experience: Experience, kind: str, make_rows, collate, to_plain, from_plain, **kw):
    return RoundsSource(experience, kind=kind, make_rows=make_rows, collate=collate, to_plain=to_plain,
                        from_plain=from_plain, **kw)


class IterativeDPO(Recipe):
    """Iterative DPO: best vs worst of n samples per prompt, reference := policy at the round's start."""

    name = "iterative_dpo"

    def __init__(self, experience: Experience, *, loss_fn: Callable, beta: float, hparams: dict,
                 judge: Judge | None = None, prefix_sharing: bool = True, padding_free: bool = True, **kw):
        self.perf = dict(prefix_sharing=prefix_sharing, padding_free=padding_free)
        self.judge, self.pad_id, self.k, self.batch_size = judge, experience.pad_id, kw["num_generations"], kw["batch_size"]
        self.reference_free = getattr(loss_fn, "reference_free", False)
        self.source = _rounds_source(experience, "pairs", self._make_rows, self._collate, _pair_row_to_plain,
                                     _pair_row_from_plain, **kw)
        self.term = _CountingPairwiseTerm(loss_fn, beta=beta, hparams=hparams, pad_id=self.pad_id, logps=_logps,
                                          needs_reference_in_batch=True, throughput=self.source.throughput,
                                          **self.perf)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=experience.evaluate)

    def _judged(self, sampled: Sampled, chosen_rejected, counts):
        """The judge decides which of the two extremes wins."""
        raw = sampled.raw_prompts or sampled.prompts
        probs, failed = self.judge([raw[p] for p, _, _ in chosen_rejected],
                                   [sampled.responses[b] for _, b, _ in chosen_rejected],
                                   [sampled.responses[w] for _, _, w in chosen_rejected])
        counts["judge/errors"] = counts.get("judge/errors", 0) + failed
        return [(p, b, w) if prob > 0.5 else (p, w, b)
                for (p, b, w), prob in zip(chosen_rejected, probs) if not math.isnan(prob) and prob != 0.5]

    def _make_rows(self, model, sampled: Sampled, rewards: list[float], counts) -> list:
        chosen_rejected = best_worst(rewards, self.k)
        if self.judge is not None:
            chosen_rejected = self._judged(sampled, chosen_rejected, counts)
        pairs = [EncodedPair(sampled.rollout.prompt_ids[b], response_ids(sampled, b), response_ids(sampled, w), i)
                 for i, (_, b, w) in enumerate(chosen_rejected)]
        refs = [(0.0, 0.0)] * len(pairs)
        if pairs and not self.reference_free:  # reference := the policy now (the previous round's result)
            refs = []
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for part in split_even(pairs, math.ceil(len(pairs) / max(1, self.batch_size))):
                    c, r, _, _ = _logps(model, collate_pairs(part, self.pad_id), self.pad_id, **self.perf)
                    refs.extend(zip(c.tolist(), r.tolist()))
            model.train(was_training)
        gaps = [rewards[b] - rewards[w] for _, b, w in chosen_rejected]
        counts["round/reward_margin"] = mean(gaps) if gaps else 0.0
        return [(pair, rc, rr) for pair, (rc, rr) in zip(pairs, refs)]

    def _collate(self, rows: list[tuple[EncodedPair, float, float]]) -> PreferenceBatch:
        refs = None
        if not self.reference_free:
            refs = (torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]))
        return collate_pairs([r[0] for r in rows], self.pad_id, refs)


def _pair_row_to_plain(row) -> list:
    pair, rc, rr = row
    return [pair.prompt_ids, pair.chosen_ids, pair.rejected_ids, pair.index, rc, rr]


def _pair_row_from_plain(plain) -> tuple:
    prompt, chosen, rejected, index, rc, rr = plain
    return EncodedPair(list(prompt), list(chosen), list(rejected), int(index)), float(rc), float(rr)


class RAFT(Recipe):
    """Reward-ranked fine-tuning: SFT (token-mean NLL) on each prompt's best of n samples.

    Prompts whose samples all got the same reward are skipped (and counted): they say nothing
    about which response is better."""

    name = "raft"

    def __init__(self, experience: Experience, **kw):
        self.k, self.pad_id = kw["num_generations"], experience.pad_id
        self.source = _rounds_source(experience, "sequences", self._make_rows, self._collate,
                                     lambda r: [list(r[0]), list(r[1])], lambda p: (list(p[0]), list(p[1])), **kw)
        self.term = SFTTerm(pad_id=self.pad_id, padding_free=False, throughput=self.source.throughput)
        super().__init__([Part(self.source, [(self.term, 1.0)])], name=self.name, evaluate=experience.evaluate)

    def _make_rows(self, model, sampled: Sampled, rewards: list[float], counts) -> list:
        rows, tied = [], 0
        for p in range(len(rewards) // self.k):
            group = range(p * self.k, p * self.k + self.k)
            best = max(group, key=lambda i: rewards[i])
            if all(rewards[i] == rewards[best] for i in group):
                tied += 1  # no ranking: with a pass/fail reward, "best" could be a wrong answer
                continue
            rows.append((sampled.rollout.prompt_ids[best], response_ids(sampled, best)))
        counts["round/tied_prompts_dropped"] = float(tied)
        counts["round/best_reward"] = mean(
            [max(rewards[p * self.k:(p + 1) * self.k]) for p in range(len(rewards) // self.k)])
        return rows

    def _collate(self, rows):
        return collate_sequences(rows, self.pad_id)
