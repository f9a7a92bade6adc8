"""``prefopt report RUN_DIR [RUN_DIR ...]``: one HTML page (and its PNGs) for any runs.

The page is ``<out>/report.html``; figures are PNG files in ``<out>/report_files/`` referenced by
relative paths, or base64 inside the page with ``inline``. Nothing is fetched from the network.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefopt.errors import ConfigError
from prefopt.report.data import load_sources
from prefopt.report.html import Figures, page, write_text_atomic
from prefopt.report.plots import run_colors
from prefopt.report.sections import Context, build_sections

PAGE = "report.html"
FILES = "report_files"


@dataclass
class ReportConfig:
    """Options of ``prefopt report RUN_DIR [RUN_DIR ...]``: one HTML page (and its PNGs) of the runs,
    side by side when there are several."""

    out: str | None = field(default=None, metadata={"help": (
        "Folder of report.html and report_files/ (default: the RUN_DIR when one is given, "
        "else runs/report-<timestamp>).")})
    title: str | None = field(default=None, metadata={"help": "Page title (default: the run names)."})
    inline: bool = field(default=False, metadata={"help": (
        "Embed the figures in the page as base64 instead of PNG files beside it (one file to share).")})
    max_samples: int = field(default=8, metadata={"help": "Prompts shown in the before/after samples table."})


def default_out(run_dirs: list[Path]) -> Path:
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    return Path("runs") / f"report-{time.strftime('%Y%m%d-%H%M%S')}"


def build_report(run_dirs: list[Path], cfg: ReportConfig | None = None) -> Path:
    """Read ``run_dirs``, write the report, return the path of ``report.html``."""
    cfg = cfg or ReportConfig()
    if cfg.max_samples < 0:
        raise ConfigError(f"report max_samples: got {cfg.max_samples}, expected >= 0")
    run_dirs = [Path(p) for p in run_dirs]
    sources = load_sources(run_dirs)
    runs = [r for s in sources for r in s.runs]
    out = Path(cfg.out) if cfg.out else default_out(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    # Figures go to a fresh folder that replaces report_files/ once the page is complete.
    staging = None if cfg.inline else Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        figures = Figures(staging, FILES, inline=cfg.inline)
        ctx = Context(sources, runs, run_colors([r.name for r in runs]), figures, cfg.max_samples)
        sections = build_sections(ctx)
        title = cfg.title or "prefopt report: " + _names([r.name for r in runs])
        subtitle = (f"{len(runs)} run{'s' if len(runs) > 1 else ''} from "
                    f"{', '.join(str(p) for p in run_dirs)}; generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        html = page(title, subtitle, sections)
        if staging is not None:
            files = out / FILES
            if files.exists():
                shutil.rmtree(files)
            staging.rename(files)
            staging = None
        return write_text_atomic(out / PAGE, html)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
