from pathlib import Path

import pytest

from prefopt.cli.config import apply_override, from_dict, load_config
from prefopt.errors import ConfigError
from prefopt.train.config import TrainConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_defaults_validate():
    cfg = from_dict(TrainConfig, {})
    assert cfg.train.steps > 0 and cfg.optim.name == "adamw"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stepz'; did you mean 'train.steps'"):
        from_dict(TrainConfig, {"train": {"stepz": 3}})


def test_type_error_names_key_value_and_expectation():
    with pytest.raises(ConfigError, match=r"train.steps: got 'many' \(str\), expected int"):
        from_dict(TrainConfig, {"train": {"steps": "many"}})


def test_literal_error_suggests():
    with pytest.raises(ConfigError, match=r"train.lr_schedule: got 'cosin'.*did you mean 'cosine'"):
        from_dict(TrainConfig, {"train": {"lr_schedule": "cosin"}})


def test_float_from_yaml_string_and_int_coercion():
    cfg = from_dict(TrainConfig, {"optim": {"lr": "1e-4"}, "algo": {"beta": 1}})
    assert cfg.optim.lr == 1e-4 and cfg.algo.beta == 1.0 and isinstance(cfg.algo.beta, float)


def test_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 5\n")
    cfg = load_config(TrainConfig, path, ["train.steps=7", "algo.loss=ipo", "data.path=null"])
    assert cfg.train.steps == 7 and cfg.algo.loss == "ipo" and cfg.data.path is None


def test_override_without_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override({}, "train.steps")


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, "/nonexistent/x.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.name) for p in CONFIGS])
def test_every_shipped_config_validates(path):
    from prefopt.cli.front import FrontConfig
    load_config(FrontConfig if path.name.startswith("front_") else TrainConfig, path)  # front_*: `prefopt front`


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 2


def test_override_with_invalid_yaml_names_the_override():
    from prefopt.cli.config import load_config
    from prefopt.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"override 'model.trainable=\[\"\^a\\.b\"\]': the value is not valid YAML"):
        load_config(TrainConfig, None, ['model.trainable=["^a\\.b"]'])
    cfg = load_config(TrainConfig, None, ["model.trainable=['^a\\.b']"])
    assert cfg.model.trainable == ["^a\\.b"]
