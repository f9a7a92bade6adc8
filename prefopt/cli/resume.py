"""Settings on ``--resume``: the config a checkpoint was written under is the reference; only keys
that are safe to change mid-run may differ, and each accepted change is recorded."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import yaml

from prefopt.errors import ConfigError
from prefopt.train.checkpoint import CONFIG_FILE

RESUMES_FILE = "resumes.jsonl"

# key → what changing it does; every other key must keep the value the run was started with.
SAFE_ON_RESUME = {
    "train.steps": "the LR schedule is re-planned for the new total from the next step on",
    "train.eval_every": "evaluation schedule",
    "train.eval_on_start": "only read by new runs",
    "train.save_every": "checkpoint schedule",
    "train.keep_checkpoints": "checkpoints kept",
    "train.checkpoint_fallback": "what --resume does with a corrupted checkpoint",
    "train.progress": "progress bar",
    "train.tensorboard": "logging",
    "train.wandb_project": "logging",
    "train.threads": "CPU threads (results stay bit-identical only with the same count)",
    "output_dir": "not used on --resume (the run directory is given)",
    "run_name": "not used on --resume (the run directory is given)",
}


def flatten(config: dict) -> dict:
    """{"section.key": value} of a ``TrainConfig`` dict (values that are mappings stay whole)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def saved_config(ckpt: Path, run_dir: Path) -> dict | None:
    """The config the checkpoint was written under (its own copy; else the run's config.yaml)."""
    for path in (Path(ckpt) / CONFIG_FILE, Path(run_dir) / CONFIG_FILE):
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
    return None


def resume_changes(saved: dict, requested: dict, step: int) -> dict[str, tuple]:
    """{key: (saved, requested)} of the accepted changes; a change of any other key is refused
    naming it."""
    # compare as stored: through YAML, tuples become lists
    old, new = flatten(saved), flatten(yaml.safe_load(yaml.safe_dump(requested, sort_keys=False)))
    changed = {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}
    refused = [k for k in changed if k not in SAFE_ON_RESUME]
    if refused:
        k = refused[0]
        more = f" (and {', '.join(refused[1:])})" if len(refused) > 1 else ""
        raise ConfigError(f"--resume: {k} was {changed[k][0]!r} in this run, now {changed[k][1]!r}{more}; it cannot "
                          f"change on resume. Set it back, or start a new run. Keys that may change: "
                          f"{', '.join(SAFE_ON_RESUME)}")
    if "train.steps" in changed and changed["train.steps"][1] < step:
        raise ConfigError(f"--resume: train.steps={changed['train.steps'][1]} is below the checkpoint's step {step}")
    return changed


def record_resume(run_dir: Path, ckpt: Path, step: int, changes: dict[str, tuple]) -> None:
    """Append the resume to ``resumes.jsonl`` and warn about each changed setting."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checkpoint": Path(ckpt).name,
             "step": step, "changes": {k: list(v) for k, v in changes.items()}}
    with (Path(run_dir) / RESUMES_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    for k, (a, b) in changes.items():
        warnings.warn(f"--resume from step {step}: {k} {a!r} -> {b!r} ({SAFE_ON_RESUME[k]}); recorded in "
                      f"{Path(run_dir) / RESUMES_FILE}", stacklevel=3)
