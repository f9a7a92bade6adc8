"""The multi-objective presets through `prefopt train`: MODPO (margins from score columns, scorers,
implicit rewards; its term against the hand formula) and rewards-in-context (conditioned SFT rows,
statistics carried by the model); bad input fails with one line before training."""
from __future__ import annotations

import json

import pytest
import torch

from prefopt.cli.config import from_dict
from prefopt.cli.run import run_train
from prefopt.errors import ConfigError, DataError
from prefopt.tasks import get_task
from prefopt.train.config import TrainConfig

from offline_fixtures import write_jsonl


def mo_pairs(n: int = 16, seed: int = 0) -> list[dict]:
    """Corpus pairs, chosen = more informative (ties skipped), every gold score attached."""
    task = get_task("reviews")
    corpus = task.sft_corpus(8 * n, seed=seed)
    rows = []
    for i in range(0, len(corpus) - 1, 2):
        (prompt, a), (_, b) = corpus[i], corpus[i + 1]
        g = task.gold([prompt, prompt], [a, b])
        if g["informativeness"][0] == g["informativeness"][1] or a == b:
            continue
        c, r = (0, 1) if g["informativeness"][0] > g["informativeness"][1] else (1, 0)
        rows.append({"prompt": prompt, "chosen": [a, b][c], "rejected": [a, b][r],
                     "scores": {o: [g[o][c], g[o][r]] for o in task.objectives}})
        if len(rows) == n:
            break
    return rows


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("mo") / "pairs.jsonl", mo_pairs())


def _cfg(tmp_path, pairs_file, **sections) -> TrainConfig:
    data = {"model": {"name_or_path": "tiny:llama-1m"},
            "data": {"task": "reviews", "path": str(pairs_file), "eval_examples": 4},
            "train": {"steps": 2, "batch_size": 4, "progress": False, "lr_schedule": "constant"},
            "algo": {"name": "modpo"}, "modpo": {"weights": [0.5, 0.5], "margins": ["scores:brevity"]},
            "output_dir": str(tmp_path), "run_name": "run"}
    for key, value in sections.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        elif value is None:
            data.pop(section)
        else:
            data[section] = value
    return from_dict(TrainConfig, data)


def _build(cfg):
    from prefopt.cli.builders import build_algorithm, build_model
    from prefopt.cli.run import resolve_tokenizer

    tokenizer = resolve_tokenizer(cfg)
    model = build_model(cfg, tokenizer)
    algo, _ = build_algorithm(cfg, model, tokenizer)
    return algo, model, tokenizer


def test_modpo_term_is_the_hand_formula_and_dpo_at_w0_one(tmp_path, pairs_file):
    from prefopt.losses.pairwise import dpo
    from prefopt.train.algorithms.preference import pair_logps

    algo, model, tok = _build(_cfg(tmp_path, pairs_file, modpo__weights=[0.25, 0.75], modpo__margin_scales=[10.0]))
    batch = algo._collate(algo.train_rows[:4])
    out = algo.term.outputs(model, batch)
    with torch.no_grad():
        pc, pr, _, _ = pair_logps(model, batch, tok.pad_token_id)
        rc, rr, _, _ = pair_logps(algo.term.reference, batch, tok.pad_token_id)
    brevity = batch.scores["brevity"]
    r_w = (0.1 * (pc - rc) - 0.75 * 10 * brevity[:, 0]) / 0.25
    r_l = (0.1 * (pr - rr) - 0.75 * 10 * brevity[:, 1]) / 0.25
    torch.testing.assert_close(out.losses.detach(), -torch.nn.functional.logsigmoid(r_w - r_l), rtol=1e-4, atol=1e-5)

    algo1, model1, _ = _build(_cfg(tmp_path, pairs_file, modpo__weights=[1.0, 0.0]))
    b1 = algo1._collate(algo1.train_rows[:4])
    with torch.no_grad():
        pc, pr, _, _ = pair_logps(model1, b1, tok.pad_token_id)
        rc, rr, _, _ = pair_logps(algo1.term.reference, b1, tok.pad_token_id)
    torch.testing.assert_close(algo1.term.outputs(model1, b1).losses.detach(),
                               dpo(pc, pr, rc, rr, beta=0.1).losses, rtol=1e-4, atol=1e-5)


def test_modpo_trains_and_logs_margins(tmp_path, pairs_file):
    out = run_train(_cfg(tmp_path, pairs_file))
    assert out.result.steps == 2
    assert "margins/chosen_minus_rejected" in out.result.last_metrics
    assert all(v == v for k, v in out.result.last_metrics.items() if isinstance(v, float))


def test_scorer_margin_columns_equal_the_gold_scores(tmp_path, pairs_file):
    algo, _, _ = _build(_cfg(tmp_path, pairs_file, modpo__margins=["gold:brevity"]))
    for pair in algo.train_rows:
        assert pair.scores["gold:brevity"] == pytest.approx(pair.scores["brevity"])
    assert algo.term.columns == ["gold:brevity"]


def test_implicit_margin_of_the_start_itself_is_zero(tmp_path, pairs_file, reviews_tokenizer):
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model

    start = tmp_path / "start"
    load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer).save_pretrained(start)
    reviews_tokenizer.save_pretrained(start)
    algo, _, _ = _build(_cfg(tmp_path, pairs_file, model={"name_or_path": str(start), "tokenizer": None},
                             modpo__margins=[f"implicit:{start}"]))
    values = torch.tensor([p.scores[f"implicit:{start}"] for p in algo.train_rows])
    assert values.shape == (len(algo.train_rows), 2) and values.abs().max() < 1e-5


def _mod_wrong_length(prompts, responses):
    return [0.0] * (len(prompts) - 1)


@pytest.mark.parametrize("over, error, message", [
    ({"modpo__weights": [0.0, 1.0]}, ConfigError, "w0=0"),
    ({"modpo__weights": [0.6, 0.6]}, ConfigError, "summing to 1"),
    ({"modpo__weights": [-0.5, 1.5]}, ConfigError, "non-negative"),
    ({"modpo__margins": ["scores:brevity", "scores:positivity"]}, ConfigError, "modpo.margins: got 2"),
    ({"modpo__margins": ["scores:length"]}, DataError, "no 'length' margin"),
    ({"modpo__margin_scales": [1.0, 2.0]}, ConfigError, "margin_scales: got 2"),
    ({"modpo__margins": ["gold:length"]}, ConfigError, "no objective 'length'"),
    ({"modpo__margins": ["test_mo_presets:_mod_wrong_length"]}, ConfigError, "expected ("),
])
def test_modpo_bad_input_one_line_before_training(tmp_path, pairs_file, over, error, message):
    with pytest.raises(error) as info:
        _build(_cfg(tmp_path, pairs_file, **over))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def _ric_cfg(tmp_path, pairs_file, **over):
    over = {"ric": {"objectives": ["informativeness", "brevity"]}, **over}
    return _cfg(tmp_path, pairs_file, algo={"name": "ric"}, modpo=None, **over)


def test_ric_trains_on_conditioned_prompts_and_saves_its_stats(tmp_path, pairs_file, reviews_tokenizer):
    from prefopt.cli.builders.multiobjective import load_ric_stats
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model

    algo, _, tok = _build(_ric_cfg(tmp_path, pairs_file))
    assert len(algo.train_rows) == 2 * (16 - 1)  # two SFT rows per pair; 1 pair held out (a tenth of 16)
    prompt = tok.decode(algo.train_rows[0].prompt_ids)
    assert "<rm1_score>" in prompt and "<rm2_score>" in prompt and "<rm3_score>" not in prompt
    out = run_train(_ric_cfg(tmp_path, pairs_file))
    saved = out.result.final_checkpoint / "model"
    assert json.loads((saved / "config.json").read_text())["prefopt_ric"]["objectives"] == ["informativeness",
                                                                                              "brevity"]
    stats = load_ric_stats(load_model(ModelConfig(name_or_path=str(saved)), reviews_tokenizer))
    # continuing the RiC model on other data keeps its normalization
    other = write_jsonl(tmp_path / "other.jsonl", mo_pairs(12, seed=5))
    algo2, model2, _ = _build(_ric_cfg(tmp_path, other, model={"name_or_path": str(saved), "tokenizer": None}))
    assert load_ric_stats(model2) == stats
    with pytest.raises(ConfigError, match="was conditioned on"):
        _build(_ric_cfg(tmp_path, other, model={"name_or_path": str(saved), "tokenizer": None},
                        ric={"objectives": ["brevity", "informativeness"]}))


def test_ric_needs_scored_rows(tmp_path, pairs_file):
    with pytest.raises(ConfigError, match="data.path: ric needs"):
        _build(_ric_cfg(tmp_path, pairs_file, data={"task": "reviews"}))
    with pytest.raises(DataError, match="positivity"):
        rows = [dict(r, scores={"informativeness": r["scores"]["informativeness"]}) for r in mo_pairs()]
        _build(_ric_cfg(tmp_path, write_jsonl(tmp_path / "x.jsonl", rows),
                        ric={"objectives": ["informativeness", "positivity"]}))
