"""rollout.dtype and low-precision frozen copies: a bf16 copy of the fp32 masters for sampling,
refreshed before every sampling call; bf16 live references and autocast reference precompute."""
from __future__ import annotations

import pytest
import torch

from prefopt.errors import ConfigError
from prefopt.rollout import SamplingConfig, generate
from prefopt.rollout.weights import LowPrecisionCopy, castable
from prefopt.train import precision as prec

needs_bf16 = pytest.mark.skipif(not prec.hardware_supports(torch.bfloat16, "cpu"),
                                reason="this CPU has no native bf16 (oneDNN)")


def _llama(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def test_the_copy_is_bf16_tied_and_follows_every_update_of_the_masters():
    model = _llama(tie=True)
    model.model.norm.weight.grad = torch.ones_like(model.model.norm.weight)
    weights = LowPrecisionCopy(model, torch.bfloat16)
    dup = weights.refreshed()
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad and p.grad is None for p in dup.parameters())
    assert dup.lm_head.weight is dup.model.embed_tokens.weight  # tied weights stay one tensor
    assert all(b.dtype == torch.float32 for b in dup.buffers())  # rotary frequencies are not rounded
    assert model.model.norm.weight.grad is not None and model.lm_head.weight.dtype == torch.float32
    ptrs = [p.data_ptr() for p in dup.parameters()]

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    dup = weights.refreshed()
    assert [p.data_ptr() for p in dup.parameters()] == ptrs  # refreshed in place, no new allocation
    for (name, p), q in zip(dup.named_parameters(), model.parameters()):
        assert torch.equal(p, q.detach().to(torch.bfloat16)), name
    assert weights.serves(model) and weights.serves(torch.nn.Module()) is False
    wrapper = torch.nn.Module()
    wrapper.module = model  # a DDP-style wrapper of the policy
    assert weights.serves(wrapper)


@needs_bf16
def test_samples_from_the_copy_equal_samples_from_the_model_cast_to_bf16():
    model = _llama().eval()
    cast = _llama().eval().to(torch.bfloat16)
    for p in cast.buffers():
        p.data = p.data.float()
    cfg = SamplingConfig(max_new_tokens=6, num_samples=2, seed=3)
    prompts = [[5, 6, 7], [9, 10]]
    a = generate(LowPrecisionCopy(model, torch.bfloat16).refreshed(), prompts, cfg, pad_token_id=0, eos_token_id=None)
    b = generate(cast, prompts, cfg, pad_token_id=0, eos_token_id=None)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.allclose(a.logprobs, b.logprobs, atol=2e-3)  # bf16 logits: same tokens, kernels may differ


def test_quantized_or_low_precision_policies_are_not_copied():
    model = _llama()
    assert castable(model)
    assert not castable(model.to(torch.bfloat16))


@needs_bf16
@pytest.mark.parametrize("precision, rollout_dtype, sampled_dtype", [
    ("bf16-mixed", "auto", torch.bfloat16),
    ("bf16-mixed", "float32", torch.float32),
    ("fp32", "auto", torch.float32),
    ("fp32", "bfloat16", torch.bfloat16),
])
def test_training_rollouts_sample_with_the_weights_rollout_dtype_names(precision, rollout_dtype, sampled_dtype,
                                                                        tmp_path, monkeypatch):
    """GRPO's rollouts (training and evaluation) see the model rollout.dtype resolves to; the
    checkpoint keeps the fp32 masters either way."""
    import test_online_algorithms

    from prefopt.cli.run import run_train
    from prefopt.train.sources import experience

    seen = []

    def spy(model, *args, **kwargs):
        seen.append(next(model.parameters()).dtype)
        return generate(model, *args, **kwargs)

    monkeypatch.setattr(experience, "generate", spy)
    cfg = test_online_algorithms._cfg(tmp_path, "grpo", train__precision=precision, rollout__dtype=rollout_dtype)
    out = run_train(cfg)
    assert len(seen) >= 3 and set(seen) == {sampled_dtype}
    from safetensors.torch import load_file
    ckpt = out.result.final_checkpoint / "model" / "model.safetensors"
    assert all(t.dtype == torch.float32 for t in load_file(ckpt).values())


def test_a_live_reference_copy_holds_the_mixed_precision_dtype():
    from prefopt.models.reference import reference_module

    model = _llama()
    assert {p.dtype for p in reference_module("copy", model, torch.bfloat16).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in reference_module("copy", model).parameters()} == {torch.float32}
    assert prec.copy_dtype("bf16-mixed") == torch.bfloat16 and prec.copy_dtype("fp32") is None
    assert prec.copy_dtype("bf16") is None  # pure bf16: the weights already are bf16


@needs_bf16
def test_precomputed_reference_under_autocast_is_cached_under_its_own_key(tmp_path):
    from prefopt.models.reference import cached_reference

    model = _llama().eval()
    from types import SimpleNamespace

    rows = [SimpleNamespace(ids=[1, 2, 3, 4]), SimpleNamespace(ids=[5, 6, 7])]

    def compute(m, rs):
        out = []
        for r in rs:
            ids = torch.tensor([r.ids])
            logits = m(input_ids=ids).logits[:, :-1].float()
            out.append(logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).sum())
        return (torch.stack(out),)

    args = dict(fields=("ids",), names=("lp",), compute=compute, kind="test", cache_dir=tmp_path)
    full = cached_reference(model, rows, **args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = cached_reference(model, rows, **args)
        again = cached_reference(model, rows, **args)
    assert full.path != mixed.path and mixed.path.name.endswith("-bfloat16.pt")
    assert not mixed.from_cache and again.from_cache
    assert not torch.equal(full.values["lp"], mixed.values["lp"])  # bf16 numerics, not the fp32 values
    assert torch.allclose(full.values["lp"], mixed.values["lp"], atol=0.1)


def test_a_rollout_dtype_the_cpu_cannot_run_is_one_line(monkeypatch):
    from prefopt.cli.config import from_dict
    from prefopt.train.config import TrainConfig

    monkeypatch.setattr(prec, "hardware_supports", lambda dtype, device: dtype != torch.float16)
    with pytest.raises(ConfigError, match=r"rollout\.dtype.*float16.*auto or float32"):
        from_dict(TrainConfig, {"algo": {"name": "grpo"}, "rollout": {"dtype": "float16"}})
    with pytest.raises(ConfigError, match=r"rollout\.dtype"):
        from_dict(TrainConfig, {"rollout": {"dtype": "int8"}})
