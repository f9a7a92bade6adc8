"""SIGINT and SIGTERM stop training the same way (schedulers send SIGTERM), and never in the middle
of an optimizer update, a metrics record or a checkpoint write: inside a critical section the
signal is held and raised when the section ends."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal. ``checkpoint`` is the resumable checkpoint that holds the last
    completed step (None when no step had completed); ``run_dir`` is the run's folder."""

    def __init__(self, signum: int = signal.SIGINT, checkpoint: Path | None = None, run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint, self.run_dir = signum, checkpoint, run_dir


class InterruptGuard:
    """Installs SIGINT/SIGTERM handlers that raise :class:`TrainingInterrupted` (outside critical
    sections). Re-entrant: nested ``with`` blocks share one installation."""

    def __init__(self):
        self._depth = 0
        self._critical = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "InterruptGuard":
        if self._depth == 0 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous, self._critical, self._pending = {}, False, None

    def _handle(self, signum, frame) -> None:
        if self._critical:
            self._pending = signum
            return
        raise TrainingInterrupted(signum)

    def hold(self) -> None:
        """Start a critical section (idempotent); :meth:`release` ends it."""
        self._critical = True

    def release(self) -> None:
        """End the critical section; a signal that came during it is raised now."""
        self._critical = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise TrainingInterrupted(signum)

    def discard(self) -> None:
        """End the critical section dropping a held signal (the run is stopping already)."""
        self._critical, self._pending = False, None

    @contextmanager
    def critical(self):
        was = self._critical
        self.hold()
        try:
            yield
        finally:
            if not was:
                self.release()


GUARD = InterruptGuard()  # one per process: signal handlers are process-wide
