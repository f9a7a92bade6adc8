"""`prefopt front` end to end on reviews with tiny settings, for each method: front.json (points,
means ± standard error, flags, reference, hypervolume, costs), front.png, report.html; a rerun
recomputes nothing; bad input fails with one line before any training."""
from __future__ import annotations

import json

import pytest
import yaml

from prefopt.cli.main import main

from offline_fixtures import write_jsonl
from test_mo_presets import mo_pairs

TINY_LOOP = {"steps": 1, "batch_size": 4, "progress": False, "lr_schedule": "constant", "threads": 1}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("front")
    pairs = write_jsonl(d / "pairs.jsonl", mo_pairs(12))
    # a briefly fine-tuned start, so samples differ in informativeness and brevity (rewards have spread)
    from prefopt.cli.demo import reviews_sft_config
    from prefopt.cli.run import run_train
    sft = run_train(reviews_sft_config("tiny:llama-1m", seed=0, steps=30, lr=3e-3, examples=480, output_dir=d,
                                       loop={"batch_size": 16, "progress": False}, eval_examples=0))
    common = {"model": {"name_or_path": str(sft.result.final_checkpoint / "model")},
              "data": {"task": "reviews", "eval_examples": 2}}
    bases = {
        "online": {**common, "train": TINY_LOOP, "algo": {"name": "rloo"}, "rollout": {"max_new_tokens": 16},
                   "online": {"prompts_per_step": 2, "num_generations": 4, "eval_num_samples": 1, "eval_kl": False}},
        "modpo": {**common, "data": {**common["data"], "path": str(pairs)}, "train": TINY_LOOP,
                  "algo": {"name": "modpo"}, "modpo": {"weights": [0.5, 0.5], "margins": ["scores:brevity"]}},
        "ric": {**common, "data": {**common["data"], "path": str(pairs)}, "train": TINY_LOOP, "algo": {"name": "ric"},
                "ric": {"rounds": 1, "round_prompts": 3, "round_steps": 1}},
    }
    paths = {}
    for name, data in bases.items():
        paths[name] = d / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(data))
    return paths


def _front(configs, out, method, base, *extra):
    args = ["front", f"method={method}", f"train_config={configs[base]}", "objectives=[informativeness,brevity]",
            "grid=2", "eval_prompts=3", "eval_samples=2", "max_new_tokens=6", "progress=false", *extra,
            "--out", str(out)]
    return main(args)


def _load(out):
    return json.loads((out / "front.json").read_text())


@pytest.mark.parametrize("method, base, points, shared_steps", [
    ("morlhf", "online", 3, 0), ("soups", "online", 3, 2), ("modpo", "modpo", 2, 0), ("ric", "ric", 3, 2)])
def test_front_end_to_end_and_resume(configs, tmp_path, monkeypatch, capsys, method, base, points, shared_steps):
    out = tmp_path / method
    assert _front(configs, out, method, base) == 0, capsys.readouterr().err
    front = _load(out)
    assert front["method"] == method and front["objectives"] == ["informativeness", "brevity"]
    assert len(front["points"]) == points  # modpo: the w0 = 0 vector is skipped (the loss divides by w0)
    assert front["hypervolume"] is not None and front["hypervolume"] >= 0
    assert front["shared_cost"]["gradient_steps"] == shared_steps
    for p in front["points"]:
        assert set(p["means"]) == {"positivity", "informativeness", "brevity"}  # all gold objectives evaluated
        assert p["n"] == 6 and p["stderr"]["brevity"] is not None
        assert p["cost"]["gradient_steps"] == (1 if method in ("morlhf", "modpo") else 0)
    if method == "morlhf":
        assert all(p["cost"]["sampled_tokens"] > 0 for p in front["points"])
    assert any(p["nondominated"] for p in front["points"])
    assert (out / "front.png").stat().st_size > 0 and "hypervolume" in (out / "report.html").read_text()

    # a rerun neither trains nor evaluates again
    import prefopt.cli.run as run
    import prefopt.eval.front as evaluation
    monkeypatch.setattr(run, "run_train", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(evaluation, "evaluate_policy", lambda *a, **k: pytest.fail("evaluated again"))
    assert _front(configs, out, method, base) == 0
    assert _load(out)["points"] == front["points"] and _load(out)["hypervolume"] == front["hypervolume"]


def test_morlhf_points_train_on_their_scalarized_reward(configs, tmp_path):
    out = tmp_path / "m"
    assert _front(configs, out, "morlhf", "online", "weights=[[0.25,0.75]]") == 0
    saved = yaml.safe_load(next(out.glob("points/*/train/config.yaml")).read_text())
    assert saved["online"]["reward"][0]["weights"] == {"informativeness": 0.25, "brevity": 0.75}
    row = [json.loads(x) for x in next(out.glob("points/*/train/metrics.jsonl")).read_text().splitlines()][1]
    assert "reward/gold/informativeness" in row and "reward/gold/brevity" in row  # per-objective rewards logged


@pytest.mark.parametrize("extra, base, message", [
    (["objectives=[informativeness,length]"], "online", "unknown objective(s) ['length'] (available: positivity, "
                                                        "informativeness, brevity)"),
    (["weights=[[0.7,0.7]]"], "online", "summing to 1"),
    (["weights=[[-0.5,1.5]]"], "online", "non-negative"),
    (["reference=[0.0]"], "online", "has 1 values for 2 objectives"),
    (["method=soups"], "modpo", "is not an online algorithm"),
    (["method=modpo"], "online", "expected 'modpo'"),
    (["soup_members=[a]", "method=soups"], "online", "expected one per objective"),
])
def test_bad_input_fails_before_any_training(configs, tmp_path, monkeypatch, capsys, extra, base, message):
    import prefopt.cli.run as run
    monkeypatch.setattr(run, "run_train", lambda *a, **k: pytest.fail("trained"))
    assert _front(configs, tmp_path / "bad", "morlhf", base, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_reference_not_dominated_is_refused(configs, tmp_path, capsys):
    out = tmp_path / "r"
    assert _front(configs, out, "soups", "online", "reference=[5.0,5.0]") == 2
    assert "is not dominated by the front" in capsys.readouterr().err
    # the evaluated point was saved first; a resume with a good reference completes
    assert len(_load(out)["points"]) == 1
    assert _front(configs, out, "soups", "online", "reference=[-1.0,-1.0]") == 0
    assert len(_load(out)["points"]) == 3 and _load(out)["reference"] == [-1.0, -1.0]


def test_soup_members_of_different_architectures_are_refused(tmp_path, reviews_tokenizer, configs, capsys):
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model

    dirs = []
    for name in ("tiny:llama-1m", "tiny:gpt2-1m"):
        d = tmp_path / name.split(":")[1]
        load_model(ModelConfig(name_or_path=name), reviews_tokenizer).save_pretrained(d)
        dirs.append(str(d))
    assert _front(configs, tmp_path / "s", "soups", "online", f"soup_members=[{dirs[0]},{dirs[1]}]") == 2
    assert "soups need one architecture" in capsys.readouterr().err


def test_a_training_left_without_a_checkpoint_is_restarted(configs, tmp_path):
    from prefopt.cli.front_methods import weights_label

    out = tmp_path / "k"
    stale = out / "points" / weights_label((0.5, 0.5)) / "train"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # killed before its first checkpoint
    assert _front(configs, out, "morlhf", "online", "weights=[[0.5,0.5]]") == 0
    assert (stale / "trained.json").exists() and "9.0" not in (stale / "metrics.jsonl").read_text()
