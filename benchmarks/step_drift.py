"""Does a DPO step get slower, or the process bigger, as training goes on? (135M Llama, issue 14.)

The same 8 pairs every step (so every step does the same work), ``--steps`` steps of prefopt DPO
with a cached reference on the random 135M-parameter Llama of ``vs_trl_135m.py``; per step: the
step time, the current RSS (``/proc/self/statm``, after the step) and the RSS high-water mark.
A drift in time or current RSS with constant work would be a leak (allocator, caches kept alive);
a flat line says a run's varying step times come from its varying batches.

    .venv-bench/bin/python benchmarks/step_drift.py [--precision fp32|bf16-mixed] [--steps 12]
Writes runs/bench/step_drift.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
import vs_trl  # noqa: E402
import vs_trl_135m  # noqa: E402


def current_rss_mib() -> dict[str, float]:
    """Resident memory now: total, anonymous (heap: tensors, allocator caches) and file-backed
    (mapped libraries and files), from /proc/self/status."""
    fields = {"VmRSS": "rss_mib", "RssAnon": "anon_mib", "RssFile": "file_mib"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                out[fields[key]] = int(value.split()[0]) / 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="the tiny model of vs_trl.py --quick (smoke test)")
    ap.add_argument("--out", default="runs/bench/step_drift.json")
    args = ap.parse_args(argv)

    import torch

    import prefopt.cli.run as run_mod

    torch.set_num_threads(args.threads)
    s = dict(vs_trl_135m.QUICK if args.quick else vs_trl_135m.FULL, threads=args.threads, lr=5e-6, profile=False,
             steps=args.steps, precision=args.precision)
    work = Path(tempfile.mkdtemp(prefix="prefopt-step-drift-"))
    vs_trl.build_inputs(work, s)
    pairs = (work / "dpo.jsonl").read_text().splitlines()[: s["batch"]]
    (work / "dpo.jsonl").write_text("\n".join(pairs * args.steps) + "\n")  # one batch, repeated

    steps: list[dict] = []

    class StepLogger(run_mod.MetricsLogger):
        def log(self, record: dict) -> None:
            if "loss" in record and "time/step_s" in record:
                steps.append({"step": record["step"], "s": record["time/step_s"], **current_rss_mib(),
                              "peak_rss_mib": record["memory/peak_rss_mib"], "loss": record["loss"]})
                x = steps[-1]
                print(f"step {x['step']:3d}  {x['s']:7.2f} s  RSS {x['rss_mib']:7.0f} MiB (anon {x['anon_mib']:.0f}, "
                      f"file {x['file_mib']:.0f})  peak {x['peak_rss_mib']:7.0f} MiB  loss {x['loss']:.4f}", flush=True)
            super().log(record)

    os.environ["PREFOPT_CACHE"] = tempfile.mkdtemp(dir=work)
    cfg = vs_trl._prefopt_cfg(work, s, "drift")
    cfg.data.path, cfg.train.steps = str(work / "dpo.jsonl"), args.steps
    cfg.algo.name, cfg.algo.loss, cfg.algo.beta, cfg.algo.reference = "dpo", "dpo", 0.1, "precomputed"
    run_mod.MetricsLogger = StepLogger
    t0 = time.perf_counter()
    run_mod.run_train(cfg)
    later = steps[2:] or steps  # the optimizer state and gradients appear during the first steps
    report = {"settings": s, "steps": steps, "wall_s": time.perf_counter() - t0,
              "step_s_first_later": [steps[0]["s"], later[0]["s"], later[-1]["s"]],
              "rss_mib_min_max_after_step_2": [min(x["rss_mib"] for x in later), max(x["rss_mib"] for x in later)],
              "command": " ".join(["python", "benchmarks/step_drift.py", *(sys.argv[1:] if argv is None else argv)]),
              "load_avg_end": os.getloadavg()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
