"""Validated rows -> token ids, for every schema, with counts of what was trimmed or dropped.

Plain rows are tokenized as prompt + response + eos. Conversational rows (message lists) are
rendered with the tokenizer's chat template (``prefopt.data.chat``); the response is the final
assistant turn and eos is appended only when the template did not already emit it.

Truncation keeps the response and trims the prompt from the left (``fit_lengths``), always
leaving at least one prompt token so the first response token is predicted from something.
Nothing is dropped silently: identical chosen/rejected pairs and empty responses are dropped
*and counted*, with one warning per kind.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from prefopt.data.chat import render_pair
from prefopt.data.tokenize import Encoded, EncodedPair, collate_sequences, encode_text, fit_lengths
from prefopt.errors import DataError
from prefopt.seeding import UNPAIRED_PARTNERS, derive_seed
from prefopt.types import FeedbackBatch

log = logging.getLogger("prefopt.data")


@dataclass
class EncodeStats:
    """What encoding did to the rows of one source."""

    examples: int = 0
    truncated: int = 0
    identical_pairs: int = 0
    empty_responses: int = 0
    conversational: int = 0
    margins: list = field(default_factory=list)  # pairwise: each kept pair's 'margin' value or None

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        return {f"{prefix}examples": self.examples, f"{prefix}truncated": self.truncated,
                f"{prefix}identical_pairs_dropped": self.identical_pairs,
                f"{prefix}empty_responses_dropped": self.empty_responses,
                f"{prefix}conversational": self.conversational}

    def report(self, source: str) -> None:
        if self.identical_pairs:
            log.warning("%s: dropped %d pair(s) whose chosen response is identical to the rejected one",
                        source, self.identical_pairs)
        if self.empty_responses:
            log.warning("%s: dropped %d example(s) with an empty response", source, self.empty_responses)
        if self.truncated:
            log.info("%s: %d example(s) truncated (prompt trimmed from the left)", source, self.truncated)


def _is_empty(response) -> bool:
    if isinstance(response, list):
        return all(not m["content"].strip() for m in response)
    return not response.strip()


def encode_texts(tokenizer, prompt, responses: list, max_length: int,
                 max_prompt_length: int) -> tuple[list[int], list[list[int]], bool]:
    """Token ids of one prompt and its responses (plain strings or message lists), fitted."""
    eos = tokenizer.eos_token_id
    if isinstance(prompt, list):
        rendered = [render_pair(tokenizer, prompt, r) for r in responses]
        p = encode_text(tokenizer, rendered[0][0])
        rs = []
        for _, text in rendered:
            ids = encode_text(tokenizer, text)
            if eos is not None and eos not in ids:
                ids = ids + [eos]
            rs.append(ids)
    else:
        p = encode_text(tokenizer, prompt)
        rs = [encode_text(tokenizer, r) + [eos] for r in responses]
    return fit(p, rs, max_length, max_prompt_length)


def fit(prompt: list[int], responses: list[list[int]], max_length: int,
        max_prompt_length: int) -> tuple[list[int], list[list[int]], bool]:
    """``fit_lengths``, but a non-empty prompt keeps at least its last token."""
    if max_length < 2:
        raise DataError(f"data.max_length: got {max_length}, expected >= 2")
    p, rs, truncated = fit_lengths(prompt, responses, max_length, max_prompt_length)
    if prompt and not p:
        p = prompt[-1:]
        rs = [r[: max_length - 1] for r in rs]
        truncated = True
    return p, rs, truncated


def encode_pairwise(tokenizer, rows: list[dict], *, max_length: int, max_prompt_length: int,
                    start_index: int = 0, source: str = "") -> tuple[list[EncodedPair], EncodeStats]:
    """Normalized pairwise rows -> EncodedPair with ``index`` = start_index + position in the output."""
    out: list[EncodedPair] = []
    stats = EncodeStats()
    for r in rows:
        if r["chosen"] == r["rejected"]:
            stats.identical_pairs += 1
            continue
        if _is_empty(r["chosen"]) or _is_empty(r["rejected"]):
            stats.empty_responses += 1
            continue
        p, (c, rj), truncated = encode_texts(tokenizer, r["prompt"], [r["chosen"], r["rejected"]],
                                             max_length, max_prompt_length)
        scores = {k: (float(v[0]), float(v[1])) for k, v in (r.get("scores") or {}).items()}
        out.append(EncodedPair(p, c, rj, start_index + len(out), float(r.get("weight", 1.0)), scores, truncated))
        stats.margins.append(r.get("margin"))
        stats.truncated += truncated
        stats.conversational += bool(r.get("conversational"))
    stats.examples = len(out)
    stats.report(source)
    if not out and rows:
        raise DataError(f"{source}: no usable pairs ({stats.identical_pairs} had chosen identical to "
                        f"rejected, {stats.empty_responses} an empty response)")
    return out, stats


def encode_sft(tokenizer, rows: list[dict], *, max_length: int, max_prompt_length: int,
               source: str = "") -> tuple[list[Encoded], EncodeStats]:
    out, stats = [], EncodeStats()
    for r in rows:
        if _is_empty(r["completion"]):
            stats.empty_responses += 1
            continue
        p, (c,), truncated = encode_texts(tokenizer, r["prompt"], [r["completion"]], max_length, max_prompt_length)
        out.append(Encoded(p, c, truncated))
        stats.truncated += truncated
        stats.conversational += bool(r.get("conversational"))
    stats.examples = len(out)
    stats.report(source)
    if not out and rows:
        raise DataError(f"{source}: no usable examples ({stats.empty_responses} had an empty completion)")
    return out, stats


# --------------------------------------------------------------------------- unpaired feedback
@dataclass
class EncodedFeedback:
    """One (prompt, completion, label) example; ``kl_completion_ids`` is another example's
    completion fitted to this prompt (the mismatched pair for KTO's KL baseline)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    index: int
    weight: float = 1.0
    kl_completion_ids: list[int] = field(default_factory=list)
    kl_prompt_ids: list[int] = field(default_factory=list)
    truncated: bool = False


def pairs_to_unpaired(rows: list[dict]) -> list[dict]:
    """Each preference pair becomes a desirable (chosen) and an undesirable (rejected) example."""
    out = []
    for r in rows:
        if r["chosen"] == r["rejected"]:
            continue
        common = {k: r[k] for k in ("prompt", "conversational", "weight") if k in r}
        out.append({**common, "completion": r["chosen"], "label": True})
        out.append({**common, "completion": r["rejected"], "label": False})
    return out


def encode_unpaired(tokenizer, rows: list[dict], *, max_length: int, max_prompt_length: int,
                    start_index: int = 0, seed: int = 0,
                    source: str = "") -> tuple[list[EncodedFeedback], EncodeStats]:
    """Encode unpaired rows and give each a fixed mismatched completion (from a seeded
    derangement over examples with a different prompt where possible), so KL pairs are the same
    every epoch and their reference log-probs can be precomputed."""
    kept, stats = [], EncodeStats()
    for r in rows:
        if _is_empty(r["completion"]):
            stats.empty_responses += 1
            continue
        kept.append(r)
    if not kept:
        raise DataError(f"{source}: no usable examples ({stats.empty_responses} had an empty completion)")
    order = list(range(len(kept)))
    random.Random(derive_seed(seed, UNPAIRED_PARTNERS)).shuffle(order)
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    out = []
    for i, r in enumerate(kept):
        j = partner[i] if len(kept) > 1 else i
        other = kept[j]["completion"]
        prompt = r["prompt"]
        if isinstance(prompt, list) != isinstance(other, list):  # mixed forms: keep the text form of each
            other = r["completion"]
        p, (c,), truncated = encode_texts(tokenizer, prompt, [r["completion"]], max_length, max_prompt_length)
        kp, (kc,), _ = encode_texts(tokenizer, prompt, [other], max_length, max_prompt_length)
        out.append(EncodedFeedback(p, c, bool(r["label"]), start_index + len(out), float(r.get("weight", 1.0)),
                                   kc, kp, truncated))
        stats.truncated += truncated
        stats.conversational += bool(r.get("conversational"))
    stats.examples = len(out)
    stats.report(source)
    return out, stats


def collate_feedback(rows: list[EncodedFeedback], pad_id: int,
                     ref: tuple[torch.Tensor, torch.Tensor] | None = None) -> FeedbackBatch:
    weights = [r.weight for r in rows]
    seqs = collate_sequences([(r.prompt_ids, r.completion_ids) for r in rows], pad_id, weights)
    kl = collate_sequences([(r.kl_prompt_ids, r.kl_completion_ids) for r in rows], pad_id)
    return FeedbackBatch(seqs, kl, torch.tensor([r.label for r in rows], dtype=torch.bool),
                         torch.tensor([r.index for r in rows], dtype=torch.long),
                         ref[0] if ref else None, ref[1] if ref else None)
