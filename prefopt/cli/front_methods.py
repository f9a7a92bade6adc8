"""The four ways ``prefopt front`` turns a preference vector into a policy to evaluate.

- ``morlhf``: one online run per w on the reward ``Σ w_i r_i`` (``online.reward`` weights).
- ``modpo``: one MODPO run per w (objective 0 = the pairs' preference, the rest margins).
- ``soups``: N single-objective online runs from one start (shared), then ``θ(w) = Σ w_i θ_i``.
- ``ric``: one rewards-in-context model (shared, optional online rounds), prompted with the
  targets of w.

Every training runs through ``run_train`` in its own directory and leaves ``trained.json`` (model
path, cost) when it finishes, so a resumed sweep reuses it instead of training again.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from prefopt.errors import ConfigError
from prefopt.objectives.front import Cost

TRAINED_FILE = "trained.json"


@dataclass
class Trained:
    model: str
    cost: Cost


def _set(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def sampled_tokens(run_dir: Path) -> int:
    """Tokens sampled from the policy during training (``rollout/gen_tokens`` summed over steps)."""
    from prefopt.train.metrics import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    return int(sum(m.get("rollout/gen_tokens", 0) for m in read_metrics(path)))


def train_once(base: dict, updates: dict, run_dir: Path) -> Trained:
    """Train ``base`` (a TrainConfig dict) with dotted ``updates`` in ``run_dir``; reuse a finished run."""
    from prefopt.cli.config import from_dict
    from prefopt.cli.run import run_train
    from prefopt.train.config import TrainConfig

    run_dir = Path(run_dir)
    done = run_dir / TRAINED_FILE
    if done.exists():
        info = json.loads(done.read_text())
        return Trained(info["model"], Cost(**info["cost"]))
    data = copy.deepcopy(base)
    for key, value in updates.items():
        _set(data, key, value)
    _set(data, "train.progress", False)
    cfg = from_dict(TrainConfig, data)
    # a training interrupted earlier continues from its newest checkpoint, or restarts when it has none
    resume = run_dir.exists() and any(run_dir.glob("checkpoint-*"))
    overwrite = not resume and run_dir.exists() and any(run_dir.iterdir())
    cpu0 = time.process_time()
    out = run_train(cfg, run_dir=run_dir, resume=resume, overwrite=overwrite)
    cpu = round(time.process_time() - cpu0, 2)
    merged = run_dir / "merged"
    model = merged if merged.exists() else out.result.final_checkpoint / "model"
    trained = Trained(str(model), Cost(out.result.steps, sampled_tokens(run_dir), round(out.result.seconds, 2), cpu))
    done.write_text(json.dumps({"model": trained.model, "cost": asdict(trained.cost)}, indent=2) + "\n")
    return trained


def reward_updates(reward: str, objectives: Sequence[str], weights: Sequence[float]) -> dict:
    """``online.reward`` of linear scalarization: one scorer, its components weighted by w."""
    return {"online.reward": [{"name": reward, "weights": {o: float(w) for o, w in zip(objectives, weights)}}]}


def weights_label(weights: Sequence[float]) -> str:
    return "w-" + "-".join(f"{w:.3f}" for w in weights)


@dataclass
class PointPolicy:
    """What a grid point evaluates: a saved model, its own training cost, an optional prompt rewrite."""

    model: str
    cost: Cost
    condition: Callable | None = None


class Method:
    """Shared preparation (``prepare`` → the shared cost) and one policy per preference vector."""

    name = ""

    def __init__(self, ctx):
        self.ctx = ctx

    def check(self) -> None:
        """Refuse a base config this method cannot sweep, before any work."""

    def grid(self, grid: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
        return grid

    def prepare(self) -> Cost:
        return Cost()

    def point(self, weights: tuple[float, ...], point_dir: Path) -> PointPolicy:
        raise NotImplementedError


def _require_online(ctx, method: str) -> None:
    from prefopt.train.presets import PRESETS

    name = ctx.base.get("algo", {}).get("name", "dpo")
    if name not in PRESETS or not PRESETS[name].online:
        online = ", ".join(n for n, p in PRESETS.items() if p.online)
        raise ConfigError(f"front method '{method}': train_config algo.name '{name}' is not an online algorithm "
                          f"(expected one of {online})")


class MORLHF(Method):
    name = "morlhf"

    def check(self) -> None:
        _require_online(self.ctx, self.name)

    def point(self, weights, point_dir):
        t = train_once(self.ctx.base, reward_updates(self.ctx.cfg.reward, self.ctx.objectives, weights),
                       point_dir / "train")
        return PointPolicy(t.model, t.cost)


class MODPO(Method):
    name = "modpo"

    def check(self) -> None:
        name = self.ctx.base.get("algo", {}).get("name")
        if name != "modpo":
            raise ConfigError(f"front method 'modpo': train_config algo.name is '{name}', expected 'modpo'")
        margins = self.ctx.base.get("modpo", {}).get("margins") or []
        if margins and len(margins) != len(self.ctx.objectives) - 1:
            raise ConfigError(f"front method 'modpo': modpo.margins has {len(margins)} source(s) for objectives "
                              f"{self.ctx.objectives}; expected one per objective after the first")

    def margins(self) -> list[str]:
        return self.ctx.base.get("modpo", {}).get("margins") or [f"scores:{o}" for o in self.ctx.objectives[1:]]

    def grid(self, grid):
        from prefopt.losses.modpo import MIN_PREFERENCE_WEIGHT
        return [w for w in grid if w[0] >= MIN_PREFERENCE_WEIGHT]  # the loss divides by w0

    def point(self, weights, point_dir):
        t = train_once(self.ctx.base, {"modpo.weights": list(weights), "modpo.margins": self.margins()},
                       point_dir / "train")
        return PointPolicy(t.model, t.cost)


class Soups(Method):
    name = "soups"

    def check(self) -> None:
        members = self.ctx.cfg.soup_members
        if members:
            if len(members) != len(self.ctx.objectives):
                raise ConfigError(f"front soup_members: got {len(members)} policies for {len(self.ctx.objectives)} "
                                  f"objectives ({', '.join(self.ctx.objectives)}); expected one per objective")
            return
        _require_online(self.ctx, self.name)

    def prepare(self) -> Cost:
        if self.ctx.cfg.soup_members:
            self.members = list(self.ctx.cfg.soup_members)
            return Cost()
        total, self.members = Cost(), []
        m = len(self.ctx.objectives)
        for i, objective in enumerate(self.ctx.objectives):
            one_hot = [1.0 if j == i else 0.0 for j in range(m)]
            t = train_once(self.ctx.base, reward_updates(self.ctx.cfg.reward, self.ctx.objectives, one_hot),
                           self.ctx.out / "shared" / f"member-{objective}")
            self.members.append(t.model)
            total = total + t.cost
        return total

    def point(self, weights, point_dir):
        from prefopt.objectives.soups import soup_dirs

        out = point_dir / "soup"
        if not (out / "soup.json").exists():
            soup_dirs(self.members, weights, out)
        return PointPolicy(str(out), Cost())


class RiC(Method):
    name = "ric"

    def check(self) -> None:
        name = self.ctx.base.get("algo", {}).get("name")
        if name != "ric":
            raise ConfigError(f"front method 'ric': train_config algo.name is '{name}', expected 'ric'")

    def prepare(self) -> Cost:
        from prefopt.cli.front_ric import train_ric
        self.model, self.stats, self.mapping, cost = train_ric(self.ctx)
        return cost

    def point(self, weights, point_dir):
        from prefopt.objectives.ric import condition_prompt, targets_for_preference

        targets = targets_for_preference(weights, self.stats, self.mapping)
        from prefopt.cli.front_ric import ric_section
        split = ric_section(self.ctx).response_split
        return PointPolicy(self.model, Cost(), lambda p: condition_prompt(p, targets, response_split=split))


METHODS: dict[str, type[Method]] = {m.name: m for m in (Soups, MODPO, RiC, MORLHF)}
