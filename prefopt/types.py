"""Typed containers passed between stages. Shapes are documented per field.

B = batch size (pairs or sequences), T = padded sequence length, K = samples per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


def _to(obj: Any, device: torch.device | str) -> Any:
    """Return a copy of a dataclass with every tensor field moved to ``device``."""
    kwargs = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        kwargs[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
    return type(obj)(**kwargs)


@dataclass
class LossOutput:
    """What every loss function returns.

    losses: (B,) per-example loss (or per-unit, e.g. per token, when the loss says so).
    metrics: detached scalar tensors or floats, namespaced, e.g. ``rewards/margin``.
    """

    losses: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class SequenceBatch:
    """Tokenized prompt+response sequences, for SFT and for scoring single responses.

    input_ids: (B, T) long, right-padded with the pad id.
    attention_mask: (B, T) long, 1 on real tokens.
    loss_mask: (B, T) bool, True on response tokens whose log-prob counts (the label positions).
    weights: (B,) float per-example weight (1.0 by default).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    weights: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "SequenceBatch":
        return _to(self, device)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PreferenceBatch:
    """B preference pairs. Chosen and rejected sequences each include the prompt.

    chosen/rejected: SequenceBatch of B rows each (row i of both share prompt i).
    prompt_lengths: (B,) long, number of prompt tokens of pair i.
    ref_chosen_logps / ref_rejected_logps: (B,) float, precomputed reference summed
        log-probs when a cache supplies them, else None.
    scores: optional dict objective -> (B, 2) gold/per-objective scores (chosen, rejected).
    index: (B,) long, dataset row of each pair (keys the reference cache).
    """

    chosen: SequenceBatch
    rejected: SequenceBatch
    prompt_lengths: torch.Tensor
    index: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    scores: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass
class Rollout:
    """K sampled responses for each of P prompts, flattened to N = P*K rows.

    prompt_ids: list of N lists of prompt token ids (unpadded).
    response_ids: (N, L) long, right-padded with pad id; L = longest response.
    response_mask: (N, L) bool, True on generated tokens (including a stop token).
    logprobs: (N, L) float, behaviour log-prob of each sampled token (0 where masked).
    group: (N,) long, which prompt (0..P-1) each row came from.
    truncated: (N,) bool, response hit max_new_tokens without stopping.
    """

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    group: torch.Tensor
    truncated: torch.Tensor

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])


@dataclass
class FeedbackBatch:
    """B unpaired examples with binary feedback (KTO), plus B mismatched pairs for the KL baseline.

    sequences: SequenceBatch of B (prompt_i, completion_i) rows.
    kl_sequences: SequenceBatch of B (prompt_i, completion_j), j != i: mismatched pairs whose mean
        log-ratio estimates KL(policy || reference).
    labels: (B,) bool, True where completion i is desirable.
    index: (B,) long, dataset row of each example (keys the reference cache).
    ref_logps / ref_kl_logps: (B,) float, precomputed reference summed log-probs, else None.
    """

    sequences: SequenceBatch
    kl_sequences: SequenceBatch
    labels: torch.Tensor
    index: torch.Tensor
    ref_logps: torch.Tensor | None = None
    ref_kl_logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.sequences)
