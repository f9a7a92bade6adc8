"""Run by the distributed tests under ``torchrun``: train each job of a JSON spec in turn, in one
process group. A job with ``expect_error`` records each rank's outcome instead of failing."""
import json
import os
import sys
from pathlib import Path

import torch


def main(spec_path: str) -> int:
    torch.set_num_threads(1)
    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.dist import current, shutdown
    from prefopt.train.config import TrainConfig

    for job in json.loads(Path(spec_path).read_text()):
        cfg = from_dict(TrainConfig, job["config"])
        try:
            run_train(cfg)
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded for the test to read
            if "expect_error" not in job:
                raise
            outcome = f"{type(exc).__name__}: {exc}"
        if "expect_error" in job:
            Path(f"{job['expect_error']}.rank{current().rank}").write_text(outcome)
    shutdown()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1])
    # Every job's result is on disk by now. Skip the interpreter's teardown: on the rank whose job
    # failed it intermittently aborts in native code ("terminate called without an active
    # exception", SIGABRT) after the work is done, failing the launch (an open issue, see docs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
