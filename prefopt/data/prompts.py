"""Prompts for online training, read by the same loaders as offline data.

Any source ``read_records`` reads (JSONL, JSON, Parquet, CSV/TSV, ``datasets`` directories or
hub names), ``data.columns`` mapping (e.g. ``{prompt: question}``) and the ``prompt`` schema of
``validate``: a prompt is a string or a list of ``{role, content}`` messages (or a ``messages``
conversation, its final assistant turn dropped).

A :class:`PromptSet` keeps every prompt twice: ``raw``, as given (rewards, judges and the lab's
gold rewards receive this), and ``texts``, what the policy continues (the string itself, or the
conversation rendered with the tokenizer's chat template and ``add_generation_prompt=True``).
Texts are tokenized without special tokens (``prefopt.rollout.text.encode_prompts``), so a
template that writes its own BOS gives exactly one.

Bad rows fail naming the source and row (or are skipped and counted with ``on_bad_row="skip"``),
as offline; so does a conversation the chat template refuses to render.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from prefopt.data.chat import has_chat_template, prompt_text
from prefopt.data.loaders import Records, apply_columns, read_records, validate
from prefopt.errors import DataError

log = logging.getLogger("prefopt.data")

Prompt = Union[str, list]  # a string, or a list of {role, content} messages

NO_TEMPLATE = ("a conversational prompt needs a tokenizer with a chat template; this tokenizer has none "
               "(set data.chat_template to 'simple', a Jinja file or Jinja text)")


@dataclass
class PromptSet:
    """Prompts of one source: ``raw[i]`` as given, ``texts[i]`` as the policy sees it.

    ``skipped``: bad rows dropped while reading (``on_bad_row="skip"``)."""

    raw: list[Prompt]
    texts: list[str]
    source: str = "<prompts>"
    skipped: int = 0

    def __post_init__(self):
        if len(self.raw) != len(self.texts):
            raise ValueError(f"PromptSet: {len(self.raw)} raw prompts but {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def conversational(self) -> int:
        """How many prompts are conversations."""
        return sum(isinstance(p, list) for p in self.raw)

    def split_off(self, n: int) -> tuple["PromptSet", "PromptSet"]:
        """(the rest, the first ``n``): a held-out slice taken from the front."""
        head = PromptSet(self.raw[:n], self.texts[:n], f"{self.source} (held-out slice)")
        return dataclasses.replace(self, raw=self.raw[n:], texts=self.texts[n:]), head

    @classmethod
    def from_prompts(cls, prompts: Sequence[Prompt], tokenizer=None, source: str = "<prompts>") -> "PromptSet":
        """Prompts already in memory (e.g. a lab task's); conversations need ``tokenizer``."""
        raw = list(prompts)
        if any(isinstance(p, list) for p in raw) and (tokenizer is None or not has_chat_template(tokenizer)):
            raise DataError(f"{source}: {NO_TEMPLATE}")
        return cls(raw, [prompt_text(tokenizer, p) for p in raw], source)


def _render(tokenizer, prompt: Prompt, records: Records, i: int) -> str:
    """``prompt_text``; a template that fails names the source, row and column."""
    try:
        return prompt_text(tokenizer, prompt)
    except Exception as exc:  # noqa: BLE001 - a template may raise anything (e.g. roles must alternate)
        source_row = records.rows[i]
        column = (source_row.get("_columns") or {}).get("prompt") or (
            "prompt" if source_row.get("prompt") is not None else "messages")
        reason = (str(exc).splitlines() or [""])[0]
        raise DataError(f"{records.source}, {records.label(i)}: column '{column}': the chat template cannot render "
                        f"this conversation ({type(exc).__name__}: {reason})") from None


def read_prompts(path: str | Path, tokenizer, *, fmt: str = "auto", split: str | None = None,
                 columns: dict | None = None, on_bad_row: str = "error") -> PromptSet:
    """Every prompt of one source, validated and rendered."""
    records = apply_columns(read_records(path, fmt=fmt, split=split), columns)
    if not records.rows:
        raise DataError(f"{records.source}: no rows")
    v = validate(records, "prompt", records.source, on_bad_row)
    problems = list(v.problems)
    if v.conversational and not has_chat_template(tokenizer):
        first = next(i for row, i in zip(v.rows, v.indices) if row["conversational"])
        raise DataError(f"{records.source}, {records.label(first)}: {NO_TEMPLATE}")
    raw, texts = [], []
    for row, i in zip(v.rows, v.indices):
        try:
            texts.append(_render(tokenizer, row["prompt"], records, i))
        except DataError as err:
            if on_bad_row == "error":
                raise
            problems.append(str(err))
            continue
        raw.append(row["prompt"])
    if not raw:
        raise DataError(f"{records.source}: no usable prompt rows ({len(records.rows)} read, {len(problems)} bad); "
                        f"first problem: {problems[0]}")
    if problems:
        log.warning("%s: skipped %d malformed row(s) (data.on_bad_row: skip); first: %s",
                    records.source, len(problems), problems[0])
    return PromptSet(raw, texts, records.source, len(problems))


def load_prompts(path: str | Path, tokenizer, *, eval_path: str | Path | None = None, fmt: str = "auto",
                 split: str | None = None, eval_split: str | None = None, columns: dict | None = None,
                 on_bad_row: str = "error", eval_examples: int = 128) -> tuple[PromptSet, PromptSet]:
    """Training and held-out prompts: the held-out ones come from ``eval_path``, else from
    ``eval_split`` of the same source, else they are the first ``min(eval_examples, N // 10)``
    prompts of the training source (which then trains on the rest)."""
    kw = dict(fmt=fmt, columns=columns, on_bad_row=on_bad_row)
    train = read_prompts(path, tokenizer, split=split, **kw)
    if eval_path or eval_split:
        held_out = read_prompts(eval_path or path, tokenizer, split=None if eval_path else eval_split, **kw)
        return train, held_out
    return train.split_off(min(eval_examples, len(train) // 10))
