"""Errors that the CLI reports as one clear line (``--debug`` shows the traceback).

Every error prefopt raises on purpose is a :class:`PrefoptError`; config values are rejected
by :func:`prefopt.validation.bad_value` in one format (key, value, what was expected).
"""
from __future__ import annotations

import os


class PrefoptError(Exception):
    """A user-facing error: bad config, bad data, unreadable model, non-finite loss."""


class ConfigError(PrefoptError, ValueError):
    """A config key or value is invalid; the message names the key, the value and what was expected."""


class DataError(PrefoptError, ValueError):
    """A data file or row is invalid; the message names the file, the row and the field."""


class TrainingError(PrefoptError, RuntimeError):
    """Training cannot continue (e.g. a non-finite loss)."""


class StopTraining(PrefoptError):
    """Raised by an algorithm when nothing is left to learn (e.g. every online sample scores the
    same): the loop stops before the step, evaluates and saves the last completed step."""


class OutputError(PrefoptError, OSError):
    """Output cannot be written (read-only, full or missing directory); the message names the path."""


def output_error(exc: OSError, path: str | os.PathLike) -> OutputError:
    """An :class:`OutputError` for ``exc`` raised while writing ``path`` (named rather than the
    OS's file name, which may be a temp file or missing: a full disk often names none)."""
    return OutputError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}")
