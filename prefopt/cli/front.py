"""``prefopt front CONFIG [key=value ...]``: sweep preference vectors over a simplex grid for one
method (soups, modpo, ric, morlhf), evaluate each on held-out prompts on every objective, and
write ``front.json``, ``front.png`` and ``report.html`` to the output directory.

The sweep resumes: points already in ``front.json`` are not recomputed, finished trainings
(``trained.json`` in their run directories) are reused. Bad input (weights off the simplex, an
objective the scorers do not provide, a base config the method cannot sweep, a reference point
the front does not dominate) fails with one line before any training.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from prefopt.errors import ConfigError

FRONT_FILE = "front.json"


@dataclass
class FrontConfig:
    """``prefopt front CONFIG``: which method, which base training, which grid, how to evaluate."""

    method: Literal["soups", "modpo", "ric", "morlhf"] = field(default="morlhf", metadata={"help": (
        "soups: N single-objective runs, then weight interpolation; modpo: one MODPO run per vector; ric: one "
        "rewards-in-context model prompted per vector; morlhf: one online run per vector on Σ w_i r_i.")})
    train_config: str = field(default="", metadata={"help": (
        "YAML of the base `prefopt train` config (online algorithm for morlhf/soups, algo.name modpo / ric).")})
    train_overrides: list[str] = field(default_factory=list, metadata={"help": (
        "key=value overrides of the base train config, e.g. ['train.steps=20'].")})
    objectives: list[str] = field(default_factory=list, metadata={"help": (
        "Objectives of the preference vectors, in weight order (modpo: the pairs' preference first); "
        "default all gold objectives of the task.")})
    grid: int = field(default=4, metadata={"help": "Simplex grid resolution n: weights k/n (C(n+m-1, m-1) vectors).",
                                           "min": 1})
    weights: list[list[float]] = field(default_factory=list, metadata={"help": (
        "Explicit preference vectors instead of the grid (each on the simplex).")})
    reward: str = field(default="gold", metadata={"help": (
        "Scorer whose named components the morlhf / soup-member rewards weight (as online.reward names).")})
    soup_members: list[str] = field(default_factory=list, metadata={"help": (
        "soups: saved policies, one per objective, instead of training them from train_config.")})
    eval_scorers: list[str] = field(default_factory=list, metadata={"help": (
        "Scorers of the evaluation (online.reward names); default the task's gold objectives.")})
    eval_prompts: int = field(default=64, metadata={"help": "Held-out prompts of the task's eval split.", "min": 1})
    eval_samples: int = field(default=2, metadata={"help": "Samples per held-out prompt.", "min": 1})
    eval_seed: int = field(default=1234, metadata={"help": "Seed of the held-out prompts and of their sampling."})
    max_new_tokens: int = field(default=40, metadata={"help": "Longest sampled response.", "min": 1})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the evaluation.", "min": 0})
    reference: list[float] | None = field(default=None, metadata={"help": (
        "Hypervolume reference point (one value per objective, below every point); default 0.1 of each "
        "range below the worst point.")})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar over the sweep."})

    def validate(self, prefix: str = "") -> None:
        if not self.train_config:
            raise ConfigError(f"{prefix}train_config: give the base `prefopt train` YAML of the sweep (its data.task "
                              "gives the held-out prompts)")


@dataclass
class FrontContext:
    """What the methods share: the config, the base train config (a dict), the task, objectives,
    tokenizer, evaluation scorer and the output directory."""

    cfg: FrontConfig
    base: dict
    task: object
    objectives: list[str]
    tokenizer: object
    scorer: object
    out: Path


def _base_config(cfg: FrontConfig) -> dict:
    from prefopt.cli.config import apply_override, from_dict
    from prefopt.train.config import TrainConfig

    data: dict = {}
    if cfg.train_config:
        path = Path(cfg.train_config)
        if not path.exists():
            raise ConfigError(f"train_config: file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
    for o in cfg.train_overrides:
        apply_override(data, o)
    from_dict(TrainConfig, copy.deepcopy(data))  # the base itself must be a valid train config
    return data


def _context(cfg: FrontConfig, out: Path) -> FrontContext:
    from prefopt.cli.run import resolve_tokenizer
    from prefopt.cli.config import from_dict
    from prefopt.eval.front import ObjectiveScorer
    from prefopt.tasks import get_task
    from prefopt.train.config import TrainConfig

    base = _base_config(cfg)
    train_cfg = from_dict(TrainConfig, copy.deepcopy(base))
    task = get_task(train_cfg.data.task, **train_cfg.data.task_options) if train_cfg.data.task else None
    if task is None:
        raise ConfigError("front: the held-out prompts come from a lab task; set data.task in the train config")
    scorer = ObjectiveScorer(task, cfg.eval_scorers)
    available = scorer.available(task.prompts("eval", 1, seed=cfg.eval_seed)[0])
    objectives = list(cfg.objectives) or available
    missing = [o for o in objectives if o not in available]
    if missing:
        raise ConfigError(f"objectives: unknown objective(s) {missing} (available: {', '.join(available)})")
    if len(objectives) < 2:
        raise ConfigError(f"objectives: a front needs at least two objectives, got {objectives}")
    if cfg.reference is not None and len(cfg.reference) != len(objectives):
        raise ConfigError(f"reference: {cfg.reference} has {len(cfg.reference)} values for {len(objectives)} "
                          f"objectives ({', '.join(objectives)})")
    tokenizer = resolve_tokenizer(train_cfg)
    return FrontContext(cfg, base, task, objectives, tokenizer, scorer, out)


def sweep_weights(cfg: FrontConfig, m: int) -> list[tuple[float, ...]]:
    from prefopt.objectives.front import simplex_grid
    from prefopt.objectives.scalarize import check_simplex

    if not cfg.weights:
        return simplex_grid(m, cfg.grid)
    for i, w in enumerate(cfg.weights):
        if len(w) != m:
            raise ConfigError(f"weights[{i}]: {w} has {len(w)} values for {m} objectives")
        check_simplex(w, key=f"weights[{i}]")
    return [tuple(float(x) for x in w) for w in cfg.weights]


def _open_front(ctx: FrontContext, path: Path):
    from prefopt.objectives.front import Front

    if path.exists():
        front = Front.load(path)
        if front.method != ctx.cfg.method or list(front.objectives) != ctx.objectives:
            raise ConfigError(f"{path}: holds a {front.method} front over {list(front.objectives)}; this sweep is "
                              f"{ctx.cfg.method} over {ctx.objectives} (use another --out)")
        if ctx.cfg.reference is not None:
            front.refresh(ctx.cfg.reference)  # a configured reference the saved points do not dominate fails here
        return front
    return Front(ctx.cfg.method, ctx.objectives, reference=ctx.cfg.reference)


def run_front(cfg: FrontConfig, out: Path | None = None, log=print) -> dict:
    """Run (or resume) the sweep; returns front.json's content."""
    from tqdm.auto import tqdm

    from prefopt.cli.front_methods import METHODS, weights_label
    out = Path(out or Path("runs") / f"front-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    ctx = _context(cfg, out)
    method = METHODS[cfg.method](ctx)
    method.check()
    grid = method.grid(sweep_weights(cfg, len(ctx.objectives)))
    if not grid:
        raise ConfigError(f"front: no preference vector left to sweep for {cfg.method} (grid {cfg.grid})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "front_config.yaml").write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
    path = out / FRONT_FILE
    front = _open_front(ctx, path)
    front.shared_cost = method.prepare()  # finished shared trainings are reused, their cost re-read
    pending = front.pending(grid)
    bar = tqdm(total=len(grid), initial=len(grid) - len(pending), desc=f"front {cfg.method}", unit="point",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        for weights in pending:
            point_dir = out / "points" / weights_label(weights)
            front.add(_evaluate_point(ctx, method.point(weights, point_dir), weights, point_dir))
            front.save(path)
            front.refresh()
            front.save(path)
            bar.update(1)
    finally:
        bar.close()
    front.refresh()
    front.save(path)
    _write_outputs(front, out)
    log(f"front: {len(front.points)} points, hypervolume {front.hypervolume:.4g} (reference "
        f"{[round(r, 4) for r in front.reference]}), total cost {front.total_cost()}; wrote {out}")
    return front.to_dict()


def _evaluate_point(ctx: FrontContext, policy, weights, point_dir: Path):
    from prefopt.eval.front import evaluate_policy
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.objectives.front import FrontPoint
    from prefopt.rollout.engine import SamplingConfig

    cfg = ctx.cfg
    model = load_model(ModelConfig(name_or_path=policy.model), ctx.tokenizer)
    prompts = ctx.task.prompts("eval", cfg.eval_prompts, seed=cfg.eval_seed)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              num_samples=cfg.eval_samples, seed=cfg.eval_seed, batch_size=256)
    result = evaluate_policy(model, ctx.tokenizer, prompts, ctx.scorer, sampling, policy.condition)
    return FrontPoint.from_scores(weights, result.scores, list(result.scores), policy.cost, label=str(point_dir))


def _plain(cfg: FrontConfig) -> dict:
    from prefopt.cli.config import to_dict
    return to_dict(cfg)


def _write_outputs(front, out: Path) -> None:
    from prefopt.report.front_plot import plot_fronts
    from prefopt.report.front_report import write_front_report

    fig = plot_fronts([front], out / "front.png", title=f"{front.method} front")
    write_front_report(front, out / "report.html", fig)
