"""Config sections of the self-play / Nash presets (``selfplay``: sppo, inpo, egpo, online_ipo, dno,
selm, spo) and of the Hedge labeller (``hedge``: ``selfplay.judge: hedge`` or ``online.judge: hedge``
for online_dpo / iterative_dpo). β is ``algo.beta`` for every method; K (samples per prompt),
rounds and prompts per step come from the ``online`` section."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefopt.validation import bad_value

JUDGE_HELP = ("Preference source P(a ≻ b): 'lab' (the lab task's gold judge, e.g. reviews_rps; 'lab:noisy' and "
              "'lab:adversarial' are degraded copies of it), 'bt:SCORER' "
              "(Bradley-Terry over a scorer: bt:gold:informativeness, bt:reward_model:PATH), "
              "'pairwise_model:PATH' (a reward model trained on swapped pair texts, see docs/selfplay.md), "
              "'module:function' (a Python judge), or 'hedge' (a Hedge ensemble, the hedge section).")


@dataclass
class SelfPlayConfig:
    judge: str = field(default="lab", metadata={"help": JUDGE_HELP})
    judge_options: dict = field(default_factory=dict, metadata={"help": (
        "Options of the judge: temperature for bt:, factory keyword arguments for module:function.")})
    both_orders: bool = field(default=False, metadata={"help": (
        "Ask the judge both orders of each pair and average (cancels position bias; twice the calls).")})
    eta: float = field(default=1.0, metadata={"help": (
        "INPO: η, the inverse step size of online mirror descent (target margin 1/(2η))."), "gt": 0})
    rho: float = field(default=0.1, metadata={"help": (
        "INPO: ρ = τ/η ∈ [0, 1], the weight of the fixed reference in the anchor ρ·ℓ_ref + (1 − ρ)·ℓ_t."),
        "min": 0, "max": 1})
    alpha: float = field(default=1.0e-3, metadata={"help": (
        "SELM: α of the optimism term αβ·Δ(y_ref) (reference 1e-4 … 1e-3)."), "min": 0})
    margin: float = field(default=0.1, metadata={"help": (
        "DNO: keep a pair only when its win-rate gap P̂(y_w) − P̂(y_l) is at least this."), "min": 0})
    pairs_per_prompt: int = field(default=1, metadata={"help": (
        "DNO: disjoint pairs per prompt (r-th best vs r-th worst), at most K // 2."), "min": 1})
    mixture_coef: float = field(default=1.0, metadata={"help": (
        "EGPO / online IPO: α of the geometric mixture π_θ^{1−α}·π_ref^α the pair y, y′ is sampled from "
        "(1 = π_ref, the reference code's default; 0 = π_θ)."),
        "min": 0, "max": 1})
    num_opponents: int = field(default=1, metadata={"help": (
        "EGPO / online IPO: samples y″ ∼ π_θ per prompt the pair is judged against (when mixture_coef > 0)."),
        "min": 1})
    extragradient: bool | None = field(default=None, metadata={"help": (
        "EGPO: look-ahead step then the real step from the restored parameters and optimizer state "
        "(default: egpo true, online_ipo false).")})
    normalize_logprobs: bool = field(default=True, metadata={"help": (
        "EGPO / online IPO: length-averaged log-probs in the loss (the reference code's default).")})
    pg: Literal["rloo", "grpo", "dr_grpo", "reinforce_pp"] = field(default="rloo", metadata={"help": (
        "SPO: the policy-gradient preset trained on the win-proportion rewards (its defaults apply).")})


@dataclass
class HedgeConfig:
    judges: list[str] = field(default_factory=list, metadata={"help": (
        "The experts: judge specs as in selfplay.judge (lab, bt:SCORER, pairwise_model:PATH, module:function), "
        "at least 2.")})
    judge_options: dict = field(default_factory=dict, metadata={"help": (
        "Options per expert, keyed by its spec, e.g. {'bt:gold:informativeness': {temperature: 0.1}}.")})
    scorers: list[str] = field(default_factory=list, metadata={"help": (
        "Hedge as a reward combiner of a policy-gradient preset (rloo, grpo, ...): scorer specs as in online.reward "
        "(gold:OBJECTIVE, module:function, reward_model:PATH), at least 2; the training reward is Σ w_k r_k and the "
        "weights learn from gold labels on pairs of a prompt's samples through each scorer's Bradley-Terry prediction.")})
    temperature: float = field(default=1.0, metadata={"help": (
        "Bradley-Terry temperature of each scorer's prediction σ((r_k(a) − r_k(b)) / temperature) (hedge.scorers)."),
        "gt": 0})
    gold: str = field(default="lab", metadata={"help": (
        "The labeller of the feedback pairs (a judge spec; its P(a ≻ b) is the soft label).")})
    feedback: float = field(default=0.25, metadata={"help": (
        "Fraction of judged pairs that also get a gold label and update the weights (drawn with a seeded RNG)."),
        "min": 0, "max": 1})
    eta: float | None = field(default=None, metadata={"help": (
        "Fixed step size η; null with horizon null = the doubling trick."), "gt": 0})
    horizon: int | None = field(default=None, metadata={"help": (
        "Known number of feedback rounds T: η = sqrt(8 ln K / T)."), "min": 1})
    loss: Literal["absolute", "squared", "zero_one"] = field(default="absolute", metadata={"help": (
        "Expert loss against the gold label: |p − y|, (p − y)², or 0/1 on the side.")})

    def validate(self, prefix: str = "hedge.") -> None:
        if self.judges and len(self.judges) < 2:
            raise bad_value(f"{prefix}judges", self.judges,
                            "at least 2 judge specs (an ensemble needs at least 2 experts)")
        if self.scorers and len(self.scorers) < 2:
            raise bad_value(f"{prefix}scorers", self.scorers,
                            "at least 2 scorer specs (an ensemble needs at least 2 experts)")
        if self.eta is not None and self.horizon is not None:
            raise bad_value(f"{prefix}eta", self.eta,
                            f"null when {prefix}horizon is set (fixed η or horizon-tuned η, not both)")
