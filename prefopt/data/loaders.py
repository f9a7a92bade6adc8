"""Read records from files and validate them against a schema, naming the file, row and field.

Formats: ``pairwise`` (prompt, chosen, rejected[, weight][, scores]) and ``sft`` (prompt, completion).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from prefopt.errors import DataError

SCHEMAS: dict[str, tuple[str, ...]] = {
    "pairwise": ("prompt", "chosen", "rejected"),
    "sft": ("prompt", "completion"),
}


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSONL file; a line that is not a JSON object fails naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows atomically (temp file then rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    tmp.replace(path)


@dataclass
class Validated:
    rows: list[dict]
    skipped: int
    problems: list[str]


def _row_problem(row: dict, fields: tuple[str, ...]) -> str | None:
    for name in fields:
        if name not in row:
            return f"missing field '{name}' (present: {', '.join(sorted(row)) or 'none'})"
        if not isinstance(row[name], str):
            return f"field '{name}' must be a string, got {type(row[name]).__name__}"
    if "weight" in row:
        w = row["weight"]
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            return f"field 'weight' must be a finite number >= 0, got {w!r}"
    return None


def validate(rows: list[dict], schema: str, source: str, on_bad_row: str = "error") -> Validated:
    """Keep the rows that fit ``schema``; a bad row raises (``error``) or is counted (``skip``)."""
    fields = SCHEMAS[schema]
    good, problems = [], []
    for i, row in enumerate(rows, start=1):
        problem = _row_problem(row, fields)
        if problem is None:
            good.append(row)
            continue
        message = f"{source}, row {i}: {problem}; expected a {schema} row with fields {', '.join(fields)}"
        if on_bad_row == "error":
            raise DataError(message)
        problems.append(message)
    if not good:
        raise DataError(f"{source}: no usable {schema} rows ({len(rows)} read, {len(problems)} bad)")
    return Validated(good, len(problems), problems)
