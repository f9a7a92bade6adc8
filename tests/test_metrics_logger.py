"""MetricsLogger on resume: metrics.jsonl is cut back to the checkpoint, and TensorBoard hides the
events logged after it, so every step shows once, with the resumed run's values."""
from __future__ import annotations

from prefopt.train.metrics import MetricsLogger, read_metrics


def _tensorboard_scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_a_resumed_run_logs_every_step_once_in_jsonl_and_tensorboard(tmp_path):
    first = MetricsLogger(tmp_path, tensorboard=True)
    for step in range(1, 5):  # steps 3 and 4 ran after the checkpoint at step 2, then the run was killed
        first.log({"step": step, "loss": float(step)})
    first.close()

    resumed = MetricsLogger(tmp_path, tensorboard=True, resume=True)
    assert resumed.cut_back(None, 2) == 2
    for step in (3, 4):
        resumed.log({"step": step, "loss": 10.0 * step})
    resumed.close()

    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert _tensorboard_scalars(tmp_path, "loss") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
