"""Plots people would rather look at than read: training curves, reward distributions, reward vs KL."""
from __future__ import annotations


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def training_curves(series: dict[str, list[tuple[float, float]]], title: str = "training"):
    """One panel per named series of (step, value) points."""
    plt = _plt()
    n = max(1, len(series))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3), squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, lw=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def reward_histograms(groups: dict[str, list[float]], xlabel: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lo = min(min(v) for v in groups.values())
    hi = max(max(v) for v in groups.values())
    bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 10
    for name, values in groups.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (mean {sum(values) / len(values):.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("responses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def reward_vs_kl(curves: dict[str, list[tuple[float, float]]], ylabel: str = "gold reward"):
    """One line per run of (KL to reference, gold reward) points, in training order."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=name)
    ax.set_xlabel("KL(policy || reference), nats per sequence")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
