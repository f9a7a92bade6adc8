"""What ``prefopt train`` checks before any work, beyond the config's own validation: that the
model, tokenizer, data and reward-model paths exist, the lab task can be built, and the output
directory can be written. ``--check`` runs exactly this and stops.

Hub names (``org/name``) cannot be checked offline; they are returned as notes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from prefopt.data.loaders import looks_local
from prefopt.errors import ConfigError
from prefopt.train.config import TrainConfig
from prefopt.train.recipe_config import recipe_paths

REWARD_MODEL_PREFIX = "reward_model:"


def _check_path(key: str, name: str, notes: list[str], *, need: str | None = None) -> None:
    path = Path(name).expanduser()
    if path.exists():
        if need and path.is_dir() and not (path / need).exists():
            raise ConfigError(f"{key}: got '{name}', expected a directory with {need} (a saved model)")
        return
    if looks_local(name):
        raise ConfigError(f"{key}: got '{name}', expected an existing path (no such file or directory)")
    notes.append(f"{key} '{name}' is not a local path; taken as a Hugging Face hub name (not checked offline)")


def check_writable(key: str, directory: str | Path) -> None:
    """The nearest existing ancestor of ``directory`` must be a directory we can create files in."""
    path = Path(directory).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: got '{directory}', expected a directory ({probe} is a file)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: got '{directory}', expected a writable directory "
                          f"({probe}: {exc.strerror or exc})") from None


def check_train_inputs(cfg: TrainConfig, resume_dir: str | Path | None = None) -> list[str]:
    """Raise ``ConfigError`` naming the key of the first missing input; return notes on what could
    not be checked (hub names)."""
    from prefopt.models.tiny import TINY_MODELS, TINY_PREFIX, is_tiny
    from prefopt.tasks import get_task

    notes: list[str] = []
    if resume_dir is not None and not Path(resume_dir).is_dir():
        raise ConfigError(f"--resume: got '{resume_dir}', expected an existing run directory")
    model = cfg.model.name_or_path
    if is_tiny(model):
        if model[len(TINY_PREFIX):] not in TINY_MODELS:
            raise ConfigError(f"model.name_or_path: got '{model}', expected one of "
                              f"{', '.join(TINY_PREFIX + k for k in TINY_MODELS)}")
        if not cfg.model.tokenizer and not cfg.data.task:
            raise ConfigError("model.tokenizer: got null, expected a tokenizer path or data.task to build one "
                              f"(tiny model '{model}')")
    else:
        _check_path("model.name_or_path", model, notes, need="config.json")
    if cfg.model.tokenizer:
        _check_path("model.tokenizer", cfg.model.tokenizer, notes)
    if cfg.data.task:
        try:
            get_task(cfg.data.task, **cfg.data.task_options)
        except ConfigError as exc:
            raise ConfigError(f"data.task: {exc}") from None
    for key in ("path", "eval_path"):
        value = getattr(cfg.data, key)
        if value:
            _check_path(f"data.{key}", value, notes)
    for key, value in recipe_paths(cfg.recipe):
        _check_path(key, value, notes)
    for i, spec in enumerate(cfg.online.reward):
        if spec.name.startswith(REWARD_MODEL_PREFIX):
            _check_path(f"online.reward[{i}].name", spec.name[len(REWARD_MODEL_PREFIX):], notes)
    check_writable("output_dir", Path(resume_dir) if resume_dir is not None else cfg.output_dir)
    return notes
