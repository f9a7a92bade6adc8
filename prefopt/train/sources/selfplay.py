"""Self-play experience under a general preference P(y ≻ y′) (docs/selfplay.md).

- :class:`SelfPlayRows`: the ``make_rows`` of a :class:`~prefopt.train.sources.online_pairs.RoundsSource`
  for sppo / inpo / dno / selm: K samples per prompt of the current policy (= the previous
  iterate π_t) → the (P, K, K) win-rate matrix, once per round → the method's pairs → log-probs
  under π_t (the reference of sppo / dno / selm and INPO's π_t), under the fixed π_ref (INPO), and
  SELM's y_ref = π_t's greedy response with its log-prob under π_t.
- :class:`MixturePairSource` (egpo / online_ipo): every step, y, y′ from the geometric mixture
  π_θ^{1−α}·π_ref^α, judged against y″ ∼ π_θ.
- :class:`SPODraw` (spo): the rollout draw of any policy-gradient recipe, with each sample's reward
  its win proportion against the other samples of its prompt.
- :class:`HedgeRewardDraw`: the rollout draw of a policy-gradient recipe whose reward is a Hedge
  combination of scorers, learning from gold labels on pairs of a prompt's samples.

Rows are plain dicts ``{prompt, chosen, rejected: token ids, x: {name: float}, anchor: ids}``, so a
round's rows are checkpointed as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from prefopt.data.tokenize import EncodedPair, collate_pairs, collate_sequences
from prefopt.errors import ConfigError
from prefopt.losses.selfplay import (SelectedPairs, dno_pairs, geometric_mixture_logits, mean_win_rates,
                                     spo_rewards, sppo_pairs)
from prefopt.models.logprobs import sequence_logps
from prefopt.models.lora import reference_pass
from prefopt.rollout.kv_cache import cache_arg
from prefopt.rollout.preferences import win_rate_matrix
from prefopt.rollout.scorers import RewardOutput
from prefopt.train.algorithms.preference import pair_logps
from prefopt.train.recipe import Source
from prefopt.train.sources.experience import Experience, Throughput, mean
from prefopt.train.sources.online_pairs import response_ids, sample_metrics, split_even
from prefopt.train.sources.policy_gradient import Draw
from prefopt.types import PreferenceBatch, Sampled, SequenceBatch

ROUND_METHODS = ("sppo", "inpo", "dno", "selm")


@dataclass
class SelfPlayBatch:
    """B pairs with per-pair floats ``x`` ((B,) tensors: ref_chosen, win_chosen, prev_chosen, ...) and,
    for SELM, the anchor responses y_ref (with their prompts) as a SequenceBatch of B rows."""

    pairs: PreferenceBatch
    x: dict[str, torch.Tensor]
    anchor: SequenceBatch | None = None

    def __len__(self) -> int:
        return len(self.pairs)


def collate_rows(rows: list[dict], pad_id: int) -> SelfPlayBatch:
    pairs = collate_pairs([EncodedPair(r["prompt"], r["chosen"], r["rejected"], i) for i, r in enumerate(rows)],
                          pad_id)
    x = {k: torch.tensor([r["x"][k] for r in rows], dtype=torch.float32) for k in rows[0]["x"]}
    anchor = None
    if rows[0].get("anchor") is not None:
        anchor = collate_sequences([(r["prompt"], r["anchor"]) for r in rows], pad_id)
    return SelfPlayBatch(pairs, x, anchor)


def copy_row(row: dict) -> dict:
    """A row as a fresh plain tree (for checkpoints and back)."""
    out = {"prompt": list(row["prompt"]), "chosen": list(row["chosen"]), "rejected": list(row["rejected"]),
           "x": {k: float(v) for k, v in row["x"].items()}}
    if row.get("anchor") is not None:
        out["anchor"] = list(row["anchor"])
    return out


def group_prompts(sampled: Sampled) -> list[Any]:
    """Each prompt as given in the data (what judges receive)."""
    return list(sampled.raw_prompts or sampled.prompts)


@torch.no_grad()
def pair_logps_of(model, rows: list[dict], pad_id: int, batch_size: int, perf: dict) -> list[tuple[float, float]]:
    """Summed log-probs (chosen, rejected) of each row under ``model`` (eval mode, no graph)."""
    out: list[tuple[float, float]] = []
    if not rows:
        return out
    was_training = model.training
    model.eval()
    with reference_pass(model) as m:
        for part in split_even(rows, math.ceil(len(rows) / max(1, batch_size))):
            c, r, _, _ = pair_logps(m, collate_rows(part, pad_id).pairs, pad_id, **perf)
            out.extend(zip(c.tolist(), r.tolist()))
    model.train(was_training)
    return out


def lab_metrics(task, sampled: Sampled, prefix: str = "lab/") -> dict[str, float]:
    """Exact exploitability and style shares of the samples on a lab task with a game (reviews_rps)."""
    if task is None or not hasattr(task, "exploitability"):
        return {}
    prompts = list(sampled.row_raw_prompts or sampled.row_prompts)
    m = {prefix + "exploitability": float(task.exploitability(prompts, sampled.responses))}
    names = tuple(getattr(task, "nash_mixture")()) + ("none",)
    m.update({f"{prefix}style/{n}": float(v) for n, v in zip(names, task.style_distribution(sampled.responses))})
    return m


# --------------------------------------------------------------------------- pair selection per method


def _adjacent_pairs(win_rates: torch.Tensor) -> SelectedPairs:
    """INPO: samples (0, 1), (2, 3), … of each prompt, ordered by the judge; ties dropped."""
    n_prompts, k = win_rates.shape[:2]
    a = torch.arange(0, k - 1, 2)
    p = torch.arange(n_prompts).unsqueeze(-1).expand(-1, len(a))
    prob = win_rates[:, a, a + 1]
    keep = prob != 0.5
    first = prob > 0.5
    aa, bb = a.expand_as(prob), (a + 1).expand_as(prob)
    chosen, rejected = torch.where(first, aa, bb), torch.where(first, bb, aa)
    score = torch.where(first, prob, 1 - prob)
    return SelectedPairs(p[keep], chosen[keep], rejected[keep], score[keep], 1 - score[keep])


def _ranked_pairs(win_rates: torch.Tensor, margin: float, pairs_per_prompt: int) -> SelectedPairs:
    """DNO / SELM: best vs worst by mean win rate with a strictly positive gap ≥ ``margin``."""
    sel = dno_pairs(mean_win_rates(win_rates), margin=margin, pairs_per_prompt=pairs_per_prompt)
    keep = sel.chosen_score > sel.rejected_score
    return SelectedPairs(sel.prompt[keep], sel.chosen[keep], sel.rejected[keep], sel.chosen_score[keep],
                         sel.rejected_score[keep])


class SelfPlayRows:
    """``make_rows(model, sampled, rewards, counts)`` of a self-play round (see the module docstring).

    ``reference``: the fixed π_ref (INPO only). ``greedy(model, indices)``: SELM's y_ref sampler."""

    def __init__(self, method: str, experience: Experience, judge, *, k: int, batch_size: int, perf: dict,
                 both_orders: bool = False, reference=None, margin: float = 0.0, pairs_per_prompt: int = 1,
                 task=None):
        if method not in ROUND_METHODS:
            raise ConfigError(f"algo.name: '{method}' is not a round-based self-play method "
                              f"({', '.join(ROUND_METHODS)})")
        if method == "inpo" and reference is None:
            raise ConfigError("algo.reference: inpo needs the fixed reference policy (copy, or lora with lora.enabled)")
        self.method, self.exp, self.judge, self.k = method, experience, judge, k
        self.batch_size, self.perf, self.both_orders = batch_size, perf, both_orders
        self.reference, self.margin, self.pairs_per_prompt, self.task = reference, margin, pairs_per_prompt, task

    def select(self, win_rates: torch.Tensor) -> SelectedPairs:
        if self.method == "sppo":
            return sppo_pairs(win_rates)
        if self.method == "inpo":
            return _adjacent_pairs(win_rates)
        margin = self.margin if self.method == "dno" else 0.0
        return _ranked_pairs(win_rates, margin, self.pairs_per_prompt if self.method == "dno" else 1)

    def __call__(self, model, sampled: Sampled, rewards, counts: dict) -> list[dict]:
        win_rates = win_rate_matrix(self.judge, group_prompts(sampled), sampled.responses,
                                    both_orders=self.both_orders)
        sel = self.select(win_rates)
        rows = []
        for p, c, r, sc, sr in zip(*(t.tolist() for t in (sel.prompt, sel.chosen, sel.rejected,
                                                            sel.chosen_score, sel.rejected_score))):
            wc, wr = p * self.k + c, p * self.k + r
            rows.append({"prompt": list(sampled.rollout.prompt_ids[wc]), "chosen": response_ids(sampled, wc),
                         "rejected": response_ids(sampled, wr), "x": {"win_chosen": sc, "win_rejected": sr}})
        self._reference_logps(model, rows, sampled, sel)
        counts["selfplay/pairs"] = float(len(rows))
        counts["selfplay/win_rate_gap"] = mean([r["x"]["win_chosen"] - r["x"]["win_rejected"] for r in rows])
        counts.update(lab_metrics(self.task, sampled))
        return rows

    def _reference_logps(self, model, rows: list[dict], sampled: Sampled, sel: SelectedPairs) -> None:
        """π_t's log-probs (every method) and π_ref's (INPO); SELM's anchor y_ref."""
        if not rows:
            return
        if self.method == "selm":
            prompts = sorted(set(sel.prompt.tolist()))
            greedy = self.exp.sample(model, [sampled.indices[p] for p in prompts], 1, greedy=True)
            anchor = {p: response_ids(greedy, i) for i, p in enumerate(prompts)}
            for row, p in zip(rows, sel.prompt.tolist()):
                row["anchor"] = anchor[p]
            self._anchor_logps(model, rows)
        for row, (c, r) in zip(rows, pair_logps_of(model, rows, self.exp.pad_id, self.batch_size, self.perf)):
            key = "prev" if self.method == "inpo" else "ref"
            row["x"][f"{key}_chosen"], row["x"][f"{key}_rejected"] = c, r
        if self.method == "inpo":
            fixed = pair_logps_of(self.reference, rows, self.exp.pad_id, self.batch_size, self.perf)
            for row, (c, r) in zip(rows, fixed):
                row["x"]["ref_chosen"], row["x"]["ref_rejected"] = c, r

    @torch.no_grad()
    def _anchor_logps(self, model, rows: list[dict]) -> None:
        was_training = model.training
        model.eval()
        for start in range(0, len(rows), self.batch_size):
            part = rows[start:start + self.batch_size]
            lp, _ = sequence_logps(model, collate_sequences([(r["prompt"], r["anchor"]) for r in part],
                                                            self.exp.pad_id))
            for row, v in zip(part, lp.tolist()):
                row["x"]["anchor_ref"] = v
        model.train(was_training)


# --------------------------------------------------------------------------- geometric mixture sampling


class GeometricMixture(torch.nn.Module):
    """Samples from π_θ^{1−α}·π_ref^α token by token (:func:`geometric_mixture_logits`): a model with
    the generation interface that runs the policy and the reference side by side, each with its own
    KV cache (the pair of caches is the mixture's cache). Only the policy is a submodule."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, mixture_coef: float):
        super().__init__()
        self.policy, self.coef = policy, mixture_coef
        object.__setattr__(self, "_reference", reference)  # not a submodule: train() must not touch it

    @property
    def device(self):
        return next(self.policy.parameters()).device

    def train(self, mode: bool = True):
        self.training = mode
        self.policy.train(mode)
        return self

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                **kwargs):
        policy_cache, ref_cache = past_key_values if past_key_values is not None else (None, None)
        common = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                      **kwargs)
        pk, rk = cache_arg(self.policy), cache_arg(self._reference)  # `cache` where transformers renamed it
        p = self.policy(**{pk: policy_cache}, **common)
        r = self._reference(**{rk: ref_cache}, **common)
        return SimpleNamespace(logits=geometric_mixture_logits(p.logits, r.logits, self.coef),
                               past_key_values=(getattr(p, pk), getattr(r, rk)))


class MixturePairSource(Source):
    """Online IPO / EGPO: per step, y, y′ ∼ π_θ^{1−α}π_ref^α for each of ``prompts_per_step`` prompts,
    judged against ``num_opponents`` samples y″ ∼ π_θ (or, at α = 0, against each other with
    targets (P(y ≻ y′), ½)); reference log-probs of y, y′ attached. Batches of kind ``selfplay``."""

    kinds = ("selfplay",)

    def __init__(self, experience: Experience, judge, *, reference, mixture_coef: float, num_opponents: int,
                 prompts_per_step: int, batch_size: int, perf: dict, both_orders: bool = False, task=None):
        if reference is None:
            raise ConfigError("algo.reference: online IPO / EGPO needs a reference policy (copy, or lora)")
        from prefopt.models.lora import AdapterDisabledReference
        if 0.0 < mixture_coef < 1.0 and isinstance(reference, AdapterDisabledReference):
            raise ConfigError("selfplay.mixture_coef: a geometric mixture runs policy and reference side by side; "
                              "with algo.reference: lora use mixture_coef 0 or 1, or algo.reference: copy")
        self.exp, self.judge, self.reference = experience, judge, reference
        self.coef, self.num_opponents, self.prompts_per_step = mixture_coef, num_opponents, prompts_per_step
        self.batch_size, self.perf, self.both_orders, self.task = batch_size, perf, both_orders, task
        self.metrics: dict[str, float] = {}
        self.throughput = Throughput()

    def _sample_pair(self, model, indices: list[int]) -> Sampled:
        if self.coef == 0.0:
            return self.exp.sample(model, indices, 2)
        if self.coef == 1.0:
            with reference_pass(self.reference) as ref:
                return self.exp.sample(ref, indices, 2)
        return self.exp.sample(GeometricMixture(model, self.reference, self.coef), indices, 2)

    def _win_rates(self, model, pair: Sampled, indices: list[int]) -> tuple[list[float], list[float]]:
        prompts = group_prompts(pair)
        if self.coef == 0.0:  # y″ drawn like y, y′: targets (P(y ≻ y′), ½)
            w = win_rate_matrix(self.judge, prompts, pair.responses, both_orders=self.both_orders)
            return w[:, 0, 1].tolist(), [0.5] * len(prompts)
        opp = self.exp.sample(model, indices, self.num_opponents)
        m = self.num_opponents
        wa, wb = [], []
        for p, prompt in enumerate(prompts):
            block = self.judge.block(prompt, pair.responses[2 * p:2 * p + 2], opp.responses[p * m:(p + 1) * m])
            wa.append(float(block[0].mean()))
            wb.append(float(block[1].mean()))
        return wa, wb

    def next_batches(self, model, num_micro: int) -> list[dict]:
        indices = self.exp.next_prompts(self.prompts_per_step)
        pair = self._sample_pair(model, indices)
        wa, wb = self._win_rates(model, pair, indices)
        rows = [{"prompt": list(pair.rollout.prompt_ids[2 * p]), "chosen": response_ids(pair, 2 * p),
                 "rejected": response_ids(pair, 2 * p + 1), "x": {"win_chosen": a, "win_rejected": b}}
                for p, (a, b) in enumerate(zip(wa, wb))]
        for row, (c, r) in zip(rows, pair_logps_of(self.reference, rows, self.exp.pad_id, self.batch_size,
                                                   self.perf)):
            row["x"]["ref_chosen"], row["x"]["ref_rejected"] = c, r
        rewards = comps = None
        if self.exp.reward is not None:
            out = self.exp.score(pair)
            rewards, comps = out.total, out.components
        self.metrics = {**sample_metrics(pair, rewards, comps), **lab_metrics(self.task, pair),
                        "selfplay/win_rate_gap": mean(abs(a - b) for a, b in zip(wa, wb))}
        self.throughput.start()
        return [{"selfplay": collate_rows(part, self.exp.pad_id)} for part in split_even(rows, num_micro)]

    def step_metrics(self) -> dict[str, float]:
        m = {**self.metrics, **self.exp.pop_metrics()}
        m.update(self.throughput.metrics())
        return m

    def state_dict(self) -> dict:
        return {"experience": self.exp.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.exp.load_state_dict(state["experience"])


# --------------------------------------------------------------------------- SPO


class SPODraw(Draw):
    """SPO (Swamy et al. 2024): reward = win proportion against the prompt's other samples
    (:func:`spo_rewards` of the judge's win-rate matrix); the experience's reward, when there is one
    (the lab's gold objective), is only logged (``reward/<component>``)."""

    def __init__(self, experience: Experience, judge, *, both_orders: bool = False, task=None):
        super().__init__(experience)
        self.judge, self.both_orders, self.task = judge, both_orders, task
        self.last: dict[str, float] = {}

    def __call__(self, model, n_prompts: int, k: int) -> tuple[Sampled, RewardOutput]:
        sampled = self.exp.sample(model, self.exp.next_prompts(n_prompts), k)
        win_rates = win_rate_matrix(self.judge, group_prompts(sampled), sampled.responses,
                                    both_orders=self.both_orders)
        rewards = spo_rewards(win_rates).flatten().tolist()
        components = {"spo/win_proportion": rewards}
        if self.exp.reward is not None:
            components.update(self.exp.score(sampled).components)
        self.last = lab_metrics(self.task, sampled)
        return sampled, RewardOutput(rewards, components, 0)

    def metrics(self) -> dict[str, float]:
        return dict(self.last)


# --------------------------------------------------------------------------- Hedge as a reward combiner


class HedgeRewardDraw(Draw):
    """Reward = Σ_k w_k r_k over the scorers of a :class:`~prefopt.objectives.hedge.HedgeReward`, with the
    weights *before* this batch's feedback; then, for a ``feedback`` fraction of the pairs of samples
    (2i, 2i+1) of one prompt (a draw seeded by ``derive_seed(seed, "hedge.feedback", pair)``), the gold
    judge's P is the label and each scorer pays the loss of its Bradley-Terry prediction. Only training
    rollouts teach the weights (evaluation scores with the experience's own reward). State and metrics
    ride with the rollout source (``draw``): ``hedge/weight/<scorer>``, ``hedge/regret``, ..."""

    def __init__(self, experience: Experience, combiner, gold, *, feedback: float, seed: int = 0):
        super().__init__(experience)
        if not 0.0 <= feedback <= 1.0:
            raise ConfigError(f"hedge.feedback: got {feedback}, expected a fraction in [0, 1]")
        self.combiner, self.gold, self.feedback, self.seed = combiner, gold, float(feedback), int(seed)
        self.pairs_seen, self.labelled = 0, 0

    def _label(self, prompts, responses, group: list[int], rewards: torch.Tensor) -> None:
        import random

        from prefopt.objectives.hedge import feedback_losses
        from prefopt.seeding import HEDGE_FEEDBACK, derive_seed

        rows, labels = [], []
        for i in range(0, len(responses) - 1, 2):
            if group[i] != group[i + 1]:
                continue
            self.pairs_seen += 1
            if random.Random(derive_seed(self.seed, HEDGE_FEEDBACK, self.pairs_seen)).random() < self.feedback:
                rows.append(i)
                labels.append(self.gold.probability(prompts[i], responses[i], responses[i + 1]))
        if rows:
            idx = torch.tensor(rows)
            margin = (rewards[idx] - rewards[idx + 1]) / self.combiner.members[0].temperature
            self.combiner.hedge.update(feedback_losses(torch.sigmoid(margin), labels, self.combiner.judge.loss))
            self.labelled += len(rows)

    def __call__(self, model, n_prompts: int, k: int) -> tuple[Sampled, RewardOutput]:
        sampled = self.exp.sample(model, self.exp.next_prompts(n_prompts), k)
        prompts = list(sampled.row_raw_prompts or sampled.row_prompts)
        experts = self.combiner.expert_rewards(prompts, sampled.responses)  # (N, K), validated
        total = self.combiner.hedge.combine(experts).tolist()
        self._label(prompts, sampled.responses, sampled.group.tolist(), experts)
        components = {f"hedge/{n}": experts[:, j].tolist() for j, n in enumerate(self.combiner.hedge.names)}
        if self.exp.reward is not None:
            components.update(self.exp.score(sampled).components)
        return sampled, RewardOutput(total, components, 0)

    def metrics(self) -> dict[str, float]:
        return {**self.combiner.hedge.metrics(), "hedge/labelled": float(self.labelled)}

    def state_dict(self) -> dict:
        return {"hedge": self.combiner.hedge.state_dict(), "pairs_seen": self.pairs_seen, "labelled": self.labelled}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.combiner.hedge.load_state_dict(state["hedge"])
            self.pairs_seen, self.labelled = int(state["pairs_seen"]), int(state["labelled"])
