"""Evaluate a policy on a lab task: gold reward, win rate and KL against a reference policy."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefopt.data.tokenize import collate_sequences
from prefopt.models.logprobs import sequence_logps
from prefopt.rollout.engine import SamplingConfig
from prefopt.rollout.text import sample_texts
from prefopt.tasks.base import Task
from prefopt.types import Rollout


@dataclass
class PolicySamples:
    """Sampled responses of one policy and their gold scores (one list per objective)."""

    prompts: list[str]
    texts: list[str]
    gold: dict[str, list[float]]
    rollout: Rollout = field(repr=False)

    def mean(self, objective: str) -> float:
        values = self.gold[objective]
        return sum(values) / len(values)


def sample_policy(model, tokenizer, task: Task, prompts: list[str], sampling: SamplingConfig) -> PolicySamples:
    rollout, texts = sample_texts(model, tokenizer, prompts, sampling)
    row_prompts = [p for p in prompts for _ in range(sampling.num_samples)]
    return PolicySamples(row_prompts, texts, task.gold(row_prompts, texts), rollout)


@torch.no_grad()
def rollout_logps(model, rollout: Rollout, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Teacher-forced summed log-prob of each rollout response under ``model``: (N,)."""
    model.eval()
    out = []
    for s in range(0, len(rollout), batch_size):
        rows = [(rollout.prompt_ids[i], rollout.response_ids[i][rollout.response_mask[i]].tolist())
                for i in range(s, min(len(rollout), s + batch_size))]
        logps, _ = sequence_logps(model, collate_sequences(rows, pad_id))
        out.append(logps)
    return torch.cat(out)


def win_rate(a: list[float], b: list[float]) -> float:
    """Fraction of rows where a beats b (ties count one half)."""
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b))
    return wins / max(1, len(a))


def sequence_kl(policy_samples: PolicySamples, reference, pad_id: int) -> float:
    """Monte-Carlo KL(policy || reference) per sequence: mean of log π(y) - log π_ref(y), y ~ π.

    The rollout's behaviour log-probs are the policy's raw (temperature 1) log-probs, so this is
    unbiased when samples were drawn at temperature 1 without top-k/top-p.
    """
    pol = (policy_samples.rollout.logprobs * policy_samples.rollout.response_mask).sum(-1)
    ref = rollout_logps(reference, policy_samples.rollout, pad_id)
    return float((pol - ref).mean())


def compare_policies(policy, reference, tokenizer, task: Task, prompts: list[str], objective: str,
                     sampling: SamplingConfig, reference_samples: PolicySamples | None = None) -> dict:
    """Gold reward (every objective), win rate on ``objective`` and KL of ``policy`` vs ``reference``."""
    ours = sample_policy(policy, tokenizer, task, prompts, sampling)
    theirs = reference_samples or sample_policy(reference, tokenizer, task, prompts, sampling)
    result = {"gold_reward": ours.mean(objective),
              "win_rate_vs_ref": win_rate(ours.gold[objective], theirs.gold[objective]),
              "kl_to_ref": sequence_kl(ours, reference, tokenizer.pad_token_id),
              "response_tokens": float(ours.rollout.response_mask.sum(-1).float().mean())}
    result.update({f"gold/{k}": ours.mean(k) for k in task.objectives})
    return result
