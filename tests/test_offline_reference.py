"""Reference handling: precomputed (cached) log-probs equal on-the-fly ones; LoRA reference equals
the base model; warnings and errors of incompatible reference configs."""
import copy
import logging

import pytest
import torch

from prefopt.data.loaders import validate
from prefopt.data.prepare import encode_pairwise, encode_unpaired
from prefopt.data.tokenize import collate_pairs
from prefopt.errors import ConfigError
from prefopt.losses import get_pairwise_loss
from prefopt.models.config import LoraConfig
from prefopt.models.logprobs import sequence_logps
from prefopt.models.lora import AdapterDisabledReference, apply_lora
from prefopt.models.reference import (feedback_reference_logps, model_fingerprint, pair_reference_logps,
                                      reference_module)
from prefopt.train.algorithms.kto import KTO
from prefopt.train.algorithms.preference import PairwisePreference, pair_logps

from offline_fixtures import lab_pairs, to_unpaired, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pairs(reviews_tokenizer):
    rows = validate(lab_pairs(10), "pairwise").rows
    return encode_pairwise(reviews_tokenizer, rows, max_length=64, max_prompt_length=24)[0]


def _algo(pairs, tok, reference=None, store=None, loss="dpo"):
    return PairwisePreference(pairs, [], loss_fn=get_pairwise_loss(loss), beta=0.1, hparams={},
                              pad_id=tok.pad_token_id, batch_size=4, reference=reference, ref_store=store,
                              shuffle=False)


def test_precomputed_reference_equals_on_the_fly(pairs, reviews_tokenizer, tiny_llama, tmp_path):
    store = pair_reference_logps(tiny_llama, pairs, reviews_tokenizer.pad_token_id, batch_size=3,
                                 pair_logps=pair_logps, cache_dir=tmp_path)
    copy_ref = reference_module("copy", tiny_llama)
    on_the_fly = _algo(pairs, reviews_tokenizer, reference=copy_ref)
    cached = _algo(pairs, reviews_tokenizer, store=store)
    batch_a, batch_b = on_the_fly._collate(pairs[2:7]), cached._collate(pairs[2:7])
    assert batch_a.ref_chosen_logps is None and batch_b.ref_chosen_logps is not None
    for got, want in zip(cached.reference_logps(batch_b), on_the_fly.reference_logps(batch_a)):
        assert torch.allclose(got, want, atol=1e-5)
    tiny_llama.train()
    la = on_the_fly.compute_loss(tiny_llama, batch_a)
    lb = cached.compute_loss(tiny_llama, batch_b)
    assert torch.allclose(la.loss, lb.loss, atol=1e-5)


def test_cache_is_reused_and_keyed_by_model_and_data(pairs, reviews_tokenizer, tiny_llama, tmp_path):
    calls = []

    def counting(model, batch, pad_id):
        calls.append(len(batch))
        return pair_logps(model, batch, pad_id)

    kw = dict(pad_id=reviews_tokenizer.pad_token_id, batch_size=4, pair_logps=counting, cache_dir=tmp_path)
    first = pair_reference_logps(tiny_llama, pairs, **kw)
    n = len(calls)
    again = pair_reference_logps(tiny_llama, pairs, **kw)
    assert again.from_cache and not first.from_cache and len(calls) == n
    assert torch.equal(first.values["chosen"], again.values["chosen"])
    fewer = encode_pairwise(reviews_tokenizer, validate(lab_pairs(10)[:5], "pairwise").rows,
                            max_length=64, max_prompt_length=24)[0]
    assert not pair_reference_logps(tiny_llama, fewer, **kw).from_cache  # other data, other key
    fp = model_fingerprint(tiny_llama)
    with torch.no_grad():
        next(tiny_llama.parameters())[0, 0] += 1e-3
    assert model_fingerprint(tiny_llama) != fp
    assert not pair_reference_logps(tiny_llama, pairs, **kw).from_cache  # other weights, other key


def test_precomputed_feedback_reference_equals_on_the_fly(reviews_tokenizer, tiny_llama, tmp_path):
    rows = validate(to_unpaired(lab_pairs(4)), "unpaired").rows
    ex, _ = encode_unpaired(reviews_tokenizer, rows, max_length=64, max_prompt_length=24)
    store = feedback_reference_logps(tiny_llama, ex, reviews_tokenizer.pad_token_id, 3, cache_dir=tmp_path)
    kw = dict(beta=0.1, pad_id=reviews_tokenizer.pad_token_id, batch_size=4, shuffle=False)
    fly = KTO(ex, [], reference=reference_module("copy", tiny_llama), **kw)
    pre = KTO(ex, [], reference=None, ref_store=store, **kw)
    ba, bb = fly._collate(ex[:5]), pre._collate(ex[:5])
    for got, want in zip(pre.reference_logps(bb), fly.reference_logps(ba)):
        assert torch.allclose(got, want, atol=1e-5)


def test_lora_reference_equals_base_model_logps(pairs, reviews_tokenizer, tiny_llama):
    base = copy.deepcopy(tiny_llama).eval()
    policy = apply_lora(tiny_llama, LoraConfig(enabled=True, r=4, dropout=0.1))
    with torch.no_grad():  # make the adapters matter (LoRA B starts at zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ref = AdapterDisabledReference(policy)
    assert list(ref.parameters()) == []  # no second copy of the weights
    batch = collate_pairs(pairs[:4], reviews_tokenizer.pad_token_id)
    policy.train()
    algo = _algo(pairs, reviews_tokenizer, reference=ref)
    with torch.no_grad():
        rc, rr = algo.reference_logps(batch)  # the packed / prefix-shared path, adapters off
        bc, br, _, _ = pair_logps(base, batch, reviews_tokenizer.pad_token_id)
        pc, _, _, _ = pair_logps(policy.eval(), batch, reviews_tokenizer.pad_token_id)
        fc = sequence_logps(ref, batch.chosen)[0]  # through the wrapper's forward
    assert torch.allclose(rc, bc, atol=1e-5) and torch.allclose(rr, br, atol=1e-5)
    assert torch.allclose(fc, bc, atol=1e-5)
    assert not torch.allclose(pc, bc, atol=1e-3)
    policy.train()
    algo.reference_logps(batch)
    assert policy.training
    ref(input_ids=batch.chosen.input_ids, attention_mask=batch.chosen.attention_mask)
    assert policy.training  # the reference pass restores the policy's mode
    # precomputing with a LoRA policy also uses the base (adapters disabled)
    store = pair_reference_logps(policy, pairs[:4], reviews_tokenizer.pad_token_id, 4, pair_logps=pair_logps,
                                 use_cache=False)
    assert torch.allclose(store.values["chosen"], bc, atol=1e-5)


def test_reference_config_checks(tiny_llama, caplog):
    from prefopt.cli.builders.offline import _WARNED, build_reference
    from prefopt.train.config import TrainConfig

    cfg = TrainConfig()
    _WARNED.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert build_reference(cfg, tiny_llama, needs_reference=False, loss_name="simpo")[:2] == (None, None)
    assert caplog.text.count("reference-free") == 1  # warned once
    cfg.algo.reference = "none"
    with pytest.raises(ConfigError, match="loss 'dpo' needs a reference"):
        build_reference(cfg, tiny_llama, needs_reference=True, loss_name="dpo")
    cfg.algo.reference = "lora"
    with pytest.raises(ConfigError, match="lora.enabled: true"):
        build_reference(cfg, tiny_llama, needs_reference=True, loss_name="dpo")


def test_copy_reference_is_frozen_and_independent(tiny_llama):
    ref = reference_module("copy", tiny_llama)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    with torch.no_grad():
        next(tiny_llama.parameters()).add_(1.0)
    assert not torch.equal(next(tiny_llama.parameters()), next(ref.parameters()))
