"""Recipes (sources × terms), the hybrid family (HyPO, dataset resets, scheduled mixtures) and the
pure pieces under them, with hand-derived values; each hybrid trains a few steps end to end."""
import math

import pytest
import torch

from offline_fixtures import lab_pairs, write_jsonl
from prefopt.cli.config import from_dict
from prefopt.cli.run import run_train
from prefopt.errors import ConfigError, DataError
from prefopt.losses.rl import (ADVANTAGE_ESTIMATORS, leave_one_out_baseline, online_reverse_kl_loss)
from prefopt.train.config import TrainConfig
from prefopt.train.metrics import read_metrics
from prefopt.train.schedule import ratio_at
from prefopt.train.sources.hybrid import reset_lengths, response_pool


# ----------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("schedule, step, expected", [
    ("constant", 7, 0.2), ("linear", 0, 0.2), ("linear", 5, 0.5), ("linear", 10, 0.8), ("linear", 20, 0.8),
    ("cosine", 0, 0.2), ("cosine", 5, 0.5), ("cosine", 10, 0.8), ("step", 9, 0.2), ("step", 10, 0.8),
])
def test_ratio_schedules(schedule, step, expected):
    assert ratio_at(step, schedule=schedule, start=0.2, end=0.8, horizon=10) == pytest.approx(expected)


def test_leave_one_out_baseline_and_the_kl_surrogate_gradient():
    group = torch.tensor([0, 0, 0, 1, 1])
    r = torch.tensor([1.0, 2.0, 6.0, -1.0, 3.0])
    # b_0 = (2+6)/2 = 4, b_1 = (1+6)/2 = 3.5, b_2 = 1.5; b_3 = 3, b_4 = -1
    assert leave_one_out_baseline(r, group).tolist() == pytest.approx([4.0, 3.5, 1.5, 3.0, -1.0])
    logp = torch.tensor([-2.0, -1.0, -3.0, -0.5, -4.0], requires_grad=True)
    ref = logp.detach() - r  # log π - log π_ref = r
    out = online_reverse_kl_loss(logp, ref, group)
    out.losses.sum().backward()
    # d/d logp_i of Σ (r_i - b_i)·logp_i with r, b detached = r_i - b_i
    assert logp.grad.tolist() == pytest.approx([-3.0, -1.5, 4.5, -4.0, 4.0])
    assert float(out.metrics["online_kl"]) == pytest.approx(11.0 / 5)


def test_advantage_estimator_table_hand_values():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    group = torch.tensor([0, 0])
    rewards = torch.tensor([1.0, 3.0])
    adv, ret = ADVANTAGE_ESTIMATORS["rloo"](rewards=rewards, mask=mask, group=group)
    assert ret is None and adv.tolist() == [[-2.0, -2.0, 0.0], [2.0, 0.0, 0.0]]
    adv, _ = ADVANTAGE_ESTIMATORS["grpo"](rewards=rewards, mask=mask, group=group, normalize_std=False)
    assert adv.tolist() == [[-1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]
    adv, _ = ADVANTAGE_ESTIMATORS["grpo"](rewards=rewards, mask=mask, group=group)  # std = sqrt(2)
    assert adv[0, 0].item() == pytest.approx(-1 / math.sqrt(2), rel=1e-5)
    adv, _ = ADVANTAGE_ESTIMATORS["remax"](rewards=rewards, mask=mask, group=group, baseline=torch.tensor([0.5, 0.5]))
    assert adv.tolist() == [[0.5, 0.5, 0.0], [2.5, 0.0, 0.0]]
    token_rewards = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 0.0], [1.0, 0.0, 0.0]])
    adv, ret = ADVANTAGE_ESTIMATORS["gae"](token_rewards=token_rewards, mask=mask, values=values, gamma=1.0, lam=1.0)
    # row 0: A_1 = 1 - 0.25 = 0.75, A_0 = 0 + 0.25 - 0.5 + 0.75 = 0.5; row 1: A_0 = 2 - 1 = 1
    assert adv.tolist() == [[0.5, 0.75, 0.0], [1.0, 0.0, 0.0]]
    assert ret.tolist() == [[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]


def test_reset_lengths_are_within_the_response_and_short_ones_are_not_reset():
    g = torch.Generator().manual_seed(0)
    lengths = reset_lengths([5, 1, 0, 2, 9] * 40, 1.0, g)
    for n, L in zip([5, 1, 0, 2, 9] * 40, lengths):
        assert (L == 0) if n < 2 else (1 <= L <= n - 1)
    assert {L for n, L in zip([5] * 200, reset_lengths([5] * 200, 1.0, g))} == {1, 2, 3, 4}
    assert set(reset_lengths([5] * 50, 0.0, g)) == {0}
    half = reset_lengths([5] * 400, 0.5, g)
    assert 0.4 < sum(L > 0 for L in half) / 400 < 0.6


def test_an_empty_offline_response_means_no_reset_and_a_missing_one_is_an_error():
    rows = [{"prompt": "a", "chosen": ""}, {"prompt": "b", "chosen": "good film"}]
    assert response_pool(rows, "chosen") == (["a", "b"], ["", "good film"])
    with pytest.raises(ConfigError, match=r"reset.column: row 1 has no 'completion' response"):
        response_pool([{"prompt": "a", "completion": "x"}, {"prompt": "b", "chosen": "y"}], "completion")


# ----------------------------------------------------------------------------- two-term accumulation
def test_two_term_accumulation_equals_one_big_batch_per_term(reviews_tokenizer, tmp_path):
    """A pairwise loss (units: pairs) + SFT (units: tokens): 2 micro-batches of 2 == 1 batch of 4 per term."""
    from prefopt.data.prepare import encode_pairwise, encode_sft
    from prefopt.data.tokenize import collate_pairs, collate_sequences
    from prefopt.losses import get_pairwise_loss
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.train.config import LoopConfig
    from prefopt.train.loop import train
    from prefopt.train.recipe import Part, Recipe
    from prefopt.train.sources.offline import DatasetSource
    from prefopt.train.terms.preference import PairwiseTerm, SFTTerm

    tok, pad = reviews_tokenizer, reviews_tokenizer.pad_token_id
    rows = lab_pairs(8)
    pairs, _ = encode_pairwise(tok, rows, max_length=64, max_prompt_length=24)
    sft, _ = encode_sft(tok, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows],
                        max_length=64, max_prompt_length=24)

    def run(batch_size, accum, out):
        model = load_model(ModelConfig(name_or_path="tiny:llama-1m"), tok)
        ps = DatasetSource(pairs, lambda b: collate_pairs(b, pad), kind="pairs", batch_size=batch_size, shuffle=False)
        ss = DatasetSource(sft, lambda b: collate_sequences([(r.prompt_ids, r.response_ids) for r in b], pad),
                           kind="sequences", batch_size=batch_size, shuffle=False)
        recipe = Recipe([Part(ps, [(PairwiseTerm(get_pairwise_loss("simpo"), beta=2.0, hparams={}, pad_id=pad), 1.0)]),
                         Part(ss, [(SFTTerm(pad_id=pad), 0.5)])])
        cfg = LoopConfig(steps=1, progress=False, lr_schedule="constant", max_grad_norm=0, grad_accum=accum)
        train(model, recipe, torch.optim.SGD(model.parameters(), lr=0.1), cfg, out)
        return model, [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r][0]

    big, rb = run(4, 1, tmp_path / "big")
    small, rs = run(2, 2, tmp_path / "small")
    assert rb["loss"] == pytest.approx(rs["loss"], rel=1e-5)
    assert rb["loss"] == pytest.approx(rb["loss/pairwise"] + 0.5 * rb["loss/sft"], rel=1e-6)
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_term_needing_a_batch_kind_the_source_does_not_make_is_an_error():
    from prefopt.losses import get_pairwise_loss
    from prefopt.train.recipe import Part, Recipe
    from prefopt.train.sources.offline import DatasetSource
    from prefopt.train.terms.preference import PairwiseTerm

    src = DatasetSource([1, 2], list, kind="sequences", batch_size=1)
    with pytest.raises(ConfigError, match="term 'pairwise' needs 'pairs' batches, but source 'DatasetSource' makes sequences"):
        Recipe([Part(src, [(PairwiseTerm(get_pairwise_loss("simpo"), beta=1.0, hparams={}, pad_id=0), 1.0)])])


# ----------------------------------------------------------------------------- end to end
def _cfg(tmp_path, algo, **over) -> TrainConfig:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", lab_pairs(16))
    data = {
        "model": {"name_or_path": "tiny:llama-1m"},
        "data": {"task": "reviews", "eval_examples": 2, "path": str(pairs), "max_length": 64, "max_prompt_length": 24},
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "batch_size": 4, "progress": False, "lr_schedule": "constant"},
        "algo": {"name": algo},
        "rollout": {"max_new_tokens": 6},
        "output_dir": str(tmp_path), "run_name": algo,
    }
    if algo != "hypo":
        data["online"] = {"prompts_per_step": 2, "eval_num_samples": 1, "eval_kl": False,
                          "reward": [{"name": "online_reward_fns:length"}]}
    for dotted, value in over.items():
        node = data
        *path, last = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return from_dict(TrainConfig, data)


def _rows(out):
    return [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "loss" in r]


def test_hypo_trains_both_terms_and_logs_the_online_kl(tmp_path):
    out = run_train(_cfg(tmp_path, "hypo", hypo={"kl_coef": 0.5, "num_samples": 2, "prompts_per_step": 2}))
    rows = _rows(out)
    assert len(rows) == 2
    for r in rows:
        for key in ("loss/dpo", "loss/online_kl", "hypo/online_kl", "rewards/accuracy"):
            assert math.isfinite(r[key]), key
        assert r["loss"] == pytest.approx(r["loss/dpo"] + 0.5 * r["loss/online_kl"], rel=1e-6)
    assert abs(rows[0]["hypo/online_kl"]) < 1e-4  # the policy starts as the reference


@pytest.mark.parametrize("rl", ["ppo", "grpo"])
def test_drpo_trains_from_dataset_resets(rl, tmp_path):
    out = run_train(_cfg(tmp_path, "drpo", reset={"rl": rl}, online__num_generations=2 if rl == "grpo" else None))
    rows = _rows(out)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[0]["reset/frac"] == 1.0 and rows[0]["reset/prefix_tokens"] >= 1


@pytest.mark.parametrize("algo, term", [("online_dpo", "pairwise"), ("grpo", "sft")])
def test_mixture_draws_the_scheduled_offline_fraction(algo, term, tmp_path):
    pairs = str(tmp_path / "pairs.jsonl")
    out = run_train(_cfg(tmp_path, algo, train__steps=3, online__prompts_per_step=4,
                         mix={"path": pairs, "term": term, "schedule": "linear", "start": 0.0, "end": 1.0,
                              "horizon": 2}))
    rows = _rows(out)
    assert [r["mix/offline_frac"] for r in rows] == [0.0, 0.5, 1.0]
    assert all(math.isfinite(r["loss"]) for r in rows)
    if term == "sft":
        assert "loss/offline_sft" in rows[1] and "sft/nll" in rows[1]


@pytest.mark.parametrize("algo, over, message", [
    ("hypo", {"algo__reference": "none"}, "algo.reference: hypo needs a reference"),
    ("grpo", {"mix": {"path": "x.jsonl", "start": 1.5}}, r"mix.start: got 1.5, expected a number in \[0, 1\]"),
    ("grpo", {"mix": {"path": "PAIRS", "term": "pairwise"}}, "mix.term: 'pairwise' mixes offline pairs"),
    ("dpo", {"online": {"kl_coef": 0.2}}, "online: algo.name 'dpo' does not read the 'online' section"),
    ("drpo", {"reset": {"reset_prob": 2.0}}, r"reset.reset_prob: got 2.0"),
    ("drpo", {"reset": {"column": "completion"}}, "row 1: missing field 'completion'"),
])
def test_bad_hybrid_input_stops_before_any_work(algo, over, message, tmp_path):
    if "mix" in over and over["mix"]["path"] == "PAIRS":
        over["mix"]["path"] = str(tmp_path / "pairs.jsonl")
    with pytest.raises((ConfigError, DataError), match=message):
        run_train(_cfg(tmp_path, algo, **over))
    assert not (tmp_path / algo / "metrics.jsonl").exists() or not _rows_safe(tmp_path / algo)


def _rows_safe(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_empty_mixture_source_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises((ConfigError, DataError), match="no rows|empty"):
        run_train(_cfg(tmp_path, "grpo", mix={"path": str(empty), "term": "sft"}))
