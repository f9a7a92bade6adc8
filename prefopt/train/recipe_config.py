"""The ``recipe`` section: a recipe written in YAML (``algo.name: recipe``), a list of parts, each one
source and its weighted terms, reusing the presets' sources and terms by name::

    algo: {name: recipe, loss: dpo, beta: 0.1}
    recipe:
      - source: {name: pairs}                      # offline pairs of data.path
        terms: [{name: pairwise, weight: 1.0}]     # algo.loss on them
      - source: {name: samples, num_samples: 4, prompts_per_step: 4}
        terms: [{name: online_kl, weight: 0.1}]    # HyPO's λ·online reverse KL

:data:`SOURCES` and :data:`TERMS` are the one table of names, the batch kinds they make / read and
the spec fields each reads; a field set for a source or term that does not read it is an error, as
is a term whose batch kind its source does not make (naming both). The builders
(``prefopt.cli.builders.recipe``) construct each name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from prefopt.errors import ConfigError
from prefopt.train.presets import names
from prefopt.train.schedule import RATIO_SCHEDULES


@dataclass(frozen=True)
class Entry:
    """One source or term name: its batch kinds, a summary and the spec fields it reads."""

    kinds: tuple[str, ...]
    summary: str
    reads: tuple[str, ...] = ()
    note: str = ""  # said when a term needs a kind this source makes


SOURCES: dict[str, Entry] = {
    "pairs": Entry(("pairs",), "offline preference pairs (prompt, chosen, rejected)", ("path",)),
    "feedback": Entry(("feedback",), "offline unpaired feedback (prompt, completion, label), or pairs split", ("path",)),
    "sft": Entry(("sequences",), "offline SFT rows (prompt, completion), or the chosen responses of pairs", ("path",)),
    "rollouts": Entry(("rollout",), "scored policy samples with advantages (policy-gradient presets; DR-PO "
                      "dataset resets with reset_prob > 0)",
                      ("path", "rl", "reset_prob", "reset_column", "prompts_per_step")),
    "online_pairs": Entry(("pairs",), "two policy samples per prompt labelled (the labeller: online.reward or "
                          "online.judge) into a pair (online DPO)", ("path", "prompts_per_step"),
                          note="policy samples labelled by online.reward or online.judge"),
    "samples": Entry(("samples",), "fresh, unlabelled policy samples with reference log-probs (HyPO)",
                     ("path", "num_samples", "prompts_per_step")),
    "mixture": Entry((), "an online source plus an offline one, a fraction ρ(t) of each step's examples offline",
                     ("online", "offline", "schedule", "start", "end", "horizon")),
    "reward_pairs": Entry(("reward_pairs",), "offline pairs for the k members of a reward model (the reward section: "
                          "ensemble size and kind, bootstrap)", ("path",)),
}
MIXTURE_ONLINE = ("rollouts", "online_pairs")
MIXTURE_OFFLINE = ("pairs", "sft")

TERMS: dict[str, Entry] = {
    "pairwise": Entry(("pairs",), "any pairwise loss (default algo.loss, algo.beta, ...)",
                      ("loss", "beta", "loss_hparams", "loss_weights")),
    "kto": Entry(("feedback",), "KTO", ("beta", "desirable_weight", "undesirable_weight")),
    "sft": Entry(("sequences",), "completion-only NLL (units: response tokens)"),
    "policy_gradient": Entry(("rollout",), "the clipped policy-gradient loss of the rollouts' rl preset (+ KL, "
                             "value loss)"),
    "online_kl": Entry(("samples",), "on-policy reverse KL E_{y~π}[log π - log π_ref] (leave-one-out baseline)"),
    "bradley_terry": Entry(("reward_pairs",), "Bradley-Terry reward-model loss (the trained model is then a reward "
                           "model, reward.* settings)"),
}
REWARD_TERMS = ("bradley_terry",)  # they train a reward model, not the policy
SOURCE_NAMES = tuple(SOURCES)
TERM_NAMES = tuple(TERMS)
PG_NAMES = names("policy_gradient")


def _unread(spec, reads: tuple[str, ...], what: str, prefix: str) -> None:
    """A field set (not at its default) that ``what`` does not read is an error."""
    default = type(spec)()
    for f in fields(spec):
        if f.name not in reads + ("name", "weight") and getattr(spec, f.name) != getattr(default, f.name):
            readers = [n for n, e in (SOURCES if isinstance(spec, SourceSpec) else TERMS).items() if f.name in e.reads]
            raise ConfigError(f"{prefix}{f.name}: {what} does not read it (read by: {', '.join(readers)})")


@dataclass
class SourceSpec:
    name: Literal[SOURCE_NAMES] = field(default="", metadata={"help": (
        "The source: " + "; ".join(f"{n}: {e.summary}" for n, e in SOURCES.items()) + ".")})
    path: str | None = field(default=None, metadata={"help": (
        "Data file or dataset (any format data.path accepts): offline rows, or the online prompts; null = data.path "
        "(online sources: data.path or the lab task's prompts).")})
    rl: Literal[PG_NAMES] | None = field(default=None, metadata={"help": (
        "rollouts: the policy-gradient preset whose defaults apply under online.* (default grpo).")})
    reset_prob: float = field(default=0.0, metadata={"help": (
        "rollouts: probability that a rollout starts from the prompt plus a prefix of an offline response "
        "(DR-PO dataset resets; the responses are path's chosen / completion column). 0 = no resets."),
        "min": 0, "max": 1})
    reset_column: Literal["auto", "chosen", "completion"] = field(default="auto", metadata={"help": (
        "rollouts with resets: the offline response column the prefix is cut from.")})
    num_samples: int | None = field(default=None, metadata={"help": (
        "samples: k samples per prompt (>= 2: the leave-one-out baseline compares them; default 4)."), "min": 2})
    prompts_per_step: int | None = field(default=None, metadata={"help": (
        "Online prompts per step (default: online.prompts_per_step; samples: 4). Inside a mixture the mixture sets it."),
        "min": 1})
    online: SourceSpec | None = field(default=None, metadata={"help": (
        f"mixture: the online source ({', '.join(MIXTURE_ONLINE)}).")})
    offline: SourceSpec | None = field(default=None, metadata={"help": (
        f"mixture: the offline source ({', '.join(MIXTURE_OFFLINE)}).")})
    schedule: Literal[RATIO_SCHEDULES] = field(default="constant", metadata={"help": (
        "mixture: how ρ(t), the offline fraction, moves from start to end over horizon steps.")})
    start: float = field(default=0.5, metadata={"help": "mixture: ρ at step 0.", "min": 0, "max": 1})
    end: float | None = field(default=None, metadata={"help": "mixture: ρ at the horizon (null = start).",
                                                      "min": 0, "max": 1})
    horizon: int = field(default=0, metadata={"help": "mixture: steps over which ρ moves (0 = train.steps).", "min": 0})

    def validate(self, prefix: str = "") -> None:
        if not self.name:
            raise ConfigError(f"{prefix}name: give the source's name, one of {', '.join(SOURCE_NAMES)}")
        _unread(self, SOURCES[self.name].reads, f"source '{self.name}'", prefix)
        if self.name != "mixture":
            return
        for key, allowed in (("online", MIXTURE_ONLINE), ("offline", MIXTURE_OFFLINE)):
            sub = getattr(self, key)
            if sub is None or sub.name not in allowed:
                got = "nothing" if sub is None else f"'{sub.name}'"
                raise ConfigError(f"{prefix}{key}: a mixture needs an {key} source, one of {', '.join(allowed)} "
                                  f"(got {got})")

    def kinds(self) -> tuple[str, ...]:
        """The batch kinds this source makes (a mixture: both of its sources')."""
        if self.name == "mixture":
            return tuple(dict.fromkeys(self.online.kinds() + self.offline.kinds()))
        return SOURCES[self.name].kinds


@dataclass
class TermSpec:
    name: Literal[TERM_NAMES] = field(default="", metadata={"help": (
        "The loss term: " + "; ".join(f"{n} ({e.kinds[0]} batches): {e.summary}" for n, e in TERMS.items()) + ".")})
    weight: float = field(default=1.0, metadata={"help": (
        "w_k of loss = Σ_k w_k · (Σ_micro sum_k) / (Σ_micro units_k): each term is normalized by its own units."),
        "min": 0})
    loss: str | None = field(default=None, metadata={"help": "pairwise: the pairwise loss (default algo.loss)."})
    beta: float | None = field(default=None, metadata={"help": "pairwise, kto: β (default algo.beta)."})
    loss_hparams: dict | None = field(default=None, metadata={"help": "pairwise: the loss's hyper-parameters (default algo.loss_hparams)."})
    loss_weights: dict | None = field(default=None, metadata={"help": "pairwise: a weighted loss combination (default algo.loss_weights)."})
    desirable_weight: float | None = field(default=None, metadata={"help": "kto: weight of desirable examples (default 1)."})
    undesirable_weight: float | None = field(default=None, metadata={"help": "kto: weight of undesirable examples (default 1)."})

    def validate(self, prefix: str = "") -> None:
        if not self.name:
            raise ConfigError(f"{prefix}name: give the term's name, one of {', '.join(TERM_NAMES)}")
        _unread(self, TERMS[self.name].reads, f"term '{self.name}'", prefix)


def _makers(kind: str) -> str:
    return ", ".join(n + (f" ({e.note})" if e.note else "") for n, e in SOURCES.items() if kind in e.kinds)


@dataclass
class PartSpec:
    source: SourceSpec = field(default_factory=SourceSpec, metadata={"help": "The part's source ({name, ...})."})
    terms: list[TermSpec] = field(default_factory=list, metadata={"help": (
        "The terms trained on its batches, each {name, weight, ...}.")})

    def validate(self, prefix: str = "") -> None:
        if not self.source.name:
            raise ConfigError(f"{prefix}source: give a source, e.g. {{name: pairs}}")
        if not self.terms:
            raise ConfigError(f"{prefix}terms: source '{self.source.name}' has no terms; give e.g. [{{name: "
                             f"{next(n for n, e in TERMS.items() if e.kinds[0] in self.source.kinds())}}}]")
        made = self.source.kinds()
        for i, term in enumerate(self.terms):
            kind = TERMS[term.name].kinds[0]
            if kind not in made:
                raise ConfigError(f"{prefix}terms[{i}]: term '{term.name}' needs '{kind}' batches, but source "
                                 f"'{self.source.name}' makes {', '.join(made)} ({SOURCES[self.source.name].summary}); "
                                 f"sources that make '{kind}': {_makers(kind)}")


def check_recipe(parts: list[PartSpec], algo_name: str) -> None:
    """``algo.name: recipe`` needs parts; a recipe section with another algo.name is caught by the
    presets' section check."""
    trains = {t.name in REWARD_TERMS for p in parts for t in p.terms}
    if len(trains) > 1:
        raise ConfigError("recipe: term 'bradley_terry' trains a reward model, the other terms train the policy; "
                          "one recipe trains one model (give them separate runs)")
    if algo_name == "recipe" and not parts:
        raise ConfigError("recipe: algo.name 'recipe' needs a recipe section: a list of parts "
                         "[{source: {name: ...}, terms: [{name: ..., weight: ...}]}] (see docs/hybrid.md)")


def recipe_paths(parts: list[PartSpec]) -> list[tuple[str, str]]:
    """(key, path) of every source path a recipe names, mixtures' inner sources included."""
    out = []

    def visit(spec: SourceSpec | None, key: str) -> None:
        if spec is None:
            return
        if spec.path:
            out.append((f"{key}.path", spec.path))
        visit(spec.online, f"{key}.online")
        visit(spec.offline, f"{key}.offline")
    for i, part in enumerate(parts):
        visit(part.source, f"recipe[{i}].source")
    return out
