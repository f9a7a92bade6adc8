"""The software and machine a run ran on, recorded as ``environment.json`` beside its metrics."""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from prefopt.report.data import ENVIRONMENT_FILE

# The libraries whose versions change results or speed (read from package metadata: no imports).
PACKAGES = ("prefopt", "torch", "transformers", "tokenizers", "safetensors", "peft", "datasets",
            "bitsandbytes", "numpy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict:
    """Python, library versions, CPU, cores and torch threads (torch only when already imported)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {"python": platform.python_version(), "platform": platform.platform(), **versions,
            "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def write_environment(run_dir: Path) -> Path:
    path = Path(run_dir) / ENVIRONMENT_FILE
    path.write_text(json.dumps(environment_info(), indent=2), encoding="utf-8")
    return path
