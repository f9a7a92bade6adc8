"""Configs and inputs that cannot mean anything are refused before any work, in one line naming the
key (or file and line), the value and what was expected; key=value overrides work anywhere."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from prefopt.cli.config import describe, from_dict
from prefopt.cli.main import _parser, main, split_overrides
from prefopt.data.loaders import read_records, write_jsonl
from prefopt.errors import ConfigError, DataError, OutputError, PrefoptError
from prefopt.train.config import TrainConfig

# (overrides of the default TrainConfig, the whole error line after "error: ")
BAD_CONFIGS = [
    (["algo.beta=0"], "algo.beta: got 0.0, expected a number > 0"),
    (["algo.beta=-0.1"], "algo.beta: got -0.1, expected a number > 0"),
    (["train.steps=0"], "train.steps: got 0, expected an integer >= 1"),
    (["train.batch_size=0"], "train.batch_size: got 0, expected an integer >= 1"),
    (["train.grad_accum=0"], "train.grad_accum: got 0, expected an integer >= 1"),
    (["train.warmup_steps=-1"], "train.warmup_steps: got -1, expected an integer >= 0"),
    (["train.save_every=-1"], "train.save_every: got -1, expected an integer >= 0"),
    (["train.eval_every=-5"], "train.eval_every: got -5, expected an integer >= 0"),
    (["train.threads=-2"], "train.threads: got -2, expected an integer >= 0"),
    (["train.keep_checkpoints=0"], "train.keep_checkpoints: got 0, expected an integer >= 1"),
    (["train.min_lr_ratio=1.5"], "train.min_lr_ratio: got 1.5, expected a number in [0, 1]"),
    (["train.max_grad_norm=-1"], "train.max_grad_norm: got -1.0, expected a number >= 0"),
    (["train.seed=-1"], "train.seed: got -1, expected an integer in [0, 4294967295]"),
    (["algo.name=kto", "train.batch_size=1"],
     "train.batch_size: got 1, expected an integer >= 2 with algo.name=kto "
     "(its KL baseline pairs mismatched examples)"),
    (["optim.lr=0"], "optim.lr: got 0.0, expected a number > 0"),
    (["optim.lr=-1e-3"], "optim.lr: got -0.001, expected a number > 0"),
    (["optim.lr=.inf"], "optim.lr: got inf, expected a finite number > 0"),
    (["online.reward_penalty=.nan"], "online.reward_penalty: got nan, expected a finite number"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay: got -0.1, expected a number >= 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas: got (0.9, 1.0), expected two numbers in [0, 1)"),
    (["data.max_length=1"], "data.max_length: got 1, expected an integer >= 2"),
    (["data.max_prompt_length=0"], "data.max_prompt_length: got 0, expected an integer >= 1"),
    (["data.num_examples=0"], "data.num_examples: got 0, expected an integer >= 1"),
    (["data.eval_examples=-1"], "data.eval_examples: got -1, expected an integer >= 0"),
    (["model.max_positions=0"], "model.max_positions: got 0, expected an integer >= 1"),
    (["model.init_seed=-3"], "model.init_seed: got -3, expected an integer in [0, 4294967295]"),
    (["model.dtype=float64"], "model.dtype: got 'float64', expected one of 'float32', 'bfloat16', 'float16'; "
                                       "did you mean 'float16'?"),
    (["lora.r=0"], "lora.r: got 0, expected an integer >= 1"),
    (["lora.alpha=0"], "lora.alpha: got 0.0, expected a number > 0"),
    (["lora.dropout=1"], "lora.dropout: got 1.0, expected a number in [0, 1)"),
    (["reward.ensemble_size=0"], "reward.ensemble_size: got 0, expected an integer >= 1"),
    (["reward.uwo_lambda=-1"], "reward.uwo_lambda: got -1.0, expected a number >= 0"),
    (["reward.margin=-0.5"], "reward.margin: got -0.5, expected a number >= 0"),
    (["rollout.temperature=-1"], "rollout.temperature: got -1.0, expected a number >= 0"),
    (["rollout.top_p=0"], "rollout.top_p: got 0.0, expected a number in (0, 1]"),
    (["rollout.top_p=1.5"], "rollout.top_p: got 1.5, expected a number in (0, 1]"),
    (["rollout.top_k=-1"], "rollout.top_k: got -1, expected an integer >= 0"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens: got 0, expected an integer >= 1"),
    (["rollout.stop_strings=['']"], "rollout.stop_strings: got [''], expected no empty strings"),
    (["online.kl_coef=-0.1"], "online.kl_coef: got -0.1, expected a number >= 0"),
    (["online.kl_target=0"], "online.kl_target: got 0.0, expected a number > 0"),
    (["online.clip_low=1"], "online.clip_low: got 1.0, expected a number in (0, 1)"),
    (["online.gamma=1.1"], "online.gamma: got 1.1, expected a number in [0, 1]"),
    (["online.num_generations=0"], "online.num_generations: got 0, expected an integer >= 1"),
    (["online.epochs=0"], "online.epochs: got 0, expected an integer >= 1"),
    (["online.max_resample=-1"], "online.max_resample: got -1, expected an integer >= 0"),
    (["algo.loss=ipoo"], "algo.loss: unknown loss 'ipoo'; did you mean 'ipo'? (known: {losses})"),
    (["algo.loss_weights={dpo: 1, sipmo: 0.5}"],
     "algo.loss_weights.sipmo: unknown loss 'sipmo'; did you mean 'simpo'? (known: {losses})"),
    (["train.steps=many"], "train.steps: got 'many' (str), expected int"),
    (["train.stepz=3"], "unknown config key 'train.stepz'; did you mean 'train.steps'? (valid: steps, batch_size, "
                        "grad_accum, max_grad_norm, lr_schedule, warmup_steps, min_lr_ratio, seed, eval_every, "
                        "eval_on_start, save_every, keep_checkpoints, checkpoint_fallback, progress, tensorboard, wandb_project, threads, precision)"),
]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output_dir 'runs' lands here
    return tmp_path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0][len("error: "):]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_key_value_and_expectation(in_tmp, capsys, overrides, message):
    # --check runs exactly the validation a training run starts with
    from prefopt.losses import PAIRWISE_LOSSES
    message = message.replace("{losses}", ", ".join(sorted(PAIRWISE_LOSSES)))
    assert main(["train", "--check", *overrides]) == 2
    assert _error_line(capsys) == message
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainConfig, _nested(overrides))
    assert str(exc.value) == message and isinstance(exc.value, PrefoptError)


def _nested(overrides: list[str]) -> dict:
    from prefopt.cli.config import apply_override
    data: dict = {}
    for o in overrides:
        apply_override(data, o)
    return data


def test_defaults_and_every_shipped_yaml_still_pass_the_range_checks():
    from prefopt.cli.config import load_config
    from_dict(TrainConfig, {})
    from prefopt.cli.front import FrontConfig
    for path in sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml")):
        load_config(FrontConfig if path.name.startswith("front_") else TrainConfig, path)  # front_*: `prefopt front`


def test_a_bad_run_does_no_work(in_tmp, capsys):
    assert main(["train", "train.batch_size=0", "train.steps=1"]) == 2  # used to fail after loading everything
    assert _error_line(capsys) == "train.batch_size: got 0, expected an integer >= 1"
    assert not (in_tmp / "runs").exists()


def test_configs_built_in_code_are_validated_too(tmp_path):
    from prefopt.cli.run import run_train
    from prefopt.train.config import LoopConfig
    with pytest.raises(ConfigError, match=r"^train.steps: got 0, expected an integer >= 1$"):
        run_train(TrainConfig(train=LoopConfig(steps=0), output_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_other_commands_validate_their_configs(in_tmp, capsys):
    assert main(["data", "make", "reviews", "--model", "tiny:llama-1m", "--out", "p.jsonl", "flip_rate=0.6"]) == 2
    assert _error_line(capsys) == "flip_rate: got 0.6, expected a number in [0, 0.5)"
    assert main(["demo", "beta=0"]) == 2
    assert _error_line(capsys) == "beta: got 0.0, expected a number > 0"
    assert main(["compare", "flip_rates=[0.1,0.7]"]) == 2
    assert _error_line(capsys) == "flip_rates[1]: got 0.7, expected a number in [0, 0.5)"
    assert main(["compare", "steps=0"]) == 2
    assert _error_line(capsys) == "steps: got 0, expected an integer >= 1"


def test_help_lists_each_range_from_the_field_metadata():
    rows = {key: help_ for key, _, help_ in describe(TrainConfig)}
    assert rows["train.batch_size"].endswith("Expected: an integer >= 1.")
    assert rows["online.clip_low"].endswith("Expected: a number in (0, 1).")
    assert "Expected" not in rows["train.progress"]


# --------------------------------------------------------------------------- --check: inputs
BAD_INPUTS = [
    (["model.name_or_path=./no/such/model"],
     "model.name_or_path: got './no/such/model', expected an existing path (no such file or directory)"),
    (["model.name_or_path=tiny:llama-2m"],
     "model.name_or_path: got 'tiny:llama-2m', expected one of tiny:llama-1m, tiny:llama-5m, tiny:llama-25m, "
     "tiny:gpt2-1m, tiny:gpt2-5m, tiny:gpt2-25m"),
    (["data.task=null"], "model.tokenizer: got null, expected a tokenizer path or data.task to build one "
                         "(tiny model 'tiny:llama-1m')"),
    (["data.path=missing.jsonl"], "data.path: got 'missing.jsonl', expected an existing path (no such file or directory)"),
    (["data.eval_path=/no/eval.csv"], "data.eval_path: got '/no/eval.csv', expected an existing path "
                                      "(no such file or directory)"),
    (["data.task=revews"], "data.task: unknown task 'revews'; did you mean 'reviews'? (known: arithmetic, reviews, reviews_rps)"),
    (["algo.name=grpo", "online.reward=[{name: 'reward_model:./rm'}]"],
     "online.reward[0].name: got './rm', expected an existing path (no such file or directory)"),
    (["output_dir=taken.jsonl/runs"], "output_dir: got 'taken.jsonl/runs', expected a directory "
                                      "({tmp}/taken.jsonl is a file)"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_check_refuses_missing_inputs(in_tmp, capsys, overrides, message):
    (in_tmp / "taken.jsonl").write_text("")
    assert main(["train", "--check", *overrides]) == 2
    assert _error_line(capsys) == message.format(tmp=in_tmp)


def test_check_accepts_existing_inputs_and_notes_hub_names(in_tmp, capsys):
    (in_tmp / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert main(["train", "--check", "data.path=pairs.jsonl"]) == 0
    assert capsys.readouterr().out == "config OK\n"
    assert main(["train", "--check", "data.path=org/prefs", "model.name_or_path=org/model"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "config OK" and len(out) == 3
    assert "data.path 'org/prefs' is not a local path" in out[1] and "model.name_or_path 'org/model'" in out[0]


def test_check_refuses_a_missing_resume_dir(in_tmp, capsys):
    assert main(["train", "--resume", "runs/none", "--check"]) == 2
    assert _error_line(capsys) == "config file not found: runs/none/config.yaml"


# --------------------------------------------------------------------------- unwritable / full output
@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot create files in (root ignores permission bits: use /sys)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    try:
        import tempfile
        with tempfile.TemporaryFile(dir="/sys"):
            pass
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no unwritable directory available to root here")


def test_unwritable_output_dir_is_one_line_naming_it(in_tmp, capsys, unwritable_dir):
    out = unwritable_dir / "runs"
    assert main(["train", "--check", f"output_dir={out}"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"output_dir: got '{out}', expected a writable directory ({unwritable_dir}: ")
    assert main(["data", "make", "reviews", "--model", "tiny:llama-1m", "--out", str(out / "p.jsonl")]) == 2
    assert _error_line(capsys).startswith(f"--out: got '{out}', expected a writable directory ({unwritable_dir}: ")


def test_full_disk_during_a_run_is_one_line_naming_the_run(in_tmp, capsys, monkeypatch):
    from prefopt.train import metrics

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name

    monkeypatch.setattr(metrics.MetricsLogger, "log", full)
    rc = main(["train", "algo.name=sft", "train.steps=1", "data.num_examples=8", "data.eval_examples=2",
               "train.batch_size=2", "train.progress=false", "run_name=full"])
    assert rc == 2
    assert _error_line(capsys) == f"cannot write {Path('runs') / 'full'}: No space left on device"


def test_full_disk_while_writing_jsonl_leaves_no_temp_file(tmp_path, monkeypatch):
    import prefopt.data.loaders as loaders

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loaders.json, "dumps", full)
    with pytest.raises(OutputError) as exc:
        write_jsonl(tmp_path / "out.jsonl", [{"a": 1}])
    assert str(exc.value) == f"cannot write {tmp_path / 'out.jsonl'}: No space left on device"
    assert isinstance(exc.value, PrefoptError) and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- non-UTF-8 data
@pytest.mark.parametrize("name, content, where", [
    ("d.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9"}\n', "line 2"),
    ("d.csv", b"prompt,chosen,rejected\na,b,c\nx,y,\xff\xfe\n", "line 3"),
    ("d.json", b'[\n {"prompt": "a"},\n {"prompt": "\x80"}\n]\n', "line 3"),
])
def test_non_utf8_data_names_file_and_line(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        read_records(path)
    assert str(exc.value).startswith(f"{path}, {where}: not valid UTF-8 (byte 0x")
    assert "\n" not in str(exc.value)


def test_non_utf8_data_in_a_run_is_one_line(in_tmp, capsys):
    (in_tmp / "p.jsonl").write_bytes(b'{"prompt": "\xe9", "chosen": "b", "rejected": "c"}\n')
    assert main(["train", "data.path=p.jsonl", "train.steps=1"]) == 2
    assert _error_line(capsys) == "p.jsonl, line 1: not valid UTF-8 (byte 0xe9 at column 13); re-save the file as UTF-8"


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffprompt,chosen,rejected\na,b,c\n".encode())
    assert read_records(path).rows == [{"prompt": "a", "chosen": "b", "rejected": "c"}]


# --------------------------------------------------------------------------- overrides anywhere
def test_overrides_are_taken_from_anywhere_but_option_values_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a=b.yaml").write_text("")
    parser = _parser()
    argv = ["data", "make", "reviews", "--model", "m", "--out", "x=1.jsonl", "flip_rate=0.1", "num_prompts=4"]
    assert split_overrides(argv, parser) == (argv[:7], ["flip_rate=0.1", "num_prompts=4"])
    argv = ["train", "a=b.yaml", "--check", "train.steps=3", "--", "x=1"]
    assert split_overrides(argv, parser) == (["train", "a=b.yaml", "--check", "--", "x=1"], ["train.steps=3"])


def test_readme_data_make_example_works_as_written(in_tmp, capsys):
    rc = main(["data", "make", "reviews", "--model", "tiny:llama-1m", "--out", "prefs.jsonl", "flip_rate=0.1",
               "num_prompts=2", "sampling.max_new_tokens=4"])
    assert rc == 0, capsys.readouterr().err
    assert "pairs to prefs.jsonl" in capsys.readouterr().out and (in_tmp / "prefs.jsonl").exists()


def test_train_config_check_with_overrides_after_the_flag(in_tmp, capsys):
    (in_tmp / "c.yaml").write_text("train:\n  steps: 5\n")
    assert main(["train", "c.yaml", "--check", "train.steps=7", "algo.beta=0.2"]) == 0
    assert capsys.readouterr().out == "config OK\n"
    assert main(["train", "c.yaml", "--check", "train.steps=0"]) == 2
    assert _error_line(capsys) == "train.steps: got 0, expected an integer >= 1"


def test_overrides_for_a_command_without_config_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["tasks", "x=1"])
    assert "'tasks' takes no key=value overrides: x=1" in capsys.readouterr().err
