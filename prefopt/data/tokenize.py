"""Tokenization with prompt/response masks, left-truncation of prompts, and padding collators."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefopt.types import PreferenceBatch, SequenceBatch


@dataclass
class Encoded:
    """One prompt with one response, as token ids. The response ends with eos."""

    prompt_ids: list[int]
    response_ids: list[int]
    truncated: bool = False


@dataclass
class EncodedPair:
    """One preference pair as token ids; ``index`` is the dataset row."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int
    weight: float = 1.0
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)
    truncated: bool = False


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_lengths(prompt: list[int], responses: list[list[int]], max_length: int,
                max_prompt_length: int) -> tuple[list[int], list[list[int]], bool]:
    """Trim the prompt from the left (then, only if still needed, the responses from the right).

    The prompt keeps at most ``max_prompt_length`` tokens and at most what leaves room for the
    longest response within ``max_length``. Returns (prompt, responses, truncated).
    """
    longest = max(len(r) for r in responses)
    room = max(0, min(max_prompt_length, max_length - longest))
    truncated = len(prompt) > room
    if truncated:
        prompt = prompt[len(prompt) - room:]
    budget = max_length - len(prompt)
    if longest > budget:
        truncated = True
        responses = [r[:budget] for r in responses]
    return prompt, responses, truncated


def encode_prompt_response(tokenizer, prompt: str, response: str, max_length: int,
                           max_prompt_length: int) -> Encoded:
    p = encode_text(tokenizer, prompt)
    r = encode_text(tokenizer, response) + [tokenizer.eos_token_id]
    p, (r,), truncated = fit_lengths(p, [r], max_length, max_prompt_length)
    return Encoded(p, r, truncated)


def encode_pair(tokenizer, prompt: str, chosen: str, rejected: str, index: int, max_length: int,
                max_prompt_length: int, weight: float = 1.0,
                scores: dict[str, tuple[float, float]] | None = None) -> EncodedPair:
    p = encode_text(tokenizer, prompt)
    eos = [tokenizer.eos_token_id]
    c, r = encode_text(tokenizer, chosen) + eos, encode_text(tokenizer, rejected) + eos
    p, (c, r), truncated = fit_lengths(p, [c, r], max_length, max_prompt_length)
    return EncodedPair(p, c, r, index, weight, scores or {}, truncated)


def collate_sequences(rows: list[tuple[list[int], list[int]]], pad_id: int,
                      weights: list[float] | None = None) -> SequenceBatch:
    """Right-pad (prompt_ids, response_ids) rows; the loss mask covers the response tokens."""
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :n] = 1
        mask[i, len(p):n] = True
    w = torch.tensor(weights if weights is not None else [1.0] * len(rows), dtype=torch.float32)
    return SequenceBatch(ids, attn, mask, w)


def collate_pairs(pairs: list[EncodedPair], pad_id: int,
                  ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None) -> PreferenceBatch:
    weights = [p.weight for p in pairs]
    chosen = collate_sequences([(p.prompt_ids, p.chosen_ids) for p in pairs], pad_id, weights)
    rejected = collate_sequences([(p.prompt_ids, p.rejected_ids) for p in pairs], pad_id, weights)
    names = sorted(set().union(*(p.scores for p in pairs))) if pairs else []
    scores = {k: torch.tensor([p.scores.get(k, (float("nan"),) * 2) for p in pairs]) for k in names} or None
    return PreferenceBatch(
        chosen=chosen, rejected=rejected,
        prompt_lengths=torch.tensor([len(p.prompt_ids) for p in pairs]),
        index=torch.tensor([p.index for p in pairs]),
        ref_chosen_logps=ref_logps[0] if ref_logps else None,
        ref_rejected_logps=ref_logps[1] if ref_logps else None,
        scores=scores,
    )
