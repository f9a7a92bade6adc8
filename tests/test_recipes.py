"""YAML recipes (algo.name: recipe): a recipe spelling out a preset reproduces its first losses and
gradient norms; bad recipes stop at config time naming the key (or the source and the term); every
shipped config under configs/hybrid/ trains 2 steps on a tiny model and small data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from offline_fixtures import base_config, lab_pairs, write_jsonl
from prefopt.cli.config import from_dict, load_config
from prefopt.cli.run import run_train
from prefopt.errors import ConfigError, DataError
from prefopt.train.config import TrainConfig
from prefopt.train.metrics import read_metrics
from prefopt.train.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
HYBRID = sorted((ROOT / "configs" / "hybrid").glob("*.yaml"))
STEPS = 3
# A random tiny model's samples all score 0 on gold positivity: a length reward gives every step signal.
LENGTH = "online.reward=[{name: 'online_reward_fns:length'}]"
ONLINE = ["rollout.max_new_tokens=8", "online.prompts_per_step=4", "online.num_prompts=32", "data.path=null",
          "online.eval_num_samples=1", "data.eval_examples=3", LENGTH]


def _records(config: str, overrides: list[str], tmp_path: Path, name: str) -> list[dict]:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(24))
    over = base_config(pairs, tmp_path) + [f"train.steps={STEPS}", "train.threads=1", f"run_name={name}"]
    over += [o.replace("PAIRS", str(pairs)) for o in overrides]
    out = run_train(load_config(TrainConfig, ROOT / config, over))
    return [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "loss" in r]


def _assert_same_steps(preset: list[dict], recipe: list[dict]) -> None:
    assert len(preset) == len(recipe) == STEPS
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in recipe] == pytest.approx([r[key] for r in preset], rel=1e-6, abs=1e-7), key


GRPO_SFT_MIX = ["mix.path=PAIRS", "mix.term=sft", "mix.weight=0.5", "mix.schedule=cosine", "mix.start=0.5",
                "mix.end=0.0", "mix.horizon=2"]
GRPO_SFT_RECIPE = ("recipe=[{source: {name: mixture, online: {name: rollouts, rl: grpo}, offline: {name: sft, "
                   "path: PAIRS}, schedule: cosine, start: 0.5, end: 0.0, horizon: 2}, "
                   "terms: [{name: policy_gradient}, {name: sft, weight: 0.5}]}]")
ONLINE_DPO_RECIPE = ("recipe=[{source: {name: mixture, online: {name: online_pairs}, offline: {name: pairs, "
                     "path: PAIRS}, start: 0.25}, terms: [{name: pairwise}]}]")
REPRODUCED = {
    # (config, preset overrides, recipe overrides)
    "dpo": ("configs/offline/dpo.yaml", [],
            ["algo.name=recipe", "recipe=[{source: {name: pairs}, terms: [{name: pairwise}]}]"]),
    "grpo+sft": ("configs/online/grpo_reviews.yaml", ONLINE + GRPO_SFT_MIX,
                 ONLINE + ["algo.name=recipe", GRPO_SFT_RECIPE]),
    "reward_model": ("configs/offline/reward_model.yaml", ["reward.ensemble_size=2", "reward.bootstrap=true"],
                     ["reward.ensemble_size=2", "reward.bootstrap=true", "algo.name=recipe",
                      "recipe=[{source: {name: reward_pairs}, terms: [{name: bradley_terry}]}]"]),
    "online_dpo+pairs": ("configs/online/online_dpo_reviews.yaml",
                         ONLINE + ["mix.path=PAIRS", "mix.term=pairwise", "mix.start=0.25"],
                         ONLINE + ["algo.name=recipe", ONLINE_DPO_RECIPE]),
}


@pytest.mark.parametrize("name", list(REPRODUCED))
def test_a_yaml_recipe_reproduces_its_preset(name, tmp_path):
    config, preset_over, recipe_over = REPRODUCED[name]
    preset = _records(config, preset_over, tmp_path / "preset", "preset")
    recipe = _records(config, recipe_over, tmp_path / "recipe", "recipe")
    _assert_same_steps(preset, recipe)
    if name == "grpo+sft":  # ρ(t) cosine 0.5 -> 0 over 2 steps: 2 of 4, 1 of 4, then 0 offline rows
        assert [r["mix/offline_frac"] for r in recipe] == [0.5, 0.25, 0.0]


# ----------------------------------------------------------------------------- bad recipes, at config time
def _parts(*parts) -> dict:
    return {"algo": {"name": "recipe"}, "recipe": list(parts)}


PAIRS_DPO = {"source": {"name": "pairs"}, "terms": [{"name": "pairwise"}]}
BAD = [
    (_parts({"source": {"name": "rollouts"}, "terms": [{"name": "pairwise"}]}),
     r"recipe\[0\].terms\[0\]: term 'pairwise' needs 'pairs' batches, but source 'rollouts' makes rollout .*"
     r"sources that make 'pairs': pairs, online_pairs \(policy samples labelled by online.reward or online.judge\)"),
    (_parts(PAIRS_DPO, {"source": {"name": "samples"}, "terms": [{"name": "sft"}]}),
     r"recipe\[1\].terms\[0\]: term 'sft' needs 'sequences' batches, but source 'samples' makes samples"),
    (_parts({"source": {"name": "pairs"}, "terms": [{"name": "pairwise", "wieght": 2}]}),
     r"unknown config key 'recipe\[0\].terms\[0\].wieght'; did you mean 'recipe\[0\].terms\[0\].weight'"),
    (_parts({"source": {"name": "sampels"}, "terms": [{"name": "online_kl"}]}),
     r"recipe\[0\].source.name: got 'sampels'.*did you mean 'samples'"),
    (_parts({"source": {"name": "pairs", "num_samples": 2}, "terms": [{"name": "pairwise"}]}),
     r"recipe\[0\].source.num_samples: source 'pairs' does not read it \(read by: samples\)"),
    (_parts({"source": {"name": "pairs"}, "terms": [{"name": "sft", "loss": "ipo"}]}),
     r"recipe\[0\].terms\[0\].loss: term 'sft' does not read it \(read by: pairwise\)"),
    (_parts({"source": {"name": "pairs"}, "terms": []}), r"recipe\[0\].terms: source 'pairs' has no terms"),
    (_parts({"source": {"name": "pairs"}, "terms": [{"name": "pairwise", "weight": -1}]}),
     r"recipe\[0\].terms\[0\].weight: got -1.0, expected a number >= 0"),
    (_parts({"source": {"name": "mixture", "online": {"name": "rollouts"}, "offline": {"name": "sft"}, "start": 1.5},
             "terms": [{"name": "policy_gradient"}]}), r"recipe\[0\].source.start: got 1.5, expected a number in \[0, 1\]"),
    (_parts({"source": {"name": "mixture", "online": {"name": "samples"}, "offline": {"name": "sft"}},
             "terms": [{"name": "online_kl"}]}), r"recipe\[0\].source.online: a mixture needs an online source"),
    (_parts({"source": {"name": "mixture", "online": {"name": "rollouts"}}, "terms": [{"name": "policy_gradient"}]}),
     r"recipe\[0\].source.offline: a mixture needs an offline source, one of pairs, sft \(got nothing\)"),
    (_parts({"source": {"name": "rollouts", "reset_prob": 1.5}, "terms": [{"name": "policy_gradient"}]}),
     r"recipe\[0\].source.reset_prob: got 1.5, expected a number in \[0, 1\]"),
    ({"algo": {"name": "recipe"}}, r"recipe: algo.name 'recipe' needs a recipe section"),
    (_parts(PAIRS_DPO, {"source": {"name": "reward_pairs"}, "terms": [{"name": "bradley_terry"}]}),
     r"recipe: term 'bradley_terry' trains a reward model, the other terms train the policy"),
    ({"algo": {"name": "dpo"}, "recipe": [PAIRS_DPO]}, r"recipe: algo.name 'dpo' does not read the 'recipe' section"),
    ({**_parts(PAIRS_DPO), "mix": {"path": "x.jsonl"}}, r"mix: algo.name 'recipe' does not read the 'mix' section"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_recipes_fail_at_config_time_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, data)


@pytest.mark.parametrize("recipe, message", [
    ([{"source": {"name": "samples"}, "terms": [{"name": "online_kl"}]}], "algo.reference: source 'samples'"),
    ([{"source": {"name": "mixture", "online": {"name": "rollouts"}, "offline": {"name": "sft", "path": "EMPTY"}},
       "terms": [{"name": "policy_gradient"}, {"name": "sft"}]}], "no rows|empty"),
    ([{"source": {"name": "rollouts", "reset_prob": 1.0, "reset_column": "completion", "path": "PAIRS"},
       "terms": [{"name": "policy_gradient"}]}], "row 1: missing field 'completion'"),
])
def test_bad_recipes_stop_before_training(recipe, message, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(8))
    (tmp_path / "empty.jsonl").write_text("")
    text = yaml.safe_dump(recipe, default_flow_style=True).strip().replace("EMPTY", str(tmp_path / "empty.jsonl")).replace("PAIRS", str(pairs))
    over = ["algo.name=recipe", "algo.reference=none", "online.kl_coef=0", f"recipe={text}", LENGTH,
            "model.name_or_path=tiny:llama-1m", "data.task=reviews", "train.progress=false", f"output_dir={tmp_path}",
            "run_name=bad"]
    with pytest.raises((ConfigError, DataError), match=message):
        run_train(load_config(TrainConfig, None, over))
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_every_recipe_name_has_a_builder():
    from prefopt.cli.builders.recipe import SOURCE_BUILDERS, TERM_BUILDERS
    from prefopt.train.recipe_config import SOURCES, TERMS
    assert set(SOURCE_BUILDERS) == set(SOURCES) and set(TERM_BUILDERS) == set(TERMS)


# ----------------------------------------------------------------------------- shipped hybrid configs
def _tiny(node, pairs: str):
    """The config's data files -> the test's pairs; rollout sizes -> tiny (recursively, recipe parts too)."""
    if isinstance(node, dict):
        small = {"prompts_per_step": 2, "num_samples": 2, "num_prompts": 16}
        return {k: small[k] if k in small else _tiny(v, pairs) for k, v in node.items()}
    if isinstance(node, list):
        return [_tiny(v, pairs) for v in node]
    return pairs if isinstance(node, str) and node.endswith(".jsonl") else node


def test_there_is_one_config_per_hybrid_recipe():
    names = {p.stem for p in HYBRID}
    assert {"hypo_reviews", "drpo_ppo_reviews", "drpo_grpo_reviews", "online_dpo_mix_reviews",
            "grpo_sft_cosine_reviews", "recipe_hypo_reviews"} <= names


@pytest.mark.parametrize("path", HYBRID, ids=[p.stem for p in HYBRID])
def test_each_hybrid_config_trains_two_steps(path, tmp_path):
    pairs = str(write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(16)))
    data = _tiny(yaml.safe_load(path.read_text()), pairs)
    data["model"] = {"name_or_path": "tiny:llama-1m"}
    data["data"].update(eval_examples=2, max_length=64, max_prompt_length=24)
    data["train"].update(steps=2, batch_size=4, eval_every=0, warmup_steps=0, progress=False)
    data["rollout"] = {"max_new_tokens": 6}
    data.update(output_dir=str(tmp_path), run_name=path.stem)
    name = data["algo"]["name"]
    if "online" in PRESETS[name].sections:
        data.setdefault("online", {}).update(eval_num_samples=1, reward=[{"name": "online_reward_fns:length"}])
    rows = [r for r in read_metrics(run_train(from_dict(TrainConfig, data)).run_dir / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    terms = {k: v for k, v in rows[-1].items() if k.startswith("loss/")}
    if name == "recipe":  # the logged total is Σ_k w_k · loss_k of the terms' own normalized losses
        weights = [t.get("weight", 1.0) for part in data["recipe"] for t in part["terms"]]
        assert rows[-1]["loss"] == pytest.approx(sum(w * v for w, v in zip(weights, terms.values())), rel=1e-6)


def test_an_sft_source_on_a_pairs_file_trains_on_the_chosen_responses(tmp_path):
    rows = [r for r in read_metrics(run_train(load_config(TrainConfig, None, base_config(
        write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(16)), tmp_path) + [
        "algo.name=recipe", "recipe=[{source: {name: sft}, terms: [{name: sft}]}, "
        "{source: {name: pairs}, terms: [{name: pairwise, loss: simpo, beta: 2.0}]}]", "algo.reference=none",
        "run_name=sft_pairs"])).run_dir / "metrics.jsonl")]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and {"loss/sft", "loss/simpo", "sft/nll", "rewards/accuracy"} <= set(steps[0])
    assert steps[0]["loss"] == pytest.approx(steps[0]["loss/sft"] + steps[0]["loss/simpo"], rel=1e-6)
    final = [r for r in rows if "eval/loss" in r][-1]  # both parts evaluate; the second's clashing keys are prefixed
    assert "eval/part1/loss" in final and "eval/rewards/accuracy" in final


def test_check_names_a_missing_recipe_source_path(tmp_path):
    from prefopt.cli.check import check_train_inputs
    pairs = write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(4))
    recipe = (f"recipe=[{{source: {{name: mixture, online: {{name: rollouts}}, offline: {{name: sft, path: {pairs}}}}}, "
              f"terms: [{{name: policy_gradient}}]}}, {{source: {{name: pairs, path: {tmp_path / 'nope.jsonl'}}}, "
              "terms: [{name: pairwise}]}]")
    cfg = load_config(TrainConfig, None, ["algo.name=recipe", recipe, "model.name_or_path=tiny:llama-1m",
                                          "data.task=reviews", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"recipe\[1\].source.path: got '.*nope.jsonl', expected an existing path"):
        check_train_inputs(cfg)
