"""Rewarded soups: state-dict interpolation, WiSE-FT, LoRA merged-update soups vs the reference's A/B
averaging, architecture checks and saving as a Hugging Face model directory."""
import copy

import pytest
import torch

from prefopt.errors import ConfigError
from prefopt.models.config import LoraConfig, ModelConfig
from prefopt.models.loading import load_model
from prefopt.models.lora import apply_lora
from prefopt.objectives.soups import save_soup, soup_dirs, soup_models, wise_ft


def _tiny(tokenizer, seed: int, name: str = "tiny:llama-1m"):
    return load_model(ModelConfig(name_or_path=name, init_seed=seed), tokenizer)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def members(reviews_tokenizer):
    return [_tiny(reviews_tokenizer, seed) for seed in (1, 2, 3)]


def test_soup_is_the_weighted_sum_of_state_dicts(members):
    soup = soup_models(members, [0.5, 0.25, 0.25])
    states = [_state(m) for m in members]
    for key, value in soup.state_dict().items():
        expected = 0.5 * states[0][key] + 0.25 * states[1][key] + 0.25 * states[2][key]
        torch.testing.assert_close(value, expected)
    # a vertex of the simplex is that member, and the inputs are left untouched
    torch.testing.assert_close(soup_models(members, [0.0, 1.0, 0.0]).state_dict(), states[1])
    torch.testing.assert_close(members[0].state_dict(), states[0])


def test_soup_from_a_generator_and_wise_ft(members):
    soup = soup_models((m for m in members[:2]), [0.3, 0.7])
    wise = wise_ft(members[0], members[1], alpha=0.7)
    torch.testing.assert_close(soup.state_dict(), wise.state_dict())
    key = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(wise.state_dict()[key],
                               0.3 * members[0].state_dict()[key] + 0.7 * members[1].state_dict()[key])
    with pytest.raises(ConfigError, match=r"alpha: got 1.5, expected a value in \[0, 1\]"):
        wise_ft(members[0], members[1], 1.5)


def test_frozen_weights_stay_exact(members):
    other = copy.deepcopy(members[0])
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.add_(1.0)
    soup = soup_models([members[0], other], [0.3, 0.7])
    key = "model.layers.1.mlp.up_proj.weight"  # equal in both: copied bit for bit
    assert torch.equal(soup.state_dict()[key], members[0].state_dict()[key])


def test_soup_refuses_bad_weights_and_mismatched_members(members, reviews_tokenizer):
    with pytest.raises(ConfigError, match="soup weights: got .* expected weights summing to 1"):
        soup_models(members, [0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="expected non-negative weights"):
        soup_models(members[:2], [1.5, -0.5])
    with pytest.raises(ConfigError, match="got 2 weights for 3 members"):
        soup_models(members, [0.5, 0.5])
    gpt2 = _tiny(reviews_tokenizer, 0, "tiny:gpt2-1m")
    with pytest.raises(ConfigError, match=r"member 2 \(gpt2\) is a GPT2LMHeadModel, member 1 \(llama\) a LlamaForCausalLM"):
        soup_models([members[0], gpt2], [0.5, 0.5], labels=["llama", "gpt2"])
    wider = load_model(ModelConfig(name_or_path="tiny:llama-1m", max_positions=64), reviews_tokenizer)
    with pytest.raises(ConfigError, match=r"member 2 differs from member 1 in config.max_position_embeddings: 64 vs"):
        soup_models([members[0], wider], [0.5, 0.5])
    renamed = copy.deepcopy(members[0])
    renamed.model.layers[0].mlp.register_parameter("extra_scale", torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(ConfigError, match="member 2 has parameter 'model.layers.0.mlp.extra_scale' that member 1 lacks"):
        soup_models([members[0], renamed], [0.5, 0.5])


def _lora(base, seed: int, r: int = 4):
    model = apply_lora(copy.deepcopy(base), LoraConfig(enabled=True, r=r, alpha=8.0,
                                                      target_modules=["q_proj", "v_proj", "up_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B starts at 0; give both factors values as after training
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _merged(peft_model):
    return copy.deepcopy(peft_model).merge_and_unload()


def test_lora_soup_interpolates_merged_updates_not_factors(members):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    base = members[0]
    a, b = _lora(base, 1), _lora(base, 2)
    lam = [0.3, 0.7]
    soup = soup_models([a, b], lam)
    # equals interpolating the merged full weights: W + Σ λ_i s B_i A_i
    full = soup_models([_merged(a), _merged(b)], lam)
    torch.testing.assert_close(soup.state_dict(), full.state_dict())
    key = "model.layers.0.self_attn.q_proj.weight"
    layer_a = a.base_model.model.model.layers[0].self_attn.q_proj
    layer_b = b.base_model.model.model.layers[0].self_attn.q_proj
    s = 8.0 / 4
    by_hand = (base.state_dict()[key] + lam[0] * s * layer_a.lora_B["default"].weight @ layer_a.lora_A["default"].weight
               + lam[1] * s * layer_b.lora_B["default"].weight @ layer_b.lora_A["default"].weight)
    torch.testing.assert_close(soup.state_dict()[key], by_hand.detach())
    assert "lora" not in " ".join(soup.state_dict())  # a plain model comes out
    # the reference code averages A and B separately: (Σλ B)(Σλ A) != Σ λ B A
    averaged = {k: lam[0] * v + lam[1] * get_peft_model_state_dict(b)[k]
                for k, v in get_peft_model_state_dict(a).items()}
    naive = copy.deepcopy(a)
    set_peft_model_state_dict(naive, averaged)
    naive_weight = _merged(naive).state_dict()[key]
    gap = (naive_weight - soup.state_dict()[key]).abs().max().item()
    assert gap > 1e-2, gap


def test_lora_soup_with_the_start_and_different_ranks(members):
    base = members[0]
    a, b = _lora(base, 3, r=2), _lora(base, 4, r=6)
    soup = soup_models([a, b], [0.5, 0.5])
    torch.testing.assert_close(soup.state_dict(), soup_models([_merged(a), _merged(b)], [0.5, 0.5]).state_dict())
    toward_start = wise_ft(base, a, alpha=0.25)  # W + 0.25 s B A
    torch.testing.assert_close(toward_start.state_dict(), wise_ft(base, _merged(a), 0.25).state_dict())


def test_soup_saves_and_loads_as_a_hugging_face_model(members, reviews_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    soup = soup_models(members[:2], [0.4, 0.6])
    out = save_soup(soup, tmp_path / "soup", weights=[0.4, 0.6], members=["a", "b"], tokenizer=reviews_tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(loaded(ids).logits, soup(ids).logits)
    assert (out / "soup.json").read_text().count("0.4") == 1 and (out / "tokenizer.json").exists()
    # from saved directories: a full model and a LoRA adapter directory
    members[0].save_pretrained(tmp_path / "m1")
    adapter = _lora(members[0], 5)
    adapter.peft_config["default"].base_model_name_or_path = str(tmp_path / "m1")
    adapter.save_pretrained(tmp_path / "m2")
    reviews_tokenizer.save_pretrained(tmp_path / "m1")
    saved = soup_dirs([tmp_path / "m1", tmp_path / "m2"], [0.5, 0.5], tmp_path / "soup2")
    expected = soup_models([members[0], _merged(adapter)], [0.5, 0.5])
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(saved).state_dict(), expected.state_dict())
    vertex = soup_dirs([tmp_path / "m1", tmp_path / "missing"], [1.0, 0.0], tmp_path / "soup3")  # not loaded
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(vertex).state_dict(), members[0].state_dict())
    with pytest.raises(ConfigError, match="got 1 weights for 2 models"):
        soup_dirs([tmp_path / "m1", tmp_path / "m2"], [1.0], tmp_path / "bad")
