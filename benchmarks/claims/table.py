"""Markdown rows for docs/claims.md from claim reports (the JSON every claim script writes).

    python benchmarks/claims/table.py runs/claims/*/*.json

One summary row per claim (claim, source, command, the deciding figures as mean ± SE, verdict),
then one table per claim with every arm and metric.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import arms_markdown  # noqa: E402


def _arms_table(report: dict) -> list[str]:
    m = report["machine"]
    return [*arms_markdown(report), "",
            f"Seeds {report['seeds']}; wall {report['wall_s']:.0f} s, CPU {report['cpu_s']:.0f} s (this process and "
            f"its children); load average {m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f} on "
            f"{m['cpu_count']} cores; commit {m['git_commit'][:10]}{' (dirty)' if m['git_dirty'] else ''}."]


def main(paths: list[str]) -> int:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    print("| claim | source | command | verdict | why |")
    print("|---|---|---|---|---|")
    for r in reports:
        print(f"| {r['statement']} | {r['source']} | `{r['command']}` | **{r['verdict']}** | {r['why']} |")
    for r in reports:
        print(f"\n### {r['claim']}\n")
        print("\n".join(_arms_table(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
