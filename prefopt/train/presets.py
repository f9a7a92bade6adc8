"""The one table of algorithm presets: every ``algo.name``, its family (which builder expands it
to a recipe), its defaults, a one-line summary and the config sections it reads.

Name lists, ``algo.name``'s help text and the section check (a config that sets a section the
chosen algorithm ignores is an error) are generated from :data:`PRESETS`, never repeated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefopt.errors import ConfigError

BASE_SECTIONS = ("model", "data", "optim", "train", "algo", "lora", "dist")
ONLINE_SECTIONS = BASE_SECTIONS + ("perf", "rollout", "online")
SELFPLAY_SECTIONS = ONLINE_SECTIONS + ("selfplay", "hedge")


@dataclass(frozen=True)
class Preset:
    """One ``algo.name``. ``defaults``: settings the family resolves under the user's config
    (policy gradient: estimator, num_generations, kl_coef, ...). ``sections``: the top-level
    config sections the algorithm reads."""

    name: str
    family: str
    summary: str
    sections: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    online: bool = False


def _pg(name: str, summary: str, **defaults) -> Preset:
    return Preset(name, "policy_gradient", summary, ONLINE_SECTIONS + ("mix", "hedge"), defaults, online=True)


_TABLE = [
    Preset("sft", "sft", "supervised fine-tuning, completion-only NLL", BASE_SECTIONS + ("perf",)),
    Preset("dpo", "pairwise", "any pairwise preference loss (algo.loss) on a fixed dataset", BASE_SECTIONS + ("perf",)),
    Preset("kto", "kto", "KTO on unpaired binary feedback (pairs are split)", BASE_SECTIONS),
    Preset("reward_model", "reward_model", "Bradley-Terry reward model or ensemble", BASE_SECTIONS + ("reward",)),
    _pg("rloo", "leave-one-out baseline, KL in the reward",
        estimator="rloo", num_generations=4, kl_coef=0.05, kl_in_reward=True),
    _pg("grpo", "group-normalized advantages, β·KL(k3) loss term",
        estimator="grpo", num_generations=4, kl_coef=0.04, kl_in_reward=False, loss_aggregation="seq_mean_token_mean"),
    _pg("dr_grpo", "GRPO without std normalization, constant-length token sum",
        estimator="grpo", num_generations=4, kl_coef=0.0, kl_in_reward=False,
        loss_aggregation="seq_mean_token_sum", normalize_std=False),
    _pg("dapo", "clip-higher, token mean, dynamic sampling",
        estimator="grpo", num_generations=4, kl_coef=0.0, kl_in_reward=False, clip_high=0.28, dynamic_sampling=True),
    _pg("remax", "greedy-response baseline", estimator="remax", num_generations=1, kl_coef=0.05, kl_in_reward=True),
    _pg("reinforce_pp", "whitened returns-to-go", estimator="reinforce_pp", num_generations=4, kl_coef=0.05,
        kl_in_reward=True),
    _pg("ppo", "value head, GAE, clipped policy and value losses",
        estimator="gae", num_generations=1, kl_coef=0.05, kl_in_reward=True, whiten_advantages=True,
        recompute_logprobs=True, value_head=True),
    Preset("online_dpo", "online_dpo", "two fresh samples per prompt, labelled, any pairwise loss",
           ONLINE_SECTIONS + ("mix", "hedge"), online=True),
    Preset("iterative_dpo", "iterative_dpo", "rounds of best-vs-worst pairs, reference := policy",
           ONLINE_SECTIONS + ("hedge",), {"num_generations": 4}, online=True),
    Preset("raft", "raft", "rounds of SFT on each prompt's best sample", ONLINE_SECTIONS, {"num_generations": 4},
           online=True),
    Preset("hypo", "hypo", "pairwise loss on offline pairs + λ·online reverse KL on fresh samples (HyPO)",
           BASE_SECTIONS + ("perf", "rollout", "hypo")),
    Preset("drpo", "drpo", "dataset resets: rollouts from prompt + offline-response prefixes, ppo/rloo/grpo",
           ONLINE_SECTIONS + ("reset",), online=True),
    Preset("recipe", "recipe", "sources × weighted terms written in YAML (the recipe section)",
           ONLINE_SECTIONS + ("recipe", "reward")),
    Preset("modpo", "modpo", "DPO on one preference, the other objectives' rewards as margins (MODPO)",
           BASE_SECTIONS + ("perf", "modpo")),
    Preset("ric", "ric", "rewards-in-context: SFT on prompts carrying each response's target scores",
           BASE_SECTIONS + ("perf", "ric")),
    # self-play / Nash (general preferences; docs/selfplay.md)
    Preset("sppo", "selfplay", "rounds: K samples, win-rate matrix, SPPO square loss, reference := previous iterate",
           SELFPLAY_SECTIONS, {"num_generations": 4}, online=True),
    Preset("inpo", "selfplay", "rounds: judged pairs, INPO mirror-descent loss vs fixed reference and previous iterate",
           SELFPLAY_SECTIONS, {"num_generations": 4}, online=True),
    Preset("dno", "selfplay", "rounds: K samples ranked by win rate, large-margin pairs, DPO vs previous iterate",
           SELFPLAY_SECTIONS, {"num_generations": 4}, online=True),
    Preset("selm", "selfplay", "rounds: best-vs-worst pairs, DPO + αβ·Δ(y_ref) optimism, reference := previous iterate",
           SELFPLAY_SECTIONS, {"num_generations": 4}, online=True),
    Preset("online_ipo", "egpo", "fresh pairs from the geometric mixture π_θ/π_ref judged vs π_θ, online IPO loss",
           SELFPLAY_SECTIONS, {"extragradient": False}, online=True),
    Preset("egpo", "egpo", "online IPO with an extragradient step (look-ahead, restore, real step)",
           SELFPLAY_SECTIONS, {"extragradient": True}, online=True),
    Preset("spo", "spo", "win proportion among K samples as the reward of a policy-gradient preset (selfplay.pg)",
           SELFPLAY_SECTIONS, online=True),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _TABLE}
# Every top-level section some algorithm may ignore (the rest are read by all).
OPTIONAL_SECTIONS = tuple(sorted({s for p in _TABLE for s in p.sections} - set(BASE_SECTIONS)))


def names(family: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, p in PRESETS.items() if family is None or p.family == family)


def algo_help() -> str:
    """``algo.name``'s help text, generated from the table."""
    offline = ", ".join(n for n, p in PRESETS.items() if not p.online and p.family not in ("hypo", "recipe"))
    online = ", ".join(n for n, p in PRESETS.items() if p.online)
    return (f"Algorithm: {offline} (dpo: any pairwise loss below); online: {online}; hybrid: hypo, drpo "
            "(a mix section adds offline data to online recipes); or 'recipe' to give sources and terms directly.")


def check_sections(name: str, is_set: dict[str, bool]) -> None:
    """Raise when the config sets (differs from the defaults in) a section ``name`` does not read."""
    preset = PRESETS.get(name)
    if preset is None:
        return
    for section, set_ in is_set.items():
        if set_ and section not in preset.sections:
            readers = [n for n, p in PRESETS.items() if section in p.sections]
            raise ConfigError(f"{section}: algo.name '{name}' does not read the '{section}' section (used by "
                              f"{', '.join(readers)}); remove it or choose one of those algorithms")
