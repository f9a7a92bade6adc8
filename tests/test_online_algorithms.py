"""Online algorithms end to end on a tiny model: a few steps each, parameters change, metrics finite;
the all-equal-group path, reward errors inside a run, long prompts, PPO's value head and resume."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli.config import from_dict
from prefopt.cli.run import run_train
from prefopt.errors import ConfigError, TrainingError
from prefopt.models.config import ModelConfig
from prefopt.models.loading import load_model
from prefopt.rollout.scorers import RewardError
from prefopt.train.checkpoint import load_trainer_state
from prefopt.train.config import TrainConfig
from prefopt.train.metrics import read_metrics

ALGORITHMS = ["rloo", "grpo", "dr_grpo", "dapo", "remax", "reinforce_pp", "ppo", "online_dpo", "iterative_dpo", "raft"]


def _cfg(tmp_path, algo, **over) -> TrainConfig:
    data = {
        "model": {"name_or_path": "tiny:llama-1m"},
        "data": {"task": "reviews", "eval_examples": 3},
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "batch_size": 4, "progress": False, "lr_schedule": "constant"},
        "algo": {"name": algo},
        "rollout": {"max_new_tokens": 8},
        "online": {"prompts_per_step": 3, "num_prompts": 32, "eval_num_samples": 1, "round_prompts": 4,
                   "steps_per_round": 1, "reward": [{"name": "online_reward_fns:length"}]},
        "output_dir": str(tmp_path), "run_name": algo,
    }
    for dotted, value in over.items():
        node = data
        *path, last = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(TrainConfig, data)


def _rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def _changed(reviews_tokenizer, ckpt) -> bool:
    init = load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer).state_dict()
    final = load_file(ckpt / "model" / "model.safetensors")
    return any(not torch.equal(init[k], v) for k, v in final.items())


COMMON = ("loss", "grad_norm", "reward", "reward/length", "rollout/response_length", "rollout/truncated_frac",
          "rollout/gen_tokens_per_s", "learner/tokens_per_s")
EXTRA = {
    "rloo": ("adv/mean", "adv/std", "kl", "entropy", "clipfrac", "approx_kl"),
    "grpo": ("adv/mean", "adv/std", "kl", "kl_loss", "entropy", "clipfrac", "approx_kl"),
    "dr_grpo": ("adv/mean", "entropy", "clipfrac"),
    "dapo": ("adv/mean", "entropy", "clipfrac", "rollout/dropped_groups"),
    "remax": ("adv/mean", "kl", "reward/greedy_baseline"),
    "reinforce_pp": ("adv/mean", "adv/std", "kl"),
    "ppo": ("adv/mean", "kl", "value/loss", "value/explained_variance", "value/clipfrac", "kl/coef"),
    "online_dpo": ("rewards/accuracy", "rewards/margin", "pairs/ties_frac"),
    "iterative_dpo": ("rewards/margin", "round", "round/reward_margin"),
    "raft": ("sft/nll", "round", "round/best_reward"),
}


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_algorithm_runs_changes_parameters_and_logs_finite_metrics(algo, reviews_tokenizer, tmp_path):
    out = run_train(_cfg(tmp_path, algo))
    rows = _rows(out.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in COMMON + EXTRA[algo]:
        for r in rows:
            assert key in r, f"{algo}: metric {key} missing"
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), f"{algo}: {key} = {r[key]}"
    assert _changed(reviews_tokenizer, out.result.final_checkpoint)
    ev = out.result.eval_metrics
    assert "reward" in ev and "gold/positivity" in ev and "kl_to_ref" in ev and math.isfinite(ev["kl_to_ref"])


def test_iterative_dpo_reference_moves_each_round(tmp_path):
    out = run_train(_cfg(tmp_path, "iterative_dpo", train__steps=3))
    rounds = [r["round"] for r in _rows(out.run_dir)]
    assert rounds == [1, 2, 3]
    # at the start of a round the reference is the policy itself: the implicit rewards start at 0
    first = _rows(out.run_dir)[1]
    assert abs(first["rewards/margin"]) < 1e-4


# ----------------------------------------------------------------------------- the all-equal-group path


def test_all_equal_groups_are_skipped_then_stop_with_a_message(tmp_path):
    cfg = _cfg(tmp_path, "grpo", online__reward=[{"name": "online_reward_fns:constant"}], online__max_resample=2)
    with pytest.raises(TrainingError, match=r"3 rollout batches in a row had only zero advantages"):
        run_train(cfg)


def test_nothing_left_to_learn_stops_early_and_saves(tmp_path):
    import online_reward_fns
    online_reward_fns._calls["n"] = 0
    cfg = _cfg(tmp_path, "rloo", train__steps=5, online__max_resample=1, data__eval_examples=0,
               online__reward=[{"name": "online_reward_fns:varies_once"}])
    with pytest.warns(UserWarning, match="training stopped before step 2"):
        out = run_train(cfg)
    assert out.result.steps == 1 and out.result.final_checkpoint.name == "checkpoint-1"
    records = read_metrics(out.run_dir / "metrics.jsonl")
    assert any("only zero advantages" in str(r.get("stopped_early", "")) for r in records)


def test_dynamic_sampling_drops_all_equal_groups(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["review of the zenta phone:", "review of the pico kettle:"] * 4))
    cfg = _cfg(tmp_path, "dapo", data__path=str(prompts), data__eval_examples=0, train__steps=1,
               online__reward=[{"name": "online_reward_fns:phone_only"}], online__prompts_per_step=8,
               online__eval_kl=False)
    row = _rows(run_train(cfg).run_dir)[0]
    # each batch of all 8 prompts has 4 kettle groups (constant reward): dropped; a second batch refills
    assert row["rollout/dropped_groups"] == 8
    assert row["rollout/samples"] == 8 * 4


# ----------------------------------------------------------------------------- bad input


def test_reward_that_raises_stops_the_step_naming_function_and_prompt(tmp_path):
    cfg = _cfg(tmp_path, "rloo", online__reward=[{"name": "online_reward_fns:always_raise"}])
    with pytest.raises(RewardError, match=r"reward 'online_reward_fns:always_raise': RuntimeError: reward server "
                                          r"down on sample 0 \(prompt 0: 'review of"):
        run_train(cfg)


def test_reward_penalty_mode_counts_bad_samples(tmp_path):
    cfg = _cfg(tmp_path, "rloo", train__steps=1, online__reward=[{"name": "online_reward_fns:nan_for_even"}],
               online__on_reward_error="penalty", online__reward_penalty=-2.0)
    row = _rows(run_train(cfg).run_dir)[0]
    assert row["reward/errors"] > 0 and math.isfinite(row["reward"])


def test_prompt_longer_than_the_context_is_truncated_and_counted(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    long = "review of the " + "very " * 200 + "zenta phone:"
    prompts.write_text(json.dumps({"prompt": long}) + "\n" + json.dumps({"prompt": "review of the pico kettle:"}) + "\n")
    cfg = _cfg(tmp_path, "rloo", data__path=str(prompts), data__eval_examples=0, train__steps=1,
               model__max_positions=32, online__prompts_per_step=2)
    out = run_train(cfg)
    assert out.data_stats["data/prompts_truncated"] == 1
    assert _rows(out.run_dir)[0]["rollout/response_length"] > 0


@pytest.mark.parametrize("over, message", [
    ({"algo__name": "grpo", "online__num_generations": 1}, "needs >= 2"),
    ({"algo__name": "online_dpo", "online__num_generations": 3}, "exactly 2"),
    ({"rollout__num_samples": 3}, "online.num_generations"),
    ({"online__reward": [{"name": "online_reward_fns:nope"}]}, "has no attribute 'nope'"),
    ({"rollout__max_new_tokens": 300}, "leaves no room for a prompt"),
])
def test_config_errors(over, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run_train(_cfg(tmp_path, over.pop("algo__name", "rloo"), **over))


# ----------------------------------------------------------------------------- PPO value head and resume


def test_ppo_resume_is_exact_and_value_head_lives_in_trainer_state(tmp_path):
    over = dict(train__lr_schedule="constant", online__epochs=3, online__minibatches=1, train__grad_accum=2)
    straight = run_train(_cfg(tmp_path / "a", "ppo", train__steps=4, **over))
    run_train(_cfg(tmp_path / "b", "ppo", train__steps=2, **over))  # stops inside the second rollout's epochs
    resumed = run_train(_cfg(tmp_path / "b", "ppo", train__steps=4, **over), resume=True)
    a = load_file(straight.result.final_checkpoint / "model" / "model.safetensors")
    b = load_file(resumed.result.final_checkpoint / "model" / "model.safetensors")
    assert not any("value_head" in k for k in a)  # the saved policy is a plain causal LM
    for k in a:
        assert torch.equal(a[k], b[k]), k
    va = load_trainer_state(straight.result.final_checkpoint)["algorithm"]["value_head"]
    vb = load_trainer_state(resumed.result.final_checkpoint)["algorithm"]["value_head"]
    assert va["linear.weight"].abs().sum() > 0
    for k in va:
        assert torch.equal(va[k], vb[k])
    # the saved policy loads as a plain model
    load_model(ModelConfig(name_or_path=str(straight.result.final_checkpoint / "model")))


def test_response_forward_matches_the_sampler_and_token_logps(tiny_llama, reviews_tokenizer):
    from prefopt.data.tokenize import collate_sequences
    from prefopt.models.logprobs import token_logps
    from prefopt.models.value import attach_value_head, response_forward
    from prefopt.rollout.engine import SamplingConfig, generate

    tok = reviews_tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ["review of the zenta phone:", "review of"]]
    r = generate(tiny_llama, prompts, SamplingConfig(max_new_tokens=6, num_samples=2),
                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    attach_value_head(tiny_llama)
    out = response_forward(tiny_llama, r.prompt_ids, r.response_ids, r.response_mask, tok.pad_token_id,
                           values=True, entropy=True)
    assert torch.allclose(out["logps"], r.logprobs, atol=1e-4)
    rows = [(p, ids[m].tolist()) for p, ids, m in zip(r.prompt_ids, r.response_ids, r.response_mask)]
    ref, mask = token_logps(tiny_llama, collate_sequences(rows, tok.pad_token_id))
    assert torch.allclose(out["logps"].sum(-1), ref.sum(-1), atol=1e-4)
    assert out["values"].shape == r.response_ids.shape and (out["values"] == 0).all()  # zero-initialized head
    assert (out["entropy"][r.response_mask] > 0).all()


def test_ppo_with_a_separate_critic(reviews_tokenizer, tmp_path):
    out = run_train(_cfg(tmp_path, "ppo", train__steps=1, online__critic="separate", online__eval_kl=False,
                         data__eval_examples=0))
    row = _rows(out.run_dir)[0]
    assert math.isfinite(row["value/loss"]) and row["value/loss"] > 0
    saved = load_file(out.result.final_checkpoint / "model" / "model.safetensors")
    assert not any("value_head" in k for k in saved)
    state = load_trainer_state(out.result.final_checkpoint)["algorithm"]
    assert any(k.startswith("backbone.") for k in state["value_head"])


def test_freeze_tuning_trains_only_matching_parameters(reviews_tokenizer, tmp_path):
    """model.trainable: the final norm's gains change, every other tensor is bit-identical; the run
    logs step 0 (eval_on_start) and pass@k of the 0/1 gold objective is absent for a non-binary one."""
    cfg = _cfg(tmp_path, "grpo", model__trainable=[r"^model\.norm\."], optim__lr=0.1,
               train__eval_on_start=True, online__eval_num_samples=2)
    run_train(cfg)
    init = load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer).state_dict()
    final = load_file(tmp_path / "grpo" / "checkpoint-2" / "model" / "model.safetensors")
    changed = sorted(k for k, v in final.items() if not torch.equal(init[k], v))
    assert changed == ["model.norm.weight"]
    evals = [r for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "eval/reward" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert not any("pass@" in k for r in evals for k in r)  # reviews' gold objectives are not pass/fail


def test_eval_on_start_leaves_the_run_unchanged(reviews_tokenizer, tmp_path):
    weights = []
    for look in (False, True):
        cfg = _cfg(tmp_path / str(look), "grpo", train__eval_on_start=look, online__eval_num_samples=2)
        run_train(cfg)
        weights.append(load_file(tmp_path / str(look) / "grpo" / "checkpoint-2" / "model" / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("patterns, lora, message", [
    ([r"^nothing\."], False, r"'\^nothing\\\.' matches no parameter"),
    (["(unclosed"], False, "is not a regular expression"),
    ([r"norm"], True, "exclude each other"),
])
def test_freeze_tuning_errors(patterns, lora, message, tmp_path):
    cfg = _cfg(tmp_path, "grpo", model__trainable=patterns, lora__enabled=lora)
    with pytest.raises(ConfigError, match=message):
        run_train(cfg)


def test_pass_at_k_counts_prompts_with_one_success():
    from prefopt.eval.online import pass_at_k as _pass_at_k

    group = torch.tensor([7, 7, 7, 3, 3, 3, 9, 9, 9])  # ids need not be dense
    gold = {"correct": [0, 1, 0, 0, 0, 0, 1, 1, 1], "score": [0.5] * 9}
    assert _pass_at_k(gold, group, ("correct",), "") == {"gold/correct/pass@3": pytest.approx(2 / 3)}
    assert _pass_at_k(gold, torch.arange(9), ("correct",), "") == {}  # one sample per prompt: no pass@k


@pytest.mark.parametrize("algo", ["online_dpo", "iterative_dpo"])
def test_pairwise_online_losses_equal_with_perf_switches_off(algo, tmp_path, monkeypatch):
    """perf.prefix_sharing / perf.padding_free reach online and iterative DPO and change no number."""
    import prefopt.train.algorithms.online_pref as online_pref

    calls, real = [], online_pref.pair_logps

    def spy(*args, **kwargs):
        calls.append((kwargs["prefix_sharing"], kwargs["padding_free"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(online_pref, "pair_logps", spy)
    losses = []
    for on in (True, False):
        calls.clear()
        run_train(_cfg(tmp_path / str(on), algo, perf__prefix_sharing=on, perf__padding_free=on))
        assert calls and set(calls) == {(on, on)}
        losses.append([r["loss"] for r in _rows(tmp_path / str(on) / algo)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("algo", ["online_dpo", "grpo"])
def test_lora_policy_with_its_adapter_disabled_reference(algo, tmp_path):
    """algo.reference: lora (no second model) for a reference-based online loss and a KL loss term."""
    run_train(_cfg(tmp_path, algo, lora__enabled=True, algo__reference="lora", online__kl_coef=0.1))
    rows = _rows(tmp_path / algo)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert "kl" in rows[0] or "rewards/margin" in rows[0]


def test_reference_log_probs_packed_equal_padded(tiny_llama, reviews_tokenizer):
    """The reference / recompute pass (batched_logps) with prompts shared and rows packed equals the
    padded pass, for a plain model and for a LoRA policy's adapter-disabled reference."""
    from prefopt.models.config import LoraConfig
    from prefopt.models.lora import AdapterDisabledReference, apply_lora
    from prefopt.rollout.engine import SamplingConfig, generate
    from prefopt.models.rollout_logps import batched_logps

    pad = reviews_tokenizer.pad_token_id
    prompts = [reviews_tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("the food was", "service", "a b c d e f")]
    rollout = generate(tiny_llama, prompts, SamplingConfig(max_new_tokens=6, num_samples=3), pad_token_id=pad,
                       eos_token_id=reviews_tokenizer.eos_token_id)
    lora_policy = apply_lora(load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer),
                             LoraConfig(enabled=True, r=4))
    with torch.no_grad():  # adapters on would change the numbers: make sure the reference turns them off
        for name, p in lora_policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    plain = load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer)
    for model, expected_model in ((tiny_llama, tiny_llama), (AdapterDisabledReference(lora_policy), plain)):
        padded = batched_logps(expected_model, rollout, pad, 4, prefix_sharing=False, padding_free=False)
        packed = batched_logps(model, rollout, pad, 4)
        assert torch.allclose(packed, padded, atol=1e-5), (packed - padded).abs().max()
        if model is tiny_llama:  # and both equal the sampler's behaviour log-probs
            assert torch.allclose(packed, rollout.logprobs, atol=1e-4)
