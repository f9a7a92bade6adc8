"""Errors that the CLI reports as one clear line (``--debug`` shows the traceback)."""


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
