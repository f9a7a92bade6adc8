"""Figures of a report: metric families over steps, reward vs KL, objective fronts, histograms.

Every function returns a matplotlib figure (Agg backend); runs keep one colour everywhere
(:func:`run_colors`). Non-finite values are left out of the drawing (the tables show them).
"""
from __future__ import annotations

import math

from prefopt.report.front import non_dominated

PANEL_W, PANEL_H, MAX_COLS = 3.5, 2.5, 4
MAX_STEP_LABELS = 24  # per run and panel: more would hide the points


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_colors(names: list[str]) -> dict[str, str]:
    """One colour per run, stable across every figure of a report."""
    plt = _plt()
    if len(names) <= 20:
        palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    else:  # many runs (e.g. a compare folder): evenly spaced, still one per run
        cmap = plt.get_cmap("turbo")
        palette = [cmap(i / (len(names) - 1))[:3] for i in range(len(names))]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _finite(points):
    return [p for p in points if all(isinstance(v, (int, float)) and math.isfinite(v) for v in p[:2])]


def _grid(n: int, width: float = PANEL_W, height: float = PANEL_H, max_cols: int = MAX_COLS):
    plt = _plt()
    cols = min(max_cols, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.4), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _plain_ticks(ax) -> None:
    """Tick labels with the value itself (4 significant digits), never an offset like '1e6' that
    collides with the panel title."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _legend(fig, colors: dict[str, str], used: list[str]) -> None:
    """Name the runs of a figure whenever the report has several (colours alone do not say)."""
    if not used or len(colors) < 2:
        return
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[n], lw=2, marker="o", ms=4) for n in used]
    fig.legend(handles, used, loc="upper center", ncol=min(len(used), 5), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0))


def family_figure(keys: list[str], series: dict[str, dict[str, list]], colors: dict[str, str],
                  *, markers: bool = False):
    """One panel per key, every run that logged it overlaid: ``series[run][key] = [(step, value)]``."""
    fig, axes = _grid(len(keys))
    used: list[str] = []
    n = len(series)
    for ax, key in zip(axes, keys):
        for i, (run, by_key) in enumerate(series.items()):
            points = _finite(by_key.get(key, []))
            if not points:
                continue
            xs, ys = zip(*points)
            # earlier runs drawn wider and below, so identical curves of two runs both show
            lw = 1.2 + 1.6 * (n - 1 - i) / max(1, n - 1)
            ax.plot(xs, ys, color=colors[run], lw=lw, zorder=2 + i, marker="o" if markers or len(xs) < 3 else None,
                    ms=3 + 2 * (n - 1 - i) / max(1, n - 1))
            if run not in used:
                used.append(run)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        _plain_ticks(ax)
    _legend(fig, colors, used)
    legend_in = 0.3 if used and len(colors) > 1 else 0.0  # room for the run legend above the panels
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_in / fig.get_size_inches()[1]))
    return fig


def _label_steps(ax, points, color) -> None:
    every = max(1, math.ceil(len(points) / MAX_STEP_LABELS))
    for i, p in enumerate(points):
        if len(p) > 2 and (i % every == 0 or i == len(points) - 1):
            ax.annotate(str(int(p[2])), (p[0], p[1]), textcoords="offset points", xytext=(4, 3), fontsize=7,
                        color=color)


def tradeoff(ax, curves: dict[str, list], colors: dict[str, str], maximize: tuple[bool, bool]) -> None:
    """Points ``(x, y[, step])`` per run, labelled by step; the non-dominated ones of all runs
    together are ringed and joined in x order (the front), never the points in step order."""
    everything = []
    for run, points in curves.items():
        points = _finite(points)
        if not points:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.scatter(xs, ys, s=18, color=colors[run], label=run, zorder=3)
        _label_steps(ax, points, colors[run])
        everything += points
    if len(everything) >= 2:
        front = [everything[i] for i in non_dominated([(p[0], p[1]) for p in everything], maximize)]
        ax.plot([p[0] for p in front], [p[1] for p in front], color="k", lw=0.8, ls="--", zorder=2,
                label="front (non-dominated)")
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=70, facecolors="none", edgecolors="k",
                   lw=1.0, zorder=4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def tradeoff_grid(panels: list[dict], colors: dict[str, str]):
    """One :func:`tradeoff` panel per dict ``{xlabel, ylabel, curves, maximize}``."""
    fig, axes = _grid(len(panels), width=5.8, height=4.0, max_cols=2)
    for ax, p in zip(axes, panels):
        tradeoff(ax, p["curves"], colors, p["maximize"])
        ax.set_xlabel(p["xlabel"], fontsize=8)
        ax.set_ylabel(p["ylabel"], fontsize=8)
        _plain_ticks(ax)
    fig.tight_layout()
    return fig


KL_LABEL = "KL(policy || reference), nats per sequence"


def reward_vs_kl(curves: dict[str, list], ylabel: str = "gold reward", colors: dict[str, str] | None = None):
    """Reward against KL to the reference: points ``(kl, reward[, step])`` per run, labelled by
    step; the front (least KL for the reward) is ringed."""
    return tradeoff_grid([{"xlabel": KL_LABEL, "ylabel": ylabel, "curves": curves, "maximize": (False, True)}],
                         colors or run_colors(list(curves)))


def reward_histograms(groups: dict[str, list[float]], xlabel: str, colors: dict[str, str] | None = None, ax=None):
    """Overlaid histograms of one score per group (e.g. policy), with each group's mean."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    groups = {k: [v for v in vals if math.isfinite(v)] for k, vals in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if groups:
        lo = min(min(v) for v in groups.values())
        hi = max(max(v) for v in groups.values())
        bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 10
        for name, values in groups.items():
            kw = {"color": colors[name]} if colors and name in colors else {}
            ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (mean {sum(values) / len(values):.3f})", **kw)
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("responses")
    ax.grid(alpha=0.3)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def score_histograms(scores: dict[str, dict[str, list[float]]], colors: dict[str, str] | None = None):
    """One panel per objective: ``scores[objective][policy] = values``."""
    fig, axes = _grid(len(scores))
    for ax, (objective, groups) in zip(axes, scores.items()):
        reward_histograms(groups, objective, colors, ax=ax)
        _plain_ticks(ax)
    fig.tight_layout()
    return fig
