"""Config sections of the multi-objective presets: ``modpo`` (algo.name: modpo) and ``ric``
(algo.name: ric). One dataclass per section, a help text per field."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefopt.errors import ConfigError

MARGIN_KINDS_HELP = ("'scores:OBJECTIVE' (a score column of the pairs), 'implicit:PATH' (the implicit DPO reward "
                     "beta*log(pi_PATH/pi_ref) of a policy saved at PATH, pi_ref = the starting policy), or any "
                     "scorer name of online.reward (gold:OBJECTIVE, module:function, reward_model:PATH)")


@dataclass
class ModpoConfig:
    weights: list[float] = field(default_factory=list, metadata={"help": (
        "Preference vector (w0, w1, ..., wK) on the simplex: w0 weighs the preference the pairs express, "
        "w_k the k-th margin objective; w0 must be >= 0.001 (the loss divides by it).")})
    margins: list[str] = field(default_factory=list, metadata={"help": (
        "One margin source per margin objective, in weight order: " + MARGIN_KINDS_HELP + ". Computed once "
        "before training.")})
    margin_scales: list[float] = field(default_factory=list, metadata={"help": (
        "Factor per margin (default 1 each): margins must be on the scale of the preference's implicit reward; "
        "a gold score behind Bradley-Terry labels of temperature tau, e.g. the lab's pairs (tau 0.1), needs 1/tau.")})
    loss_type: Literal["sigmoid", "hinge"] = field(default="sigmoid", metadata={"help": (
        "-log sigmoid(r_w - r_l) or max(0, 1 - (r_w - r_l)) on the MODPO rewards.")})
    implicit_beta: float | None = field(default=None, metadata={"help": (
        "beta of implicit-reward margins (implicit:PATH); default algo.beta.")})
    margin_options: dict = field(default_factory=dict, metadata={"help": (
        "Options of scorer margins by margin spec, e.g. {'mymod:factory': {path: ...}} (factory call).")})

    def validate(self, prefix: str = "modpo.") -> None:
        from prefopt.losses.modpo import check_modpo_weights

        if not self.weights and not self.margins:
            return  # the section is unused (the modpo builder requires it)
        check_modpo_weights(self.weights, key=f"{prefix}weights")
        if len(self.margins) != len(self.weights) - 1:
            raise ConfigError(f"{prefix}margins: got {len(self.margins)} margin source(s) for {len(self.weights)} "
                              f"weights; expected one per margin weight ({len(self.weights) - 1})")
        if self.margin_scales and len(self.margin_scales) != len(self.margins):
            raise ConfigError(f"{prefix}margin_scales: got {len(self.margin_scales)} factor(s) for "
                              f"{len(self.margins)} margin(s); expected one per margin (or none)")


@dataclass
class RicConfig:
    objectives: list[str] = field(default_factory=list, metadata={"help": (
        "Objectives written into the prompts, in tag order (<rm1_score> is the first): score columns of "
        "data.path (pairs or SFT rows with scores); default all of the task's gold objectives.")})
    response_split: str = field(default="", metadata={"help": (
        "Response marker the prompts end with (e.g. '\\n\\nAssistant:'); the target tags go before it.")})
    rounds: int = field(default=0, metadata={"help": (
        "Online rejection-sampling rounds after the offline SFT: sample with random targets, keep samples above "
        "ric.quantile on any objective, merge them into the data, SFT again (run by `prefopt front`)."), "min": 0})
    round_prompts: int = field(default=256, metadata={"help": "Prompts sampled per online round.", "min": 1})
    round_steps: int = field(default=50, metadata={"help": "SFT steps after each online round.", "min": 1})
    quantile: float = field(default=0.7, metadata={"help": (
        "Rejection-sampling quantile (keep a sample above it on any objective)."), "min": 0, "max": 1})
    mapping: Literal["linf", "l2", "linear"] = field(default="linf", metadata={"help": (
        "Inference-time mapping from a preference vector to target scores (linf is the paper's).")})
