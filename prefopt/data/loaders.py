"""Read records from files or ``datasets`` and validate them against a schema.

Sources (``read_records``): JSONL (or a JSON list), Parquet, CSV/TSV, a directory written by
``datasets.save_to_disk`` (Dataset or DatasetDict, with ``split``), a local directory of data
files, or a hub dataset name (``datasets.load_dataset(name, split=...)``).

Schemas (``validate``):

- ``pairwise``: prompt, chosen, rejected (+ optional weight, margin, scores)
- ``unpaired``: prompt, completion, label (binary feedback for KTO; + optional weight, scores)
- ``sft``: prompt, completion (or a ``messages`` conversation whose last turn is the assistant's)
- ``prompt``: prompt only (online training); a conversational prompt ends before the response,
  and a ``messages`` conversation stands for the prompt with its final assistant turn dropped;
  other columns (e.g. the chosen/rejected ``scores`` of a pairs file read for its prompts) are ignored

Text fields are strings, or lists of ``{role, content}`` messages (conversational form). A
conversational pairwise row may omit ``prompt`` when chosen and rejected are whole
conversations sharing every turn but the last (the prompt is that shared prefix).

A bad row fails naming the source, the row (1-based, plus the JSONL line when they differ), the
field or column (as named in the source, with the field it maps to) and what was expected; with
``on_bad_row="skip"`` it is dropped and counted instead.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.errors import DataError, output_error

SCHEMAS: dict[str, tuple[str, ...]] = {
    "pairwise": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "sft": ("prompt", "completion"),
    "prompt": ("prompt",),
}
TEXT_FIELDS = ("prompt", "chosen", "rejected", "completion")
OPTIONAL_FIELDS = ("weight", "margin", "scores")
FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "tsv", "datasets")

_SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
                  ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}


# --------------------------------------------------------------------------- reading
def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSONL file; a line that is not a JSON object fails naming the line."""
    return _read_jsonl(Path(path))[0]


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows, lines = [], []
    with path.open("rb") as fh:  # decoded line by line, so bad bytes are reported with their line
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            lines.append(lineno)
    return rows, lines


def _decode(data: bytes, path: Path, lineno: int | None = None) -> str:
    """UTF-8 text of ``data`` (a whole file, or its line ``lineno``); bad bytes fail naming file and line."""
    try:
        return data.decode("utf-8-sig" if lineno in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        if lineno is None:
            lineno = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        else:
            column = exc.start + 1
        raise DataError(f"{path}, line {lineno}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column "
                        f"{column}); re-save the file as UTF-8") from None


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows atomically (temp file then rename) so a crash never leaves half a file; a
    read-only or full disk fails naming the path and leaves no temp file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(exc, path) from None


@dataclass
class Records:
    """Raw rows of one source. ``lines[i]`` is row i's line in the file (JSONL), when known."""

    rows: list[dict]
    source: str
    lines: list[int] = field(default_factory=list)

    def label(self, i: int) -> str:
        """'row 3', or 'row 3 (line 5)' when blank lines make them differ."""
        line = self.lines[i] if self.lines else i + 1
        return f"row {i + 1}" + (f" (line {line})" if line != i + 1 else "")


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(_decode(path.read_bytes(), path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):  # {"data": [...]} or a column-oriented dict of lists
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            data = next(iter(lists.values()))
        elif lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            n = len(next(iter(lists.values())))
            data = [{k: v[i] for k, v in lists.items()} for i in range(n)]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects (or use JSONL, one object per line)")
    return data


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - datasets depends on pyarrow
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    with io.StringIO(_decode(path.read_bytes(), path), newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}: empty CSV file (expected a header row)")
        rows = []
        for row in reader:
            if None in row:
                raise DataError(f"{path}, row {reader.line_num - 1}: more values than header columns")
            rows.append({k: (_maybe_json(v) if isinstance(v, str) else v) for k, v in row.items()})
        return rows


def _maybe_json(value: str) -> Any:
    """CSV cells holding JSON objects or lists of objects (conversations, scores) are decoded;
    any other text (even text that happens to be JSON, like "[1, 2]") stays a string."""
    s = value.strip()
    if s[:1] in "[{":
        try:
            decoded = json.loads(s)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, dict) or (isinstance(decoded, list) and decoded
                                         and all(isinstance(x, dict) for x in decoded)):
            return decoded
    return value


_SPLIT_SLICE = re.compile(r"^(?P<name>[\w.-]+)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def _select_split(obj, split: str | None, source: str):
    """A Dataset from a Dataset/DatasetDict, with ``name[start:stop]`` slicing."""
    from datasets import DatasetDict

    m = _SPLIT_SLICE.match(split) if split else None
    if split and not m:
        raise DataError(f"{source}: bad split '{split}' (expected NAME or NAME[start:stop])")
    name = m.group("name") if m else None
    if isinstance(obj, DatasetDict):
        if name is None:
            if len(obj) == 1:
                name = next(iter(obj))
            elif "train" in obj:
                name = "train"
            else:
                raise DataError(f"{source}: the dataset has splits {', '.join(obj)}; set data.split")
        if name not in obj:
            raise DataError(f"{source}: no split '{name}' (splits: {', '.join(obj)})")
        obj = obj[name]
    if m and (m.group("start") or m.group("stop")):
        n = len(obj)
        start = int(m.group("start")) if m.group("start") else 0
        stop = int(m.group("stop")) if m.group("stop") else n
        obj = obj.select(range(*slice(start, stop).indices(n)))
    return obj


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _read_datasets(name_or_path: str, split: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DataError(f"{name_or_path}: loading datasets needs the 'datasets' package") from None
    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir() and _is_saved_dataset(path):
            ds = _select_split(datasets.load_from_disk(str(path)), split, name_or_path)
        else:  # a directory of data files or a hub name; datasets slices "train[:100]" itself
            loaded = datasets.load_dataset(str(path) if path.exists() else name_or_path, split=split)
            ds = _select_split(loaded, None, name_or_path)
    except DataError:
        raise
    except Exception as exc:  # network, missing split, bad files: one clear line
        raise DataError(f"cannot load dataset '{name_or_path}'"
                        f"{f' (split {split})' if split else ''}: {str(exc).splitlines()[0]}") from None
    return ds.to_list()


def looks_local(name: str) -> bool:
    """A name that can only be a path (absolute, ./ or ~, a data-file suffix, or more than one '/'),
    not a hub dataset ('name' or 'org/name')."""
    return (name.startswith(("/", ".", "~")) or Path(name).suffix.lower() in _SUFFIX_FORMAT
            or name.count("/") > 1)


def read_records(path: str | Path, *, fmt: str = "auto", split: str | None = None) -> Records:
    """Read every row of a file, a saved ``datasets`` directory or a hub dataset.

    ``fmt`` forces the format (default: from the suffix; directories and hub names use
    ``datasets``). ``split`` selects a split of a ``datasets`` source (``train``, ``test[:100]``).
    """
    name = str(path)
    if fmt not in FORMATS:
        raise DataError(f"data.format: got '{fmt}', expected one of {', '.join(FORMATS)}")
    p = Path(name).expanduser()
    if fmt == "auto":
        if p.is_dir():
            fmt = "datasets"
        elif p.is_file():
            fmt = _SUFFIX_FORMAT.get(p.suffix.lower(), "")
            if not fmt:
                raise DataError(f"{name}: unknown file type '{p.suffix}' (expected "
                                f"{', '.join(sorted(_SUFFIX_FORMAT))}; or set data.format)")
        elif looks_local(name):
            raise DataError(f"{name}: file not found")
        else:
            fmt = "datasets"  # a hub name such as 'org/name'
    if fmt != "datasets" and not p.is_file():
        raise DataError(f"{name}: file not found")
    if fmt == "jsonl":
        rows, lines = _read_jsonl(p)
        return Records(rows, name, lines)
    if fmt == "json":
        rows = _read_json(p)
    elif fmt == "parquet":
        rows = _read_parquet(p)
    elif fmt in ("csv", "tsv"):
        rows = _read_csv(p, "\t" if fmt == "tsv" else ",")
        # Row labels count the header as line 1, so "row N" is the N-th data row.
    else:
        rows = _read_datasets(name, split)
        if split:
            name = f"{name} [{split}]"
    return Records(rows, name)


# --------------------------------------------------------------------------- column mapping
def apply_columns(records: Records, columns: dict | None = None,
                  score_columns: dict | None = None) -> Records:
    """Rename source columns to schema fields: ``columns`` maps field -> source column
    (e.g. ``{prompt: question}``); ``score_columns`` maps objective -> source column (unpaired)
    or [chosen column, rejected column] (pairwise) and fills the row's ``scores``."""
    columns = dict(columns or {})
    score_columns = dict(score_columns or {})
    if not columns and not score_columns:
        return records
    present = set(records.rows[0]) if records.rows else set()
    wanted = list(columns.values()) + [c for v in score_columns.values()
                                       for c in (v if isinstance(v, (list, tuple)) else [v])]
    for col in wanted:
        if not isinstance(col, str):
            raise DataError(f"data.columns / data.score_columns: column names must be strings, got {col!r}")
        if records.rows and col not in present:
            import difflib
            close = difflib.get_close_matches(col, sorted(present), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{records.source}: no column '{col}'{hint} (columns: {', '.join(sorted(present))})")
    out = []
    for row in records.rows:
        new = dict(row)
        for dst, src in columns.items():
            new[dst] = row.get(src)
            new.setdefault("_columns", {})[dst] = src
            if src != dst and src in new and src not in columns:
                del new[src]
        if score_columns:
            scores = dict(new.get("scores") or {})
            for objective, cols in score_columns.items():
                scores[objective] = ([row.get(c) for c in cols] if isinstance(cols, (list, tuple))
                                     else row.get(cols))
            new["scores"] = scores
        out.append(new)
    return Records(out, records.source, records.lines)


# --------------------------------------------------------------------------- validation
@dataclass
class Validated:
    """Rows that fit the schema, normalized; ``problems`` holds one message per skipped row."""

    rows: list[dict]
    skipped: int
    problems: list[str]
    conversational: int = 0
    indices: list[int] = field(default_factory=list)  # each kept row's position in the source


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) for m in value)


class _RowError(Exception):
    def __init__(self, column: str | None, message: str):
        super().__init__(message)
        self.column, self.message = column, message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_messages(name: str, value: list) -> list[dict]:
    out = []
    for j, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise _RowError(name, f"message {j} must have string 'role' and 'content', got {_short(m)}")
        out.append({"role": role, "content": content})
    return out


def _text(row: dict, name: str, required: bool = True):
    if name not in row or row[name] is None:
        if not required:
            return None
        if name in row:
            raise _RowError(name, "missing (the value is null)")
        present = ", ".join(sorted(k for k in row if not k.startswith("_"))) or "none"
        raise _RowError(name, f"missing (columns present: {present})")
    value = row[name]
    if isinstance(value, str):
        return value
    if is_messages(value):
        return _check_messages(name, value)
    raise _RowError(name, f"expected a string or a list of {{role, content}} messages, got "
                          f"{type(value).__name__} {_short(value)}")


_TRUE = {"true", "1", "yes", "y", "t", "desirable", "good"}
_FALSE = {"false", "0", "no", "n", "f", "undesirable", "bad"}


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _RowError("label", f"expected a boolean (true/false or 1/0), got {_short(value)}")


def _number(name: str, value: Any, *, nonneg: bool = False) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _RowError(name, f"expected a number, got {_short(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _RowError(name, f"expected a finite number, got {_short(value)}")
    if nonneg and value < 0:
        raise _RowError(name, f"expected a number >= 0, got {value!r}")
    return float(value)


def _scores(value: Any, paired: bool) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _RowError("scores", f"expected a mapping objective -> score, got {_short(value)}")
    out = {}
    for k, v in value.items():
        if paired:
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise _RowError("scores", f"objective '{k}': expected [chosen score, rejected score], got {_short(v)}")
            out[k] = [_number(f"scores.{k}", v[0]), _number(f"scores.{k}", v[1])]
        else:
            out[k] = _number(f"scores.{k}", v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v)
    return out


def _as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _split_conversation(name: str, conv: list[dict]) -> tuple[list[dict], list[dict]]:
    if conv[-1]["role"] != "assistant":
        raise _RowError(name, f"the last message must be the assistant's, got role '{conv[-1]['role']}'")
    return conv[:-1], conv[-1:]


def _prompt_only(row: dict):
    """An online prompt: text, or a conversation ending before the response (a ``messages``
    conversation loses its final assistant turn, the response it holds)."""
    if row.get("prompt") is None and is_messages(row.get("messages")):
        conv = _check_messages("messages", row["messages"])
        prompt = conv[:-1] if conv[-1]["role"] == "assistant" else conv
        if not prompt:
            raise _RowError("messages", "the conversation has no turn before the assistant's answer")
        return prompt
    prompt = _text(row, "prompt")
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise _RowError("prompt", "the last message is the assistant's; a prompt ends where the response "
                                  "begins (drop that turn, or give the conversation as a 'messages' column, "
                                  "whose final assistant turn is dropped)")
    return prompt


def _wrong_schema_hint(row: dict, schema: str) -> str:
    if schema == "pairwise" and "completion" in row and "label" in row and "chosen" not in row:
        return ("; this row looks like unpaired binary feedback (prompt, completion, label), i.e. KTO data: "
                "train it with algo.name: kto, or map pairwise columns with data.columns")
    if schema == "unpaired" and "chosen" in row and "rejected" in row and "completion" not in row:
        return "; this row looks like a preference pair (prompt, chosen, rejected): use a pairwise algorithm"
    if schema == "sft" and "chosen" in row and "completion" not in row:
        return "; this row looks like a preference pair; map the SFT target with data.columns: {completion: chosen}"
    return ""


def _normalize(row: dict, schema: str) -> dict:
    """One row -> normalized dict (raises _RowError)."""
    out: dict[str, Any] = {}
    if schema == "pairwise":
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        prompt = _text(row, "prompt", required=not (isinstance(chosen, list) and isinstance(rejected, list)))
        if prompt is None:  # implicit prompt: shared turns of two conversations
            p1, chosen = _split_conversation("chosen", chosen)
            p2, rejected = _split_conversation("rejected", rejected)
            if p1 != p2:
                raise _RowError("chosen", "chosen and rejected conversations differ before their last "
                                          "turn; give an explicit prompt column")
            prompt = p1
            if not prompt:
                raise _RowError("chosen", "the conversations have no turn before the assistant's answer")
        out.update(prompt=prompt, chosen=chosen, rejected=rejected)
        keys = ("prompt", "chosen", "rejected")
    elif schema in ("sft", "unpaired"):
        if schema == "sft" and "completion" not in row and is_messages(row.get("messages")):
            conv = _check_messages("messages", row["messages"])
            prompt, completion = _split_conversation("messages", conv)
        else:
            prompt, completion = _text(row, "prompt"), _text(row, "completion")
        out.update(prompt=prompt, completion=completion)
        keys = ("prompt", "completion")
        if schema == "unpaired":
            if "label" not in row or row["label"] is None:
                raise _RowError("label", "missing (expected true for desirable, false for undesirable)")
            out["label"] = _label(row["label"])
    elif schema == "prompt":
        out["prompt"] = _prompt_only(row)
        keys = ("prompt",)
    else:
        raise DataError(f"unknown schema '{schema}' (known: {', '.join(SCHEMAS)})")
    conversational = any(isinstance(out[k], list) for k in keys)
    if conversational:
        out["prompt"] = _as_messages(out["prompt"], "user")
        for k in keys[1:]:
            out[k] = _as_messages(out[k], "assistant")
    out["conversational"] = conversational
    if row.get("weight") is not None:
        out["weight"] = _number("weight", row["weight"], nonneg=True)
    if row.get("margin") is not None:
        out["margin"] = _number("margin", row["margin"])
    if row.get("scores") is not None and schema != "prompt":
        out["scores"] = _scores(row["scores"], paired=schema == "pairwise")
    consumed = set(SCHEMAS[schema]) | set(TEXT_FIELDS) | set(OPTIONAL_FIELDS) | {"_columns", "messages"}
    extra = {k: v for k, v in row.items() if k not in consumed}  # e.g. the lab's "flipped"
    if extra:
        out["extra"] = extra
    return out


def validate(rows: list[dict] | Records, schema: str, source: str | None = None,
             on_bad_row: str = "error") -> Validated:
    """Keep the rows that fit ``schema`` (normalized); a bad row raises (``error``) or is counted (``skip``).

    Normalized rows hold the schema fields (strings, or message lists for conversational rows,
    with ``conversational`` set), ``weight``/``margin``/``scores`` when given, and ``extra``.
    """
    if schema not in SCHEMAS:
        raise DataError(f"unknown schema '{schema}' (known: {', '.join(SCHEMAS)})")
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"data.on_bad_row: got '{on_bad_row}', expected 'error' or 'skip'")
    records = rows if isinstance(rows, Records) else Records(list(rows), source or "<rows>")
    source = source or records.source
    good, problems, conv, indices = [], [], 0, []
    for i, row in enumerate(records.rows):
        try:
            norm = _normalize(row, schema)
        except _RowError as err:
            column = err.column
            mapped = (row.get("_columns") or {}).get(column) if column else None
            fields_ = ", ".join(SCHEMAS[schema])
            if column and err.message.startswith("missing"):
                source_col = f" (source column '{mapped}')" if mapped and mapped != column else ""
                what = f"missing field '{column}'{source_col}{err.message[len('missing'):]}"
            else:
                where = (f"column '{mapped}' (mapped to '{column}')" if mapped and mapped != column
                         else f"column '{column}'" if column else "")
                what = f"{where}: {err.message}" if where else err.message
            article = "an" if schema[0] in "aeiou" else "a"
            message = (f"{source}, {records.label(i)}: {what}; expected {article} {schema} row "
                       f"({fields_}){_wrong_schema_hint(row, schema)}")
            if on_bad_row == "error":
                raise DataError(message) from None
            problems.append(message)
            continue
        conv += norm["conversational"]
        good.append(norm)
        indices.append(i)
    if not good:
        detail = f"; first problem: {problems[0]}" if problems else ""
        raise DataError(f"{source}: no usable {schema} rows ({len(records.rows)} read, "
                        f"{len(problems)} bad){detail}")
    return Validated(good, len(problems), problems, conv, indices)


def detect_schema(row: dict) -> str | None:
    """The schema a row's columns suggest (None when unclear)."""
    if "chosen" in row and "rejected" in row:
        return "pairwise"
    if "completion" in row and "label" in row:
        return "unpaired"
    if "completion" in row or "messages" in row:
        return "sft"
    if "prompt" in row:
        return "prompt"
    return None


def load_rows(path: str | Path, schema: str, *, fmt: str = "auto", split: str | None = None,
              columns: dict | None = None, score_columns: dict | None = None,
              on_bad_row: str = "error") -> Validated:
    """``read_records`` + ``apply_columns`` + ``validate`` in one call."""
    records = apply_columns(read_records(path, fmt=fmt, split=split), columns, score_columns)
    if not records.rows:
        raise DataError(f"{records.source}: no rows")
    return validate(records, schema, records.source, on_bad_row)
