"""Run directories that cannot be clobbered: one process at a time (a lock file naming its owner),
and a new run never lands in a folder that holds another run's files.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from prefopt.errors import ConfigError, TrainingError

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # run dirs this process holds → nesting depth (the lock is re-entrant)


class RunLockedError(TrainingError):
    """Another live process holds the run directory's lock."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live owner from a reused pid), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot check another machine's processes: assume it is running
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = owner.get("start")
    return started is None or _start_time(pid) in (None, started)


def _write_lock(path: Path) -> bool:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(owner, fh)
    return True


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def acquire(run_dir: Path) -> None:
    """Take ``run_dir``'s lock (re-entrant within this process). A lock whose owner is alive is an
    error naming it; a stale one (its process is gone) is taken over with a warning."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        _held[run_dir] += 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    for _ in range(3):
        if _write_lock(lock):
            _held[run_dir] = 1
            return
        owner = _read_owner(lock)
        if owner and _alive(owner):
            raise RunLockedError(f"{run_dir} is in use by process {owner.get('pid')} on {owner.get('host')} "
                                 f"(since {owner.get('since')}); wait for it to finish or stop it (or delete {lock} if "
                                 "that process is gone)")
        if not owner and time.time() - _mtime(lock) < 5:  # being written right now by its owner
            time.sleep(0.2)
            continue
        warnings.warn(f"{run_dir}: taking over the stale lock of process {owner.get('pid', '?')} "
                      "(no longer running)", stacklevel=2)
        _unlink(lock)
    raise RunLockedError(f"{run_dir}: could not take the lock {lock}")


def release(run_dir: Path) -> None:
    run_dir = Path(run_dir).resolve()
    if run_dir not in _held:
        return
    _held[run_dir] -= 1
    if _held[run_dir] == 0:
        del _held[run_dir]
        if _read_owner(run_dir / LOCK_FILE).get("pid") == os.getpid():
            _unlink(run_dir / LOCK_FILE)


@contextmanager
def locked(run_dir: Path):
    acquire(run_dir)
    try:
        yield Path(run_dir)
    finally:
        release(run_dir)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def run_contents(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds besides its lock file (names, sorted)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


def prepare_new_run(run_dir: Path, *, overwrite: bool) -> None:
    """For a new run (call with the lock held): refuse a non-empty ``run_dir`` unless ``overwrite``,
    which first clears it."""
    run_dir = Path(run_dir)
    contents = run_contents(run_dir)
    if not contents:
        return
    if not overwrite:
        shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
        raise ConfigError(f"run directory {run_dir} already holds a run ({shown}); continue it with "
                          f"--resume {run_dir}, replace it with --overwrite, or choose another run_name")
    for name in contents:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def fresh_name(parent: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when a folder of that name already exists (for
    generated run names, so two runs started in the same second do not share a folder)."""
    out, i = name, 2
    while (Path(parent) / out).exists():
        out, i = f"{name}-{i}", i + 1
    return out
