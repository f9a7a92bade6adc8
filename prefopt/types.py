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


@dataclass
class Sampled:
    """Responses of the current policy to P prompts (K each, N = P*K rows), with texts and cost.

    prompts: P prompt texts; raw_prompts: the P prompts as given in the data (a string, or a list
        of {role, content} messages), what rewards, judges and gold functions receive.
    row_prompts / row_raw_prompts: N entries, the (raw) prompt row i answers.
    responses: N decoded response texts. indices: P positions in the prompt pool.
    """

    rollout: Rollout
    prompts: list[str]
    row_prompts: list[str]
    responses: list[str]
    seconds: float
    indices: list[int] = field(default_factory=list)
    raw_prompts: list[Any] | None = None
    row_raw_prompts: list[Any] | None = None

    @property
    def group(self) -> torch.Tensor:
        return self.rollout.group


@dataclass
class PGBatch:
    """One micro-batch of policy-gradient experience, in rollout layout (B rows, L positions).

    prompt_ids: B lists of prompt token ids (for a dataset reset: prompt + forced prefix).
    response_ids / mask: (B, L) long / bool; mask is True on tokens that carry the loss.
    old_logps, advantages: (B, L) behaviour log-probs and advantages.
    ref_logps: (B, L) reference log-probs when KL is a loss term; returns, old_values: (B, L), PPO.
    """

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor
    mask: torch.Tensor
    old_logps: torch.Tensor
    advantages: torch.Tensor
    ref_logps: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    def rows(self, idx: torch.Tensor) -> "PGBatch":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        L = max(1, int(self.mask[idx].sum(-1).max())) if len(idx) else 1
        cut = lambda t: None if t is None else t[:, :L]  # noqa: E731
        return PGBatch([self.prompt_ids[i] for i in idx.tolist()], cut(pick(self.response_ids)),
                       cut(pick(self.mask)), cut(pick(self.old_logps)), cut(pick(self.advantages)),
                       cut(pick(self.ref_logps)), cut(pick(self.returns)), cut(pick(self.old_values)))

    def to_state(self) -> dict:
        """A plain tree (dict of tensors / lists / None) for checkpoints."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict) -> "PGBatch":
        return cls(**state)


@dataclass
class SampleBatch:
    """Fresh, unlabelled policy samples: K per prompt for P prompts, N = P*K rows.

    prompt_ids: N lists of prompt token ids; response_ids / mask: (N, L) long / bool;
    group: (N,) prompt id of each row; ref_logps: (N, L) reference per-token log-probs.
    """

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor
    mask: torch.Tensor
    group: torch.Tensor
    ref_logps: torch.Tensor

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])
