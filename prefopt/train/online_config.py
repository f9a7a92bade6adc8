"""The ``online`` section of ``prefopt train``: rollouts, rewards, advantages, KL and PPO settings.

Fields left at ``null`` take the algorithm's default (the presets table,
``prefopt/train/presets.py``), so ``algo.name: dapo`` alone gives DAPO's settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RewardSpec:
    name: str = field(default="gold", metadata={"help": (
        "Scorer: 'gold:OBJECTIVE' (lab task gold reward, e.g. gold:positivity), 'gold' (all objectives), "
        "'module:function' (f(prompts, responses) -> list of floats or dict of lists), "
        "'reward_model:PATH' (a trained reward model).")})
    weight: float = field(default=1.0, metadata={"help": "Weight of this scorer's components in the training reward."})
    weights: dict = field(default_factory=dict, metadata={"help": (
        "Per-component weights for scorers returning several named rewards, e.g. {positivity: 1, brevity: 0.5}; "
        "when set, unlisted components are logged but do not drive training.")})
    label: str | None = field(default=None, metadata={"help": (
        "Name under which the components are logged (reward/<label>/<component>); default from the scorer name.")})
    options: dict = field(default_factory=dict, metadata={"help": (
        "Keyword arguments: with them a 'module:function' is a factory called as function(**options) that returns the scorer.")})


@dataclass
class OnlineConfig:
    """Settings of the online algorithms (rloo, grpo, dr_grpo, dapo, remax, reinforce_pp, ppo,
    online_dpo, iterative_dpo, raft)."""

    # experience
    prompts_per_step: int = field(default=16, metadata={"help": (
        "Prompts sampled per rollout batch (each gets num_generations responses)."), "min": 1})
    num_generations: int | None = field(default=None, metadata={"help": (
        "Responses sampled per prompt (k). Default: 4; remax and ppo 1; online_dpo 2 (fixed)."), "min": 1})
    num_prompts: int = field(default=4096, metadata={"help": (
        "Size of the training prompt pool drawn from the lab task (data.task); a data.path JSONL gives its own."), "min": 1})
    epochs: int = field(default=1, metadata={"help": (
        "Optimization passes over each rollout batch (PPO epochs); each pass is `minibatches` optimizer steps."), "min": 1})
    minibatches: int = field(default=1, metadata={"help": (
        "Optimizer steps per pass over a rollout batch (the batch is split into this many mini-batches)."), "min": 1})
    recompute_logprobs: bool | None = field(default=None, metadata={"help": (
        "Recompute the behaviour log-probs with a teacher-forced pass instead of using the sampler's "
        "(default: only for ppo, whose value pass gives them for free).")})
    # reward
    reward: list[RewardSpec] = field(default_factory=list, metadata={"help": (
        "Reward functions, each {name, weight, weights, label, options}: name is gold:OBJECTIVE, gold, "
        "module:function or reward_model:PATH. Their weighted sum drives training and every component is "
        "logged (reward/<label>/<component>). Default: the lab task's default gold objective.")})
    reward_combine: Literal["sum", "mean", "min", "uwo"] = field(default="sum", metadata={"help": (
        "How weighted components are combined: sum, mean (weighted mean), min (worst case, WCO ensembles), "
        "uwo (mean - uwo_lambda * variance across components, uncertainty-weighted ensembles).")})
    uwo_lambda: float = field(default=1.0, metadata={"help": "Variance penalty of reward_combine: uwo.", "min": 0})
    on_reward_error: Literal["error", "penalty"] = field(default="error", metadata={"help": (
        "A reward function that raises, returns the wrong length or a non-finite value: 'error' stops naming "
        "the function and the sample; 'penalty' gives the sample `reward_penalty` and counts it (reward/errors).")})
    reward_penalty: float = field(default=-1.0, metadata={"help": "Reward of samples whose scoring failed (on_reward_error: penalty)."})
    judge: str | None = field(default=None, metadata={"help": (
        "Pairwise judge 'module:function' j(prompt, a, b) -> P(a better than b), used instead of the reward "
        "to label online_dpo / iterative_dpo pairs.")})
    judge_options: dict = field(default_factory=dict, metadata={"help": "Keyword arguments making the judge (factory call)."})
    # KL to the reference (the initial policy)
    kl_coef: float | None = field(default=None, metadata={"help": (
        "KL strength β to the reference policy (0 = no reference model). Default: grpo 0.04, dapo/dr_grpo 0, others 0.05."), "min": 0})
    kl_estimator: Literal["k1", "k2", "k3"] | None = field(default=None, metadata={"help": (
        "KL estimator (Schulman): k1, k2 or k3. Default: k1 in the reward, k3 as a loss term.")})
    kl_in_reward: bool | None = field(default=None, metadata={"help": (
        "Put -β·KL per token into the reward (true) or add β·KL as a loss term (false). "
        "Default: false for grpo family, true otherwise.")})
    kl_target: float | None = field(default=None, metadata={"help": (
        "Adaptive KL controller target (nats per sequence); null keeps kl_coef fixed."), "gt": 0})
    kl_horizon: float = field(default=10000.0, metadata={"help": "Adaptive KL controller horizon (samples).", "gt": 0})
    # policy loss
    clip_low: float = field(default=0.2, metadata={"help": "PPO ratio clip below: 1 - clip_low.", "gt": 0, "lt": 1})
    clip_high: float | None = field(default=None, metadata={"help": (
        "PPO ratio clip above: 1 + clip_high (DAPO's clip-higher). Default: clip_low; dapo 0.28."), "gt": 0})
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] | None = field(
        default=None, metadata={"help": (
            "How per-token losses are averaged over the step. Default: grpo seq_mean_token_mean, "
            "dr_grpo seq_mean_token_sum (no length normalization), others token_mean.")})
    normalize_std: bool | None = field(default=None, metadata={"help": (
        "GRPO: divide group-centred rewards by the group std (default true; dr_grpo false).")})
    dynamic_sampling: bool | None = field(default=None, metadata={"help": (
        "Drop groups whose samples all got the same reward and sample more prompts to refill (default: dapo only).")})
    max_resample: int = field(default=4, metadata={"help": (
        "Extra rollout batches tried when a batch has only zero advantages (or, with dynamic sampling, "
        "too few informative groups) before giving up."), "min": 0})
    whiten_advantages: bool | None = field(default=None, metadata={"help": (
        "Whiten token advantages over the batch (default: ppo and reinforce_pp).")})
    # PPO
    gamma: float = field(default=1.0, metadata={"help": "Discount γ (ppo, reinforce_pp).", "min": 0, "max": 1})
    lam: float = field(default=0.95, metadata={"help": "GAE λ (ppo).", "min": 0, "max": 1})
    vf_coef: float = field(default=0.1, metadata={"help": "Value-loss weight (ppo).", "min": 0})
    vf_clip: float | None = field(default=0.2, metadata={"help": "Value clipping range around the old values (ppo); null = off.", "gt": 0})
    critic: Literal["shared", "separate"] = field(default="shared", metadata={"help": (
        "PPO critic: 'shared' = a linear value head on the policy's last hidden state; 'separate' = its own "
        "trunk, a copy of the initial policy (a full critic model: more memory, decoupled from the policy).")})
    # iterative_dpo / raft
    round_prompts: int = field(default=128, metadata={"help": "Prompts sampled at the start of each round (iterative_dpo, raft).", "min": 1})
    steps_per_round: int = field(default=20, metadata={"help": (
        "Optimizer steps per round (iterative_dpo, raft); then the next round samples again and, for "
        "iterative_dpo, the reference becomes the current policy."), "min": 1})
    # evaluation
    eval_num_samples: int = field(default=2, metadata={"help": "Samples per held-out prompt in evaluation.", "min": 1})
    eval_greedy: bool = field(default=False, metadata={"help": "Also evaluate greedy responses (eval/greedy/*), e.g. accuracy."})
    eval_kl: bool = field(default=True, metadata={"help": (
        "Report KL(policy || initial policy) in evaluation (keeps a reference copy even when kl_coef is 0).")})
