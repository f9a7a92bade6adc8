"""Text in, text out around the engine: tokenize prompts once, sample, decode the responses."""
from __future__ import annotations

from typing import Sequence

from prefopt.data.chat import prompt_text
from prefopt.data.tokenize import encode_text
from prefopt.rollout.engine import SamplingConfig, generate
from prefopt.types import Rollout


def encode_prompts(tokenizer, prompts: Sequence[str | list[dict]],
                   max_prompt_length: int | None = None) -> tuple[list[list[int]], int]:
    """Token ids of each prompt, trimmed from the left to ``max_prompt_length``; returns (ids, n_truncated).

    A prompt is text, or a conversation rendered with the chat template (``prompt_text``). Text is
    tokenized without special tokens, as offline data: a template writing its own BOS keeps one."""
    ids = [encode_text(tokenizer, prompt_text(tokenizer, p)) for p in prompts]
    if max_prompt_length is None:
        return ids, 0
    truncated = sum(len(x) > max_prompt_length for x in ids)
    return [x[-max_prompt_length:] for x in ids], truncated


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Response text of each row (special tokens such as eos removed)."""
    rows = [ids[mask].tolist() for ids, mask in zip(rollout.response_ids, rollout.response_mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def sample_texts(model, tokenizer, prompts: Sequence[str | list[dict]], cfg: SamplingConfig,
                 seeds: list[int] | None = None) -> tuple[Rollout, list[str]]:
    """Sample ``cfg.num_samples`` responses per prompt; rows of prompt p are p*k .. p*k+k-1."""
    ids, _ = encode_prompts(tokenizer, prompts)
    rollout = generate(model, ids, cfg, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, tokenizer=tokenizer, seeds=seeds)
    return rollout, decode_responses(tokenizer, rollout)
