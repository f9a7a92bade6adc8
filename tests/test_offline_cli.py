"""Every P0 and P1 loss, KTO and reward models train from the CLI, on lab pairs and on a
conversational dataset; bad input fails with one clear line."""
import json
import math

import pytest

from prefopt.cli.main import main
from prefopt.losses import PAIRWISE_LOSSES
from prefopt.train.metrics import read_metrics

from offline_fixtures import base_config, lab_pairs, one_thread, to_conversational, to_unpaired, write_jsonl  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("offline-cli")
    pairs = lab_pairs(24)
    return {"lab": write_jsonl(d / "lab.jsonl", pairs),
            "conv": write_jsonl(d / "conv.jsonl", to_conversational(pairs)),
            "kto": write_jsonl(d / "kto.jsonl", to_unpaired(pairs)),
            "kto_conv": write_jsonl(d / "kto_conv.jsonl", to_unpaired(to_conversational(pairs, system=False)))}


def _train(path, out, *extra):
    config = out / "base.yaml"
    config.write_text("train: {progress: false, threads: 1}\n")
    return main(["train", str(config)] + base_config(path, out) + list(extra))


def _ok(capsys, rc):
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


def _reference(loss: str) -> str:
    return "none" if PAIRWISE_LOSSES[loss].reference_free else "precomputed"


@pytest.mark.parametrize("loss", sorted(PAIRWISE_LOSSES))
def test_every_pairwise_loss_trains_on_lab_and_conversational_data(loss, data, tmp_path, capsys):
    for kind, extra in (("lab", []), ("conv", ["data.chat_template=simple"])):
        rc = _train(data[kind], tmp_path, f"algo.loss={loss}", f"algo.reference={_reference(loss)}",
                    f"run_name={kind}", *extra)
        _ok(capsys, rc)
        rows = read_metrics(tmp_path / kind / "metrics.jsonl")
        steps = [r for r in rows if "loss" in r and "step" in r and r["step"] >= 1]
        # non-finite floats are logged as strings ("nan"), so a finite loss must be a float
        assert len(steps) == 2 and all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in steps)
        assert rows[0]["data/conversational"] == (22 if kind == "conv" else 0)  # 24 pairs, 2 held out


@pytest.mark.parametrize("kind", ["kto", "kto_conv", "lab"])
def test_kto_trains_on_unpaired_conversational_and_pairwise_data(kind, data, tmp_path, capsys):
    _ok(capsys, _train(data[kind], tmp_path, "algo.name=kto", "algo.reference=precomputed", "run_name=k",
                       "data.chat_template=simple"))
    first = read_metrics(tmp_path / "k" / "metrics.jsonl")[0]
    assert first["data/desirable"] > 0 and first["data/undesirable"] > 0
    assert ("data/unpaired_from_pairs" in first) == (kind == "lab")


def test_reward_model_and_ensemble_from_cli(data, tmp_path, capsys):
    _ok(capsys, _train(data["lab"], tmp_path, "algo.name=reward_model", "run_name=rm", "reward.objective=positivity"))
    _ok(capsys, _train(data["conv"], tmp_path, "algo.name=reward_model", "run_name=ens", "reward.ensemble_size=2",
                       "reward.bootstrap=true", "data.chat_template=simple"))
    from prefopt.models.reward import load_scorer
    single = load_scorer(tmp_path / "rm" / "checkpoint-2" / "model")
    assert list(single(["review of the zenta phone:"], [" i love it ."])) == ["positivity"]
    ens = load_scorer(tmp_path / "ens" / "checkpoint-2" / "model", return_members=True)
    out = ens([[{"role": "user", "content": "review of the zenta phone:"}]], ["i love it ."])
    assert set(out) == {"reward", "reward/member_0", "reward/member_1", "reward/std"}


def test_combined_losses_lora_and_merged_save(data, tmp_path, capsys):
    rc = _train(data["lab"], tmp_path, "algo.loss_weights={dpo: 1.0, bco_pair: 0.5, simpo: 0.2}",
                "algo.loss_hparams={simpo: {gamma: 0.3}}", "algo.reference=lora", "lora.enabled=true", "lora.r=4",
                "lora.save=both", "run_name=mix")
    _ok(capsys, rc)
    metrics = [r for r in read_metrics(tmp_path / "mix" / "metrics.jsonl") if "dpo/loss" in r]
    assert metrics and "bco_pair/loss" in metrics[0] and "simpo/loss" in metrics[0]
    assert (tmp_path / "mix" / "checkpoint-2" / "model" / "adapter_config.json").exists()
    merged = tmp_path / "mix" / "merged"
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    # the merged model is a plain causal LM the next stage can start from
    _ok(capsys, _train(data["lab"], tmp_path, f"model.name_or_path={merged}", "algo.reference=precomputed",
                       "run_name=next"))


def test_precomputed_reference_is_reused_across_runs(data, tmp_path, capsys):
    for name in ("a", "b"):
        _ok(capsys, _train(data["lab"], tmp_path, "algo.reference=precomputed", f"run_name={name}",
                           "model.init_seed=123"))
    hits = [read_metrics(tmp_path / n / "metrics.jsonl")[0]["reference/cache_hit"] for n in ("a", "b")]
    assert hits[1] == 1.0


@pytest.mark.parametrize("overrides,message", [
    (["algo.loss=dpoo"], "unknown loss 'dpoo'; did you mean 'dpo'"),
    (["algo.loss=sigmoid"], "did you mean 'dpo'"),
    (["algo.loss=kto"], "set algo.name: kto"),
    (["algo.reference=none"], "loss 'dpo' needs a reference policy"),
    (["algo.reference=lora"], "set lora.enabled: true"),
    (["algo.name=kto", "algo.loss_hparams={desirable: 2}"], "kto got unknown hyper-parameter"),
    (["algo.loss_weights={dpo: 1.0}", "algo.loss_hparams={beta: 1}"], "keyed by loss name"),
])
def test_bad_configs_fail_in_one_line(overrides, message, data, tmp_path, capsys):
    rc = _train(data["lab"], tmp_path, *overrides)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_kto_data_given_to_a_pairwise_loss(data, tmp_path, capsys):
    rc = _train(data["kto"], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "kto.jsonl, row 1" in err and "algo.name: kto" in err


def test_reference_free_loss_with_reference_config_warns_once(data, tmp_path, capsys, caplog):
    from prefopt.cli.builders.offline import _WARNED
    _WARNED.clear()
    with caplog.at_level("WARNING"):
        for name in ("s1", "s2"):
            _ok(capsys, _train(data["lab"], tmp_path, "algo.loss=simpo", "algo.reference=copy", f"run_name={name}"))
    assert caplog.text.count("reference-free") == 1


def test_bad_rows_skipped_and_counted(data, tmp_path, capsys):
    rows = [json.loads(line) for line in data["lab"].read_text().splitlines()]
    rows[5]["rejected"] = None
    rows[6] = {**rows[6], "rejected": rows[6]["chosen"]}  # identical pair
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    rc = _train(path, tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "row 6: missing field 'rejected'" in err
    _ok(capsys, _train(path, tmp_path, "data.on_bad_row=skip", "run_name=skip"))
    first = read_metrics(tmp_path / "skip" / "metrics.jsonl")[0]
    assert first["data/bad_rows_skipped"] == 1 and first["data/identical_pairs_dropped"] == 1


def test_qlora_4bit_trains_with_lora_reference_and_merges(data, tmp_path, capsys, reviews_tokenizer):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.models.tiny import tiny_config

    base = tmp_path / "base"
    config = tiny_config("llama-1m", len(reviews_tokenizer), pad_token_id=reviews_tokenizer.pad_token_id,
                         eos_token_id=reviews_tokenizer.eos_token_id)
    config.intermediate_size = 384  # bitsandbytes' CPU 4-bit kernel wants widths divisible by its block
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    reviews_tokenizer.save_pretrained(base)
    _ok(capsys, _train(data["lab"], tmp_path, f"model.name_or_path={base}", "lora.enabled=true", "lora.quantize=4bit",
                       "lora.r=4", "algo.reference=lora", "lora.save=merged", "run_name=q"))
    merged = load_model(ModelConfig(name_or_path=str(tmp_path / "q" / "merged")))
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_quantize_without_lora_is_refused(data, tmp_path, capsys):
    rc = _train(data["lab"], tmp_path, "lora.quantize=4bit")
    assert rc == 2 and "set lora.enabled: true (QLoRA)" in capsys.readouterr().err


def test_sft_on_a_conversational_messages_dataset(data, tmp_path, capsys):
    rows = [{"messages": [{"role": "system", "content": "you write reviews ."},
                          {"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["chosen"].strip()}]} for r in lab_pairs(12)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    _ok(capsys, _train(path, tmp_path, "algo.name=sft", "data.chat_template=simple", "run_name=sft"))
    first = read_metrics(tmp_path / "sft" / "metrics.jsonl")[0]
    assert first["data/conversational"] == first["data/train_examples"] > 0
