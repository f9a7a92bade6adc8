"""Settings of the policy-gradient family, resolved from the presets table and ``online.*``."""
from __future__ import annotations

from dataclasses import dataclass

from prefopt.errors import ConfigError
from prefopt.losses.rl import GROUP_ESTIMATORS
from prefopt.train.presets import PRESETS, names

PG_ALGORITHMS = names("policy_gradient")


@dataclass
class PGSettings:
    """Every knob of :class:`PolicyGradient`, resolved (no ``None``)."""

    estimator: str = "rloo"
    num_generations: int = 4
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_in_reward: bool = True
    kl_target: float | None = None
    kl_horizon: float = 10000.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_aggregation: str = "token_mean"
    normalize_std: bool = True
    dynamic_sampling: bool = False
    max_resample: int = 4
    whiten_advantages: bool = False
    recompute_logprobs: bool = False
    value_head: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    vf_clip: float | None = 0.2
    prompts_per_step: int = 16
    epochs: int = 1
    minibatches: int = 1


def resolve_settings(name: str, online) -> PGSettings:
    """Merge an ``OnlineConfig`` over the defaults of algorithm ``name``; check combinations."""
    if name not in PG_ALGORITHMS:
        raise ConfigError(f"algo.name: '{name}' is not a policy-gradient algorithm ({', '.join(PG_ALGORITHMS)})")
    d = dict(PRESETS[name].defaults)
    for key in ("num_generations", "kl_coef", "kl_in_reward", "loss_aggregation", "normalize_std",
                "dynamic_sampling", "whiten_advantages", "recompute_logprobs", "clip_high"):
        value = getattr(online, key)
        if value is not None:
            d[key] = value
    d.setdefault("clip_high", online.clip_low)
    kl_in_reward = d.get("kl_in_reward", True)
    estimator = online.kl_estimator or ("k1" if kl_in_reward else "k3")
    s = PGSettings(
        estimator=d["estimator"], num_generations=int(d["num_generations"]), kl_coef=float(d["kl_coef"]),
        kl_estimator=estimator, kl_in_reward=bool(kl_in_reward), kl_target=online.kl_target,
        kl_horizon=online.kl_horizon, clip_low=online.clip_low, clip_high=float(d["clip_high"]),
        loss_aggregation=d.get("loss_aggregation", "token_mean"), normalize_std=d.get("normalize_std", True),
        dynamic_sampling=d.get("dynamic_sampling", False), max_resample=online.max_resample,
        whiten_advantages=d.get("whiten_advantages", d["estimator"] in ("gae",)),
        recompute_logprobs=d.get("recompute_logprobs", False), value_head=d.get("value_head", False),
        gamma=online.gamma, lam=online.lam, vf_coef=online.vf_coef, vf_clip=online.vf_clip,
        prompts_per_step=online.prompts_per_step, epochs=online.epochs, minibatches=online.minibatches)
    if s.estimator in GROUP_ESTIMATORS and s.num_generations < 2:
        raise ConfigError(f"online.num_generations: {name} compares the samples of a prompt, it needs >= 2 "
                          f"(got {s.num_generations})")
    if s.dynamic_sampling and s.estimator not in GROUP_ESTIMATORS:
        raise ConfigError(f"online.dynamic_sampling: only for group estimators (rloo, grpo family), not {name}")
    if s.kl_target is not None and s.kl_coef <= 0:
        raise ConfigError("online.kl_target: the adaptive KL controller needs online.kl_coef > 0 to start from")
    if s.minibatches > s.prompts_per_step * s.num_generations:
        raise ConfigError(f"online.minibatches ({s.minibatches}) exceeds the rollout batch "
                          f"({s.prompts_per_step} prompts x {s.num_generations} samples)")
    return s
