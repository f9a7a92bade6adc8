"""Pareto-front plots: one panel for two objectives, one panel per pair of objectives for more
(three panels for three). Non-dominated points are filled and joined (2-D), dominated ones hollow;
error bars are ± one standard error; each point is labelled with its weights."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Sequence

from prefopt.objectives.front import Front

_MAX_LABELLED = 12  # more weight labels than this per panel would hide the points


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _weights_label(weights: Sequence[float]) -> str:
    return "(" + ", ".join(f"{w:.2g}" for w in weights) + ")"


def _panel(ax, fronts: Sequence[Front], i: int, j: int, join: bool) -> None:
    for index, front in enumerate(fronts):
        color = f"C{index}"
        pts = front.points
        xs, ys = [p.means[front.objectives[i]] for p in pts], [p.means[front.objectives[j]] for p in pts]
        xerr = [p.stderr[front.objectives[i]] or 0.0 for p in pts]
        yerr = [p.stderr[front.objectives[j]] or 0.0 for p in pts]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=0.5, lw=0.8)
        best = [k for k, p in enumerate(pts) if p.nondominated]
        rest = [k for k, p in enumerate(pts) if not p.nondominated]
        hv = f", HV {front.hypervolume:.3g}" if front.hypervolume is not None else ""
        ax.scatter([xs[k] for k in best], [ys[k] for k in best], color=color, s=28, label=f"{front.method}{hv}")
        ax.scatter([xs[k] for k in rest], [ys[k] for k in rest], facecolors="none", edgecolors=color, s=28)
        if join and len(best) > 1:
            line = sorted((xs[k], ys[k]) for k in best)
            ax.plot([x for x, _ in line], [y for _, y in line], color=color, lw=1.0, alpha=0.8)
        if len(pts) <= _MAX_LABELLED:
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(_weights_label(p.weights), (x, y), fontsize=6, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(fronts[0].objectives[i])
    ax.set_ylabel(fronts[0].objectives[j])
    ax.grid(alpha=0.3)


def plot_fronts(fronts: Sequence[Front], path: str | Path | None = None, title: str = "Pareto front"):
    """The fronts of one or more methods over the same objectives; saved as PNG when ``path`` is given."""
    if not fronts:
        raise ValueError("plot_fronts: no fronts")
    objectives = fronts[0].objectives
    if any(f.objectives != objectives for f in fronts):
        raise ValueError(f"plot_fronts: fronts over different objectives {sorted({f.objectives for f in fronts})}")
    if len(objectives) < 2:
        raise ValueError(f"plot_fronts: a front needs at least two objectives, got {list(objectives)}")
    pairs = list(combinations(range(len(objectives)), 2))
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (i, j) in zip(axes.flat, pairs):
        _panel(ax, fronts, i, j, join=len(objectives) == 2)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
