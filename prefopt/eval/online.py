"""Held-out evaluation of an online run: reward, gold objectives and pass@k of the lab task, KL to
the reference, response length; the same for greedy responses with ``eval_greedy``."""
from __future__ import annotations

import torch

from prefopt.losses.reductions import masked_sum
from prefopt.losses.rl import group_index
from prefopt.models.rollout_logps import batched_logps
from prefopt.types import Sampled


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


@torch.no_grad()
def evaluate_experience(exp, model) -> dict[str, float]:
    """Held-out prompts of ``exp`` (an :class:`~prefopt.train.sources.experience.Experience`): mean
    reward and components, gold objectives of the lab task, KL to the reference (nats per sequence,
    Monte-Carlo over the samples; only when sampling is untempered, i.e. temperature 1 without
    top-k/top-p), length; with ``eval_greedy`` the same for greedy responses under ``greedy/``."""
    if not exp.eval_prompts:
        return {}
    idx = list(range(len(exp.eval_prompts)))
    out = _eval_samples(exp, exp.sample(model, idx, exp.eval_num_samples, eval_split=True), "")
    if exp.eval_greedy:
        out.update(_eval_samples(exp, exp.sample(model, idx, 1, greedy=True, eval_split=True), "greedy/", kl=False))
    model.train()
    return out


def _eval_samples(exp, s: Sampled, prefix: str, kl: bool = True) -> dict[str, float]:
    out: dict[str, float] = {}
    if exp.reward is not None:
        r = exp.reward(s.row_raw_prompts, s.responses, s.group.tolist())
        out[prefix + "reward"] = _mean(r.total)
        out.update({f"{prefix}reward/{k}": _mean(v) for k, v in r.components.items()})
    if exp.task is not None:
        gold = exp.task.gold(s.row_raw_prompts, s.responses)
        out.update({f"{prefix}gold/{k}": _mean(v) for k, v in gold.items()})
        out.update(pass_at_k(gold, s.group, exp.task.pass_fail, prefix))
    mask = s.rollout.response_mask
    out[prefix + "response_length"] = float(mask.sum(-1).float().mean())
    sampling = exp.sampling
    untempered = sampling.temperature == 1.0 and sampling.top_k == 0 and sampling.top_p == 1.0
    if kl and exp.reference is not None and untempered:  # samples of π itself: unbiased Monte-Carlo KL
        ref = batched_logps(exp.reference, s.rollout, exp.pad_id, sampling.batch_size)
        out[prefix + "kl_to_ref"] = float(masked_sum(s.rollout.logprobs - ref, mask, dim=-1).mean())
    return out


def pass_at_k(gold: dict[str, list[float]], group: torch.Tensor, names, prefix: str) -> dict[str, float]:
    """``gold/<name>/pass@k`` for the pass/fail (0/1) objectives ``names``: the share of prompts with
    at least one of their k samples scoring 1 (only when there are k > 1 samples per prompt)."""
    if not len(group) or not names:
        return {}
    index, sizes = group_index(group)
    k = int(sizes.max())
    if k < 2:
        return {}
    out = {}
    for name in names:
        v = torch.tensor(gold[name], dtype=torch.float32)
        best = torch.zeros(int(index.max()) + 1).scatter_reduce(0, index, v, "amax", include_self=False)
        out[f"{prefix}gold/{name}/pass@{k}"] = float(best.mean())
    return out
