"""Reward models: BT training beats chance on lab pairs; ensembles (models, heads) aggregate,
save in HF format and load back as scorers."""
import pytest
import torch

from prefopt.data.loaders import validate
from prefopt.data.prepare import encode_pairwise
from prefopt.models.config import ModelConfig
from prefopt.models.reward import (RewardEnsemble, aggregate, build_reward_model, load_reward_model,
                                   load_scorer)
from prefopt.train.algorithms.reward_model import RewardModeling, bt_losses
from prefopt.train.config import LoopConfig
from prefopt.train.loop import train

from offline_fixtures import lab_pairs, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")


def test_aggregations_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    assert torch.allclose(aggregate(r, "mean"), torch.tensor([2.0, 0.0, 0.0]))
    assert torch.allclose(aggregate(r, "min"), torch.tensor([1.0, 0.0, -1.0]))
    # population variance: [2/3, 0, 2/3]; uwo = mean - λ var
    assert torch.allclose(aggregate(r, "uwo", 1.5), torch.tensor([2.0 - 1.0, 0.0, -1.0]))
    assert torch.allclose(aggregate(torch.tensor([0.5, -0.5]), "uwo"), torch.tensor([0.5, -0.5]))  # k = 1
    with pytest.raises(ValueError, match="expected one of mean, min, uwo"):
        aggregate(r, "median")


def test_bt_loss_by_hand():
    out = bt_losses(torch.tensor([2.0]), torch.tensor([1.0]), 0.5)
    assert torch.allclose(out, torch.log1p(torch.exp(torch.tensor([-0.5]))))


@pytest.fixture(scope="module")
def rm_data(reviews_tokenizer):
    rows = validate(lab_pairs(112), "pairwise").rows
    pairs, _ = encode_pairwise(reviews_tokenizer, rows, max_length=48, max_prompt_length=12)
    tr, ev = pairs[:80], pairs[80:]
    for i, p in enumerate(ev):
        p.index = len(tr) + i
    return tr, ev


def _train(model, tr, ev, tok, tmp_path, steps=25, **kw):
    algo = RewardModeling(tr, ev, pad_id=tok.pad_token_id, batch_size=16, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    res = train(model, algo, opt, LoopConfig(steps=steps, progress=False, warmup_steps=0, lr_schedule="constant"),
                tmp_path, tokenizer=tok)
    return algo, res


def test_reward_model_accuracy_rises_above_chance(rm_data, reviews_tokenizer, tmp_path):
    tr, ev = rm_data
    model = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, seed=0,
                               meta={"objective": "positivity", "max_length": 48, "max_prompt_length": 12})
    algo, res = _train(model, tr, ev, reviews_tokenizer, tmp_path)
    assert res.eval_metrics["accuracy"] >= 0.7, res.eval_metrics  # 32 held-out pairs; chance is 0.5
    # saved in HF format, loads back as a scorer that ranks held-out pairs the same way
    path = res.final_checkpoint / "model"
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    scorer = load_scorer(path)
    dec = reviews_tokenizer.decode
    prompts = [dec(p.prompt_ids) for p in ev]
    chosen = scorer(prompts, [dec(p.chosen_ids[:-1]) for p in ev])["positivity"]
    rejected = scorer(prompts, [dec(p.rejected_ids[:-1]) for p in ev])["positivity"]
    acc = sum(c > r for c, r in zip(chosen, rejected)) / len(ev)
    assert abs(acc - res.eval_metrics["accuracy"]) <= 1 / len(ev) + 1e-9


@pytest.mark.parametrize("kind", ["models", "heads"])
def test_ensembles_train_save_and_score(kind, rm_data, reviews_tokenizer, tmp_path):
    tr, ev = rm_data
    meta = {"objective": "reward", "aggregation": "min", "uwo_lambda": 0.5, "max_length": 48, "max_prompt_length": 12}
    model = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, ensemble_size=3,
                               kind=kind, seed=0, meta=meta)
    assert isinstance(model, RewardEnsemble) == (kind == "models")
    algo, res = _train(model, tr, ev, reviews_tokenizer, tmp_path, steps=4, ensemble_size=3, kind=kind,
                       bootstrap=True, aggregation="min")
    m = res.eval_metrics
    assert {"accuracy/member_0", "accuracy/member_2", "accuracy/mean", "accuracy/min", "accuracy/uwo"} <= set(m)
    if kind == "models":
        assert len({tuple(p[:20]) for p in algo.pools}) == 3  # each member its own bootstrap resample
    else:
        assert algo.head_weights.shape == (len(tr), 3)
    path = res.final_checkpoint / "model"
    loaded, loaded_meta = load_reward_model(path)
    assert loaded_meta["aggregation"] == "min" and loaded_meta["ensemble_size"] == 3
    scorer = load_scorer(path, return_members=True)
    out = scorer(["review of the zenta phone:"] * 2, [" i love it .", " do not buy ."])
    members = torch.tensor([out[f"reward/member_{i}"] for i in range(3)]).T
    assert torch.allclose(torch.tensor(out["reward"]), members.min(-1).values, atol=1e-5)
    uwo = load_scorer(path, aggregation="uwo")(["review of the zenta phone:"], [" i love it ."])["reward"][0]
    assert uwo == pytest.approx(float(aggregate(members[:1], "uwo", 0.5)), abs=1e-5)


def test_ensemble_resume_loads_member_weights(rm_data, reviews_tokenizer, tmp_path):
    tr, ev = rm_data
    model = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, ensemble_size=2, seed=0)
    _, res = _train(model, tr, ev, reviews_tokenizer, tmp_path, steps=2, ensemble_size=2)
    fresh = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, ensemble_size=2, seed=5)
    from prefopt.train.checkpoint import load_model_weights
    load_model_weights(fresh, res.final_checkpoint)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_scorer_from_rollout_scorers_registry(rm_data, reviews_tokenizer, tmp_path):
    from prefopt.rollout.scorers import resolve_scorer

    model = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, seed=1,
                               meta={"objective": "helpful"})
    model.save_pretrained(tmp_path / "rm")
    reviews_tokenizer.save_pretrained(tmp_path / "rm")
    scorer, _ = resolve_scorer(f"reward_model:{tmp_path / 'rm'}")
    out = scorer(["review of the zenta phone:"], [" i love it ."])
    assert list(out) == ["helpful"] and len(out["helpful"]) == 1
