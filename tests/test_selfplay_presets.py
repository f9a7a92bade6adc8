"""Every configs/selfplay/*.yaml trains 2 steps from ``prefopt train`` on reviews_rps with tiny settings;
EGPO without its look-ahead equals online IPO, and resumes exactly (no checkpoint on a half step);
Hedge labels online DPO and is checkpointed; bad input stops with a clear error."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli.config import load_config
from prefopt.cli.run import run_train
from prefopt.errors import ConfigError
from prefopt.models.config import ModelConfig
from prefopt.models.loading import load_model
from prefopt.rollout.scorers import RewardError
from prefopt.train.config import TrainConfig
from prefopt.train.metrics import read_metrics

CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "selfplay").glob("*.yaml"))
# A random tiny model never writes a style opener, so the lab judge would tie every pair: the tests
# judge by length (tests/selfplay_judges.py) and keep the lab task for prompts and gold metrics.
JUDGE = "selfplay_judges:chars"
ONLINE = ["online.prompts_per_step=2", "online.round_prompts=3", "online.steps_per_round=1",
          "online.eval_num_samples=1", "online.num_prompts=16"]
TINY = ["model.name_or_path=tiny:llama-1m", "train.steps=2", "train.batch_size=4", "train.eval_every=0",
        "train.progress=false", "data.eval_examples=2", "optim.lr=1e-3"]
PER_CONFIG = {
    "online_dpo_hedge": ONLINE + ["rollout.max_new_tokens=6", f"hedge.judges=[{JUDGE}, 'selfplay_judges:shorter']",
                                  "hedge.judge_options={}", f"hedge.gold={JUDGE}", "hedge.feedback=1.0"],
    "dno": ONLINE + ["rollout.max_new_tokens=6", f"selfplay.judge={JUDGE}", "selfplay.margin=0.0"],
}
EXPECTED = {
    "sppo": ("sppo/win_rate_chosen", "selfplay/pairs", "round"),
    "inpo": ("rewards/margin", "selfplay/pairs"),
    "dno": ("rewards/accuracy", "selfplay/win_rate_gap"),
    "selm": ("selm/ref_response_logratio", "rewards/margin"),
    "online_ipo": ("online_ipo/win_rate_margin", "selfplay/win_rate_gap"),
    "egpo": ("online_ipo/win_rate_margin", "lookahead/loss", "lookahead/grad_norm"),
    "spo": ("reward/spo/win_proportion", "adv/std"),
    "online_dpo_hedge": ("hedge/weight/selfplay_judges:chars", "hedge/regret", "hedge/regret_bound"),
    "pairwise_model": ("rewards/accuracy", "rewards/margin"),
}


def _overrides(path: Path, tmp_path: Path) -> list[str]:
    name = path.stem
    over = TINY + [f"output_dir={tmp_path}", f"run_name={name}"]
    if name == "pairwise_model":
        from prefopt.tasks.reviews_rps import write_pairwise_model_data
        data = tmp_path / "pairs.jsonl"
        write_pairwise_model_data(str(data), 24)
        return over + [f"data.path={data}", "data.eval_examples=4"]
    return over + PER_CONFIG.get(name, ONLINE + ["rollout.max_new_tokens=6", f"selfplay.judge={JUDGE}"])


def _changed(tokenizer, ckpt) -> bool:
    init = load_model(ModelConfig(name_or_path="tiny:llama-1m"), tokenizer).state_dict()
    final = load_file(ckpt / "model" / "model.safetensors")
    return any(not torch.equal(init[k], v) for k, v in final.items() if k in init)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_selfplay_config_trains_two_steps(path, reviews_tokenizer, tmp_path):
    cfg = load_config(TrainConfig, path, _overrides(path, tmp_path))
    out = run_train(cfg)
    rows = read_metrics(out.run_dir / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r and "step" in r and not any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    merged = {k for r in steps for k in r}
    missing = [k for k in EXPECTED[path.stem] if k not in merged]
    assert not missing, f"{path.stem}: missing metrics {missing}"
    if path.stem != "pairwise_model":
        assert _changed(reviews_tokenizer, out.result.final_checkpoint)
        ev = out.result.eval_metrics
        assert "lab/exploitability" in ev and 0.5 <= ev["lab/exploitability"] <= 1.0
        assert 0.0 <= ev["lab/win_rate_vs_init"] <= 1.0
    if path.stem == "spo":  # win proportions of a prompt's samples average exactly ½
        assert all(r["reward/spo/win_proportion"] == pytest.approx(0.5) for r in steps)


def _egpo(tmp_path, name, *extra):
    over = TINY + ONLINE + ["rollout.max_new_tokens=6", f"selfplay.judge={JUDGE}", "selfplay.mixture_coef=0.5",
                            f"output_dir={tmp_path}", f"run_name={name}", *extra]
    return load_config(TrainConfig, CONFIGS[0].parent / "egpo.yaml", over)


def _weights(out):
    return load_file(out.result.final_checkpoint / "model" / "model.safetensors")


def test_egpo_without_lookahead_equals_online_ipo(tmp_path):
    a = run_train(_egpo(tmp_path, "a", "selfplay.extragradient=false"))
    b = run_train(_egpo(tmp_path, "b", "algo.name=online_ipo"))
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = run_train(_egpo(tmp_path, "c"))  # with the look-ahead: a different update
    assert any(not torch.equal(wa[k], v) for k, v in _weights(c).items())


def test_egpo_resume_is_exact_and_checkpoints_hold_whole_steps(tmp_path):
    straight = run_train(_egpo(tmp_path, "s"))
    run_train(_egpo(tmp_path, "r", "train.steps=1"))
    resumed = run_train(_egpo(tmp_path, "r"), resume=True)
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)


def test_online_dpo_hedge_state_is_checkpointed(tmp_path):
    path = CONFIGS[0].parent / "online_dpo_hedge.yaml"
    out = run_train(load_config(TrainConfig, path, _overrides(path, tmp_path)))
    from prefopt.train.checkpoint import load_trainer_state
    state = load_trainer_state(out.result.final_checkpoint)
    hedge = state["algorithm"]["hedge"]
    assert hedge["hedge"]["names"] == [JUDGE, "selfplay_judges:shorter"] and hedge["labelled"] > 0
    rows = [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "hedge/regret" in r]
    # the chars judge is the gold here: it never pays, so all weight moves to it
    assert rows[-1]["hedge/weight/selfplay_judges:chars"] > rows[0]["hedge/weight/selfplay_judges:chars"] - 1e-12


@pytest.mark.parametrize("name, over, error, message", [
    ("sppo", ["selfplay.judge=selfplay_judges:out_of_range"], RewardError,
     r"judge 'selfplay_judges:out_of_range': returned 1.5 on prompt 0, pair \(0, 1\) of prompt"),
    ("dno", ["selfplay.judge=selfplay_judges:nan"], RewardError, r"judge 'selfplay_judges:nan': returned nan"),
    ("sppo", ["online.num_generations=1"], ConfigError, r"online.num_generations: sppo ranks the samples.*>= 2"),
    ("spo", ["online.num_generations=1"], ConfigError, r"online.num_generations: spo's win proportions.*>= 2"),
    ("inpo", ["selfplay.eta=0"], ConfigError, r"selfplay.eta: got 0(\.0)?, expected a number > 0"),
    ("inpo", ["algo.reference=none"], ConfigError, r"algo.reference: 'inpo'.*uses a reference policy"),
    ("online_dpo_hedge", ["hedge.judges=[lab]"], ConfigError, r"hedge.judges: got \[.lab.\], expected at least 2 judge specs"),
    ("online_dpo_hedge", ["hedge.eta=-1"], ConfigError, r"hedge.eta: got -1(\.0)?, expected a number > 0"),
    ("sppo", ["selfplay.judge=lab", "data.task=reviews"], ConfigError, r"judge 'lab': task 'reviews' has no gold"),
])
def test_bad_input_stops_with_a_clear_error(name, over, error, message, tmp_path):
    path = CONFIGS[0].parent / f"{name}.yaml"
    with pytest.raises(error, match=message):
        run_train(load_config(TrainConfig, path, _overrides(path, tmp_path) + over))


def test_egpo_interrupted_after_its_lookahead_saves_the_last_whole_step(tmp_path, monkeypatch):
    from prefopt.train.interrupt import TrainingInterrupted
    from prefopt.train.sources.selfplay import MixturePairSource

    one = run_train(_egpo(tmp_path, "one", "train.steps=1"))
    calls = {"n": 0}
    real = MixturePairSource.next_batches

    def interrupting(self, model, num_micro):
        calls["n"] += 1
        if calls["n"] == 4:  # step 2's real pass: θ is at θ_{t+½} now
            raise KeyboardInterrupt
        return real(self, model, num_micro)

    monkeypatch.setattr(MixturePairSource, "next_batches", interrupting)
    with pytest.raises(TrainingInterrupted):
        run_train(_egpo(tmp_path, "cut", "train.steps=3"))
    saved = load_file(tmp_path / "cut" / "checkpoint-1" / "model" / "model.safetensors")
    expected = _weights(one)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", ["sppo", "selm"])
def test_rounds_resume_exactly_from_a_mid_round_checkpoint(name, tmp_path):
    """A checkpoint inside a round holds its rows (ids, win rates, reference log-probs, SELM's anchor)."""
    from prefopt.train.checkpoint import load_trainer_state

    path = CONFIGS[0].parent / f"{name}.yaml"

    def cfg(run, steps):
        over = _overrides(path, tmp_path / run) + ["online.steps_per_round=2", f"train.steps={steps}"]
        return load_config(TrainConfig, path, over)

    straight = run_train(cfg("a", 3))
    run_train(cfg("b", 1))
    rows = load_trainer_state(tmp_path / "b" / name / "checkpoint-1")["algorithm"]["sources"][0]["rows"]
    assert rows and "ref_chosen" in rows[0]["x"] and (name != "selm" or rows[0]["anchor"])
    resumed = run_train(cfg("b", 3), resume=True)
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_hedge_reward_combiner_of_a_policy_gradient_preset(tmp_path):
    """rloo with hedge.scorers: the reward is the Hedge mix, the weights move to the scorer the gold
    judge agrees with, and the state rides with the rollout source in the checkpoint."""
    from prefopt.cli.config import from_dict
    from prefopt.train.checkpoint import load_trainer_state

    cfg = from_dict(TrainConfig, {
        "model": {"name_or_path": "tiny:llama-1m"}, "data": {"task": "reviews", "eval_examples": 2},
        "optim": {"lr": 1e-3}, "train": {"steps": 2, "batch_size": 4, "progress": False},
        "algo": {"name": "rloo"}, "rollout": {"max_new_tokens": 8},
        "online": {"prompts_per_step": 3, "num_generations": 4, "num_prompts": 16, "eval_num_samples": 1},
        "hedge": {"scorers": ["selfplay_judges:char_count", "selfplay_judges:neg_char_count"],
                  "gold": JUDGE, "feedback": 1.0, "temperature": 4.0, "horizon": 12},
        "output_dir": str(tmp_path), "run_name": "rloo-hedge"})
    out = run_train(cfg)
    rows = [r for r in read_metrics(out.run_dir / "metrics.jsonl") if "hedge/regret" in r]
    last = rows[-1]
    # every pair of every rollout draw is labelled: 3 prompts × 2 pairs per draw, >= 2 draws
    assert last["hedge/labelled"] >= 12 and last["hedge/labelled"] % 6 == 0
    assert last["hedge/weight/selfplay_judges:char_count"] > 0.5 > last["hedge/weight/selfplay_judges:neg_char_count"]
    assert last["hedge/regret"] <= last["hedge/regret_bound"]
    state = load_trainer_state(out.result.final_checkpoint)["algorithm"]["sources"][0]["draw"]
    assert state["labelled"] == last["hedge/labelled"] == state["hedge"]["rounds"]
    with pytest.raises(ConfigError, match=r"hedge.scorers: got \['x:y'\], expected at least 2 scorer specs"):
        from_dict(TrainConfig, {"algo": {"name": "rloo"}, "hedge": {"scorers": ["x:y"]}})


@pytest.mark.parametrize("data, message", [
    ({"algo": {"name": "sppo"}, "hedge": {"scorers": ["a:b", "c:d"]}},
     r"hedge.scorers: got \['a:b', 'c:d'\], expected unset with algo.name sppo: Hedge combines the rewards"),
    ({"algo": {"name": "grpo"}, "hedge": {"judges": ["lab", "a:b"]}},
     r"hedge.judges: got \['lab', 'a:b'\], expected unset, or selfplay.judge: hedge / online.judge: hedge"),
])
def test_a_hedge_setting_the_algorithm_does_not_read_is_an_error(data, message):
    from prefopt.cli.config import from_dict
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, data)
