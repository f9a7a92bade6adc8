"""Run ``prefopt ARGS...`` in this process and stop it at a chosen point with a real signal
(for tests/test_resume_kill.py; not a test module itself).

    python tests/kill_driver.py POINT N SIGNAL ARGS...

POINT is where the N-th event of this process sends SIGNAL (KILL, TERM or INT) to the process:
``backward`` (inside a step: after a forward pass, before the update), ``generate`` (inside an
online step's rollout), ``save`` (a checkpoint written but its manifest not yet), ``eval`` (an
evaluation starts), ``eval_log`` (half of an evaluation's metrics line is on disk).
"""
from __future__ import annotations

import os
import signal
import sys

import torch


def _signal(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def _on_nth(module, attr: str, n: int, sig: str, before=None) -> None:
    original = getattr(module, attr)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if before is not None:
                before(*args, **kwargs)
            _signal(sig)
        return original(*args, **kwargs)

    setattr(module, attr, wrapper)


def _half_line(logger, record):
    if any(k.startswith("eval/") for k in record):
        line = repr(record).encode()
        logger._fh.flush()
        with open(logger.path, "ab") as fh:
            fh.write(line[: len(line) // 2])


def arm(point: str, n: int, sig: str) -> None:
    import prefopt.train.checkpoint as checkpoint
    import prefopt.train.loop as loop
    import prefopt.train.sources.experience as experience
    from prefopt.train.metrics import MetricsLogger

    if point == "backward":
        _on_nth(torch.autograd, "backward", n, sig)
    elif point == "generate":
        _on_nth(experience, "generate", n, sig)
    elif point == "save":
        _on_nth(checkpoint, "_write_manifest", n, sig)
    elif point == "eval":
        _on_nth(loop, "_evaluate", n, sig)
    elif point == "eval_log":
        original, seen = MetricsLogger.log, {"n": 0}

        def log(self, record):
            if any(k.startswith("eval/") for k in record):
                seen["n"] += 1
                if seen["n"] == n:
                    _half_line(self, record)
                    _signal(sig)
            return original(self, record)
        MetricsLogger.log = log
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    point, n, sig, *args = sys.argv[1:]
    torch.set_num_threads(1)
    arm(point, int(n), sig)
    from prefopt.cli.main import main

    sys.exit(main(args))
