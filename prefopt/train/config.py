"""The ``prefopt train`` config: one dataclass per section, a help text per field."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from prefopt.data.config import DataConfig
from prefopt.dist.config import DistConfig
from prefopt.errors import ConfigError
from prefopt.models.config import LoraConfig, ModelConfig
from prefopt.optim.config import OptimConfig
from prefopt.rollout.engine import SamplingConfig
from prefopt.seeding import SEED_MAX
from prefopt.train.online_config import OnlineConfig
from prefopt.train.hybrid_config import HypoConfig, MixConfig, ResetConfig
from prefopt.objectives.config import ModpoConfig, RicConfig
from prefopt.train.precision import check_precision, check_rollout_dtype
from prefopt.train.presets import OPTIONAL_SECTIONS, algo_help, check_sections
from prefopt.train.recipe_config import PartSpec, check_recipe
from prefopt.train.selfplay_config import HedgeConfig, SelfPlayConfig
from prefopt.validation import bad_value


@dataclass
class LoopConfig:
    steps: int = field(default=100, metadata={"help": "Optimizer steps to run.", "min": 1})
    batch_size: int = field(default=16, metadata={"help": "Examples per micro-batch.", "min": 1})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches accumulated per optimizer step.", "min": 1})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0 = off).", "min": 0})
    lr_schedule: Literal["constant", "linear", "cosine"] = field(default="cosine", metadata={"help": "LR decay after warmup."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps.", "min": 0})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final LR as a fraction of the base LR (linear/cosine).", "min": 0, "max": 1})
    seed: int = field(default=0, metadata={"help": "Seed for data order, dropout and sampling.", "min": 0, "max": SEED_MAX})
    eval_every: int = field(default=0, metadata={"help": "Evaluate every N steps (0 = only at the end).", "min": 0})
    eval_on_start: bool = field(default=False, metadata={"help": (
        "Also evaluate the starting model (logged as step 0) for a before/after in one run; "
        "random state is left untouched, so the run itself is unchanged; skipped on --resume.")})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = only at the end).", "min": 0})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many newest checkpoints to keep.", "min": 1})
    checkpoint_fallback: bool = field(default=True, metadata={"help": (
        "On --resume, a newest checkpoint that fails its manifest check (truncated, modified, incomplete) is "
        "reported, renamed corrupt-checkpoint-N and skipped for the newest intact one; false: stop with the error.")})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    tensorboard: bool = field(default=False, metadata={"help": "Also log to TensorBoard under <run>/tensorboard."})
    wandb_project: str | None = field(default=None, metadata={"help": "Also log to this Weights & Biases project."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default).", "min": 0})
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16"] = field(default="fp32", metadata={"help": (
        "Numeric precision: 'fp32'; 'bf16-mixed' / 'fp16-mixed' = fp32 master weights and optimizer state, every "
        "forward and backward of a step (policy, reference, rollouts) under bf16/fp16 autocast, rollouts from a "
        "low-precision copy (rollout.dtype), a live reference held in bf16/fp16, fp16 with a "
        "dynamic loss scaler (checkpointed); 'bf16' = pure bf16 weights (model.dtype becomes bfloat16; warns when "
        "lr is below the weights' bf16 resolution). Needs hardware bf16/fp16 support (checked at start).")})


@dataclass
class AlgoConfig:
    name: str = field(default="dpo", metadata={"help": algo_help()})
    loss: str = field(default="dpo", metadata={"help": "Pairwise loss for preference algorithms (dpo, ipo, simpo, ...)."})
    beta: float = field(default=0.1, metadata={"help": "KL strength β of preference losses.", "gt": 0})
    loss_hparams: dict = field(default_factory=dict, metadata={"help": "Extra hyper-parameters of the loss, e.g. {label_smoothing: 0.1}."})
    reference: Literal["copy", "lora", "precomputed", "none"] = field(default="copy", metadata={"help": (
        "Reference policy: 'copy' (frozen copy of the initial policy), 'lora' (the policy with its LoRA adapters "
        "disabled), 'precomputed' (reference log-probs computed in one pass before training and cached on disk "
        "under $PREFOPT_CACHE, so no reference model stays in memory) or 'none' (reference-free losses).")})
    loss_weights: dict = field(default_factory=dict, metadata={"help": (
        "Combine pairwise losses: {name: weight, ...}, e.g. {dpo: 1.0, bco_pair: 0.5}; replaces algo.loss. "
        "loss_hparams is then keyed by loss name, e.g. {bco_pair: {delta: 0.0}}.")})

    def validate(self, prefix: str = "algo.") -> None:
        """Loss names exist (their hyper-parameters are checked where the loss is built)."""
        from prefopt.losses import get_pairwise_loss

        names = [(f"{prefix}loss_weights.{n}", n) for n in self.loss_weights] or [(f"{prefix}loss", self.loss)]
        for key, name in names:
            if name == "kto" and key == f"{prefix}loss":
                continue  # resolve_loss explains that kto is algo.name: kto
            try:
                get_pairwise_loss(name)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        for name, weight in self.loss_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise bad_value(f"{prefix}loss_weights.{name}", weight, "a finite number")


@dataclass
class PerfConfig:
    prefix_sharing: bool = field(default=True, metadata={"help": (
        "Compute each prompt once and let every response to it attend to that copy: chosen and rejected of a "
        "preference pair, the k samples of an online rollout (one forward with a block attention mask). Exact; "
        "needs sdpa or eager attention.")})
    padding_free: bool = field(default=True, metadata={"help": (
        "Pack several pairs/sequences per row instead of padding every row to the longest. Exact; needs sdpa or "
        "eager attention (other models fall back to padded rows).")})


@dataclass
class RewardConfig:
    ensemble_size: int = field(default=1, metadata={"help": "Members of the reward ensemble (1 = a single reward model).", "min": 1})
    ensemble_kind: Literal["models", "heads"] = field(default="models", metadata={"help": (
        "'models': k separate models (own seed and data order); 'heads': k heads on one shared backbone.")})
    bootstrap: bool = field(default=False, metadata={"help": (
        "Train each member on a bootstrap resample of the pairs (for heads: Poisson(1) per-pair weights).")})
    aggregation: Literal["mean", "min", "uwo"] = field(default="mean", metadata={"help": (
        "How a scorer combines members: mean, worst-case 'min' (WCO), or 'uwo' = mean - uwo_lambda * variance.")})
    uwo_lambda: float = field(default=1.0, metadata={"help": "λ of uncertainty-weighted aggregation.", "min": 0})
    margin: float = field(default=0.0, metadata={"help": (
        "Constant margin in -log σ(r_w - r_l - margin); a 'margin' data column adds a per-pair one."), "min": 0})
    objective: str = field(default="reward", metadata={"help": "Name of the reward the saved scorer returns."})



@dataclass
class TrainConfig:
    """``prefopt train CONFIG.yaml [key=value ...]``."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The policy model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and evaluation data."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimizer and learning rate."})
    train: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "The training loop."})
    algo: AlgoConfig = field(default_factory=AlgoConfig, metadata={"help": "Algorithm, loss and reference."})
    perf: PerfConfig = field(default_factory=PerfConfig, metadata={"help": (
        "Exact speed-ups of the training forward pass (prefix sharing, padding-free packing).")})
    rollout: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": (
        "Sampling of online algorithms' responses (num_samples is set from online.num_generations).")})
    online: OnlineConfig = field(default_factory=OnlineConfig, metadata={"help": (
        "Online algorithms: rewards, advantages, KL, PPO and round settings.")})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA / QLoRA adapters (PEFT)."})
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": (
        "Reward-model training (algo.name: reward_model): ensemble size and kind, aggregation.")})
    mix: MixConfig = field(default_factory=MixConfig, metadata={"help": (
        "A scheduled mixture of offline data into an online recipe (online DPO + offline pairs, GRPO + SFT, ...).")})
    hypo: HypoConfig = field(default_factory=HypoConfig, metadata={"help": (
        "HyPO (algo.name: hypo): the online reverse-KL term's λ, samples per prompt and prompts per step.")})
    reset: ResetConfig = field(default_factory=ResetConfig, metadata={"help": (
        "DR-PO dataset resets (algo.name: drpo): reset probability, response column, policy-gradient optimizer.")})
    recipe: list[PartSpec] = field(default_factory=list, metadata={"help": (
        "A recipe written directly (algo.name: recipe): parts [{source: {name, ...}, terms: [{name, weight, ...}]}] "
        "(docs/hybrid.md).")})
    modpo: ModpoConfig = field(default_factory=ModpoConfig, metadata={"help": (
        "MODPO (algo.name: modpo): preference weights, margin sources of the other objectives, loss type.")})
    ric: RicConfig = field(default_factory=RicConfig, metadata={"help": (
        "Rewards-in-context (algo.name: ric): conditioned objectives, online rounds, preference-to-target mapping.")})
    selfplay: SelfPlayConfig = field(default_factory=SelfPlayConfig, metadata={"help": (
        "Self-play / Nash presets (sppo, inpo, egpo, online_ipo, dno, selm, spo): the judge and each method's knobs.")})
    hedge: HedgeConfig = field(default_factory=HedgeConfig, metadata={"help": (
        "A Hedge ensemble of judges as the preference source (selfplay.judge or online.judge: hedge).")})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"help": (
        "Data parallelism under torchrun (ddp or fsdp2; gloo on CPU, nccl on GPU); train.batch_size is per rank.")})
    output_dir: str = field(default="runs", metadata={"help": "Runs are written to <output_dir>/<run_name>."})
    run_name: str | None = field(default=None, metadata={"help": "Run folder name; default '<algo>-<timestamp>'."})

    def _check_hedge(self, prefix: str) -> None:
        """A Hedge setting the chosen algorithm would not read is an error, not silently ignored."""
        from prefopt.train.presets import PRESETS

        h = self.hedge
        if h.scorers and PRESETS[self.algo.name].family != "policy_gradient":
            raise bad_value(f"{prefix}hedge.scorers", h.scorers,
                            f"unset with algo.name {self.algo.name}: Hedge combines the rewards of a policy-gradient "
                            "preset (rloo, grpo, ppo, ...); to label pairs use hedge.judges with judge: hedge")
        judged_by_hedge = "hedge" in (self.selfplay.judge, self.online.judge)
        if h.judges and not judged_by_hedge:
            raise bad_value(f"{prefix}hedge.judges", h.judges,
                            "unset, or selfplay.judge: hedge / online.judge: hedge (the experts label pairs only "
                            "when Hedge is the judge)")

    def validate(self, prefix: str = "") -> None:
        """Combinations across sections (each section has checked its own fields); a section the chosen
        algorithm does not read, set to anything but its defaults, is an error."""
        check_sections(self.algo.name, {name: getattr(self, name) != type(getattr(self, name))()
                                        for name in OPTIONAL_SECTIONS})
        check_precision(self.train.precision, self.model.dtype, self.optim.name, key=f"{prefix}train.precision")
        check_rollout_dtype(self.rollout.dtype, key=f"{prefix}rollout.dtype")
        if self.train.precision == "bf16":
            self.model.dtype = "bfloat16"  # pure bf16: the weights themselves (one setting, not two)
        if self.algo.name == "kto" and self.train.batch_size < 2:
            raise bad_value(f"{prefix}train.batch_size", self.train.batch_size,
                            "an integer >= 2 with algo.name=kto (its KL baseline pairs mismatched examples)")
        check_recipe(self.recipe, self.algo.name)
        self._check_hedge(prefix)
