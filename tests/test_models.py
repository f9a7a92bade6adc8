import pytest
import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.models.config import ModelConfig
from prefopt.models.loading import count_parameters, load_model, load_tokenizer
from prefopt.models.tiny import TINY_MODELS


@pytest.mark.parametrize("name,low,high", [("tiny:llama-1m", 0.5e6, 1.5e6), ("tiny:gpt2-1m", 0.5e6, 1.5e6),
                                           ("tiny:llama-25m", 20e6, 30e6), ("tiny:gpt2-25m", 20e6, 30e6)])
def test_tiny_sizes(name, low, high, reviews_tokenizer):
    with torch.device("meta"):
        model = load_model(ModelConfig(name_or_path=name), reviews_tokenizer)
    assert low <= count_parameters(model) <= high


@pytest.mark.parametrize("name", ["tiny:llama-1m", "tiny:gpt2-1m"])
def test_save_load_roundtrip_same_logits(name, reviews_tokenizer, tmp_path):
    model = load_model(ModelConfig(name_or_path=name, init_seed=3), reviews_tokenizer).eval()
    model.save_pretrained(tmp_path / "m")
    reviews_tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(ModelConfig(name_or_path=str(tmp_path / "m"))).eval()
    tok = load_tokenizer(str(tmp_path / "m"))
    ids = torch.tensor([tok("review of the zenta phone: the battery is great .")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_init_seed_is_deterministic(reviews_tokenizer):
    a = load_model(ModelConfig(name_or_path="tiny:llama-1m", init_seed=1), reviews_tokenizer)
    b = load_model(ModelConfig(name_or_path="tiny:llama-1m", init_seed=1), reviews_tokenizer)
    c = load_model(ModelConfig(name_or_path="tiny:llama-1m", init_seed=2), reviews_tokenizer)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_bad_model_inputs(reviews_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tiny:llama-1m'"):
        load_model(ModelConfig(name_or_path="tiny:llama-1n"), reviews_tokenizer)
    with pytest.raises(PrefoptError, match="no such local path"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nothing" / "here")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrefoptError, match="no config.json"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="model.dtype"):
        load_model(ModelConfig(name_or_path="tiny:llama-1m", dtype="fp8"), reviews_tokenizer)
    assert set(TINY_MODELS) >= {"llama-1m", "gpt2-1m", "llama-25m", "gpt2-25m"}
