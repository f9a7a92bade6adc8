"""The HTML report of a front sweep: the plot, the points (weights, means ± standard error,
non-dominated flag, cost) and the hypervolume with its reference point and the total cost."""
from __future__ import annotations

from pathlib import Path

from prefopt.objectives.front import Front
from prefopt.report.html import Figures, esc, page, table_html, write_text_atomic


def _mean_se(point, objective: str) -> str:
    se = point.stderr.get(objective)
    return f"{point.means[objective]:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def point_rows(front: Front) -> list[dict]:
    evaluated = [o for o in front.points[0].means] if front.points else []
    rows = []
    for p in sorted(front.points, key=lambda p: p.weights):
        row = {"weights": "(" + ", ".join(f"{w:.3g}" for w in p.weights) + ")"}
        row.update({o: _mean_se(p, o) for o in evaluated})
        row.update({"non-dominated": "yes" if p.nondominated else "", "n": p.n,
                    "gradient steps": p.cost.gradient_steps, "sampled tokens": p.cost.sampled_tokens,
                    "train seconds": p.cost.wall_seconds})
        rows.append(row)
    return rows


def write_front_report(front: Front, path: str | Path, figure) -> Path:
    total, shared = front.total_cost(), front.shared_cost
    hv = "n/a" if front.hypervolume is None else f"{front.hypervolume:.4g}"
    ref = [round(r, 4) for r in front.reference] if front.reference is not None else None
    summary = (f"<p>Method <b>{esc(front.method)}</b> over {esc(', '.join(front.objectives))}: {len(front.points)} "
               f"points, hypervolume <b>{hv}</b> at reference point {ref} ({esc(front.reference_source)}).</p>"
               f"<p>Shared cost (trainings all points use): {shared.gradient_steps} gradient steps, "
               f"{shared.sampled_tokens} sampled tokens, {shared.wall_seconds:.1f} s. Total cost: "
               f"{total.gradient_steps} gradient steps, {total.sampled_tokens} sampled tokens, "
               f"{total.wall_seconds:.1f} s wall, {total.cpu_seconds:.1f} s CPU.</p>")
    plot = Figures(None, inline=True).img(figure, "front", f"{front.method} front")
    return write_text_atomic(Path(path), page(f"prefopt front: {front.method}", "held-out means ± standard error", [
        ("summary", "Summary", summary), ("front", "Front", plot),
        ("points", "Points", table_html(point_rows(front)))]))
