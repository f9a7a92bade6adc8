"""Prefix sharing and padding-free packing are exact: same losses, log-probs and gradients as the
plain padded computation (tolerance 1e-5)."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from prefopt.data.batching import pack, pack_pairs, pack_sequences
from prefopt.data.tokenize import EncodedPair, collate_pairs, collate_sequences
from prefopt.losses import get_pairwise_loss
from prefopt.models.config import ModelConfig
from prefopt.models.loading import load_model
from prefopt.models.logprobs import sequence_logps, token_logps
from prefopt.models.prefix import layout_sequence_logps, layout_token_logps, supports_packing
from prefopt.train.algorithms.preference import PairwisePreference, pair_layout, pair_logps, pair_logps_padded

TOL = 1e-5


def _pairs(n: int, seed: int = 0, vocab: int = 300) -> list[EncodedPair]:
    rng = random.Random(seed)
    tok = lambda k: [rng.randint(3, vocab) for _ in range(k)]
    out = []
    for i in range(n):
        prompt = tok(0 if i == 2 else rng.randint(1, 14))  # pair 2: empty prompt
        out.append(EncodedPair(prompt, tok(rng.randint(1, 10)), tok(rng.randint(1, 10)), i))
    return out


@pytest.fixture(scope="module")
def models(reviews_tokenizer):
    def make(name):
        m = load_model(ModelConfig(name_or_path=name), reviews_tokenizer).double().eval()
        return m
    return {"llama": make("tiny:llama-1m"), "gpt2": make("tiny:gpt2-1m")}


def test_mask_of_a_shared_prefix_pair():
    # one pair: prompt [1, 2], chosen [3, 4], rejected [5]; one plain sequence after it in the same row
    lay = pack([([1, 2], [[3, 4], [5]]), ([6], [[7]])], pad_id=0, padding_free=True, capacity=8)
    assert lay.shape == (1, 7)
    assert lay.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1]]
    m = lay.attention_mask()[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0, 0],
                 [1, 1, 0, 0, 1, 0, 0],  # rejected sees the prompt, not the chosen response
                 [0, 0, 0, 0, 0, 1, 0],
                 [0, 0, 0, 0, 0, 1, 1]]
    # labels: prompt's last token predicts both first response tokens
    assert list(zip(lay.src.tolist(), lay.labels.tolist(), lay.owner.tolist())) == [
        (1, 3, 0), (2, 4, 0), (1, 5, 1), (5, 7, 2)]
    f = lay.attention_mask(torch.float32)  # the additive form sdpa and eager get
    assert (f[0, 0][torch.tensor(m) == 1] == 0).all() and (f[0, 0][torch.tensor(m) == 0] < -1e30).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("prefix_sharing,padding_free", [(True, True), (True, False), (False, True)])
def test_pair_logps_equal_padded(models, reviews_tokenizer, arch, prefix_sharing, padding_free):
    model = models[arch]
    pad = reviews_tokenizer.pad_token_id
    batch = collate_pairs(_pairs(7), pad)
    with torch.no_grad():
        expected = pair_logps_padded(model, batch, pad)
        lay = pair_layout(model, batch, pad, prefix_sharing=prefix_sharing, padding_free=padding_free)
        assert lay is not None
        got = pair_logps(model, batch, pad, layout=lay)
    for e, g in zip(expected, got):
        assert torch.allclose(e.double(), g.double(), atol=TOL, rtol=0), (e, g)
    if prefix_sharing:  # each prompt once: fewer tokens than the 2B padded rows
        assert lay.real_tokens < int(batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum())


def _dpo_algo(pairs, pad, reference, **perf):
    return PairwisePreference(pairs, [], loss_fn=get_pairwise_loss("dpo"), beta=0.1, hparams={}, pad_id=pad,
                              batch_size=len(pairs), reference=reference, shuffle=False, **perf)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prefix_shared_dpo_losses_and_gradients_equal_plain(reviews_tokenizer, dtype):
    pad = reviews_tokenizer.pad_token_id
    policy = load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer).to(dtype)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    with torch.no_grad():  # move the policy away from the reference so the loss has a gradient signal
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    pairs = _pairs(8, seed=3)

    def run(**perf):
        algo = _dpo_algo(pairs, pad, reference, **perf)
        batch = algo.next_batches(policy, 1)[0]
        policy.zero_grad(set_to_none=True)
        out = algo.compute_loss(policy, batch)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters()}
        return out, grads

    plain, g_plain = run(prefix_sharing=False, padding_free=False)
    for perf in ({"prefix_sharing": True, "padding_free": True}, {"prefix_sharing": True, "padding_free": False},
                 {"prefix_sharing": False, "padding_free": True}):
        shared, g_shared = run(**perf)
        assert abs(float(shared.loss.detach()) - float(plain.loss.detach())) < TOL, perf
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margin"):
            assert abs(shared.metrics[k] - plain.metrics[k]) < TOL, (perf, k)
        assert shared.tokens == plain.tokens
        for name, g in g_plain.items():
            assert torch.allclose(g_shared[name], g, atol=TOL, rtol=0), (perf, name, (g_shared[name] - g).abs().max())


def test_padding_free_log_probs_equal_padded(models):
    model = models["llama"]
    rng = random.Random(1)
    rows = [([rng.randint(3, 300) for _ in range(rng.randint(0, 12))], [rng.randint(3, 300) for _ in range(rng.randint(1, 9))])
            for _ in range(9)]
    batch = collate_sequences(rows, pad_id=0)
    with torch.no_grad():
        summed, lengths = sequence_logps(model, batch)
        tok, mask = token_logps(model, batch)
        lay = pack_sequences(batch, 0, padding_free=True)
        assert lay.shape[0] < len(rows)  # rows were really packed
        got, counts = layout_sequence_logps(model, lay)
        flat = layout_token_logps(model, lay)
    assert torch.allclose(got.double(), summed.double(), atol=TOL, rtol=0)
    assert torch.equal(counts, lengths)
    # token by token, in order: the packed log-probs are the padded ones at the loss-mask positions
    assert torch.allclose(flat.double().sort().values, tok[mask].double().sort().values, atol=TOL, rtol=0)


def test_gradients_flow_into_the_shared_prompt(models, reviews_tokenizer):
    """The prompt's embedding rows get gradient from both responses through the one shared copy."""
    model = copy.deepcopy(models["llama"]).train()
    pad = reviews_tokenizer.pad_token_id
    batch = collate_pairs([EncodedPair([11, 12, 13], [21, 22], [31], 0)], pad)
    grads = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        c, r, _, _ = pair_logps(model, batch, pad, prefix_sharing=shared, padding_free=False)
        (c - 2 * r).sum().backward()
        grads.append(model.get_input_embeddings().weight.grad[[11, 12, 13]].clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=TOL, rtol=0)


def test_models_without_mask_support_take_the_padded_path(models, reviews_tokenizer, monkeypatch):
    model = models["llama"]
    pad = reviews_tokenizer.pad_token_id
    batch = collate_pairs(_pairs(4), pad)
    with torch.no_grad():
        expected = pair_logps_padded(model, batch, pad)
        monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2", raising=False)
        assert not supports_packing(model)
        assert pair_layout(model, batch, pad) is None
        monkeypatch.setattr("prefopt.train.algorithms.preference.pair_logps_padded",
                            lambda *a: expected)  # the fallback is what runs
        got = pair_logps(model, batch, pad)
    assert got is expected


def test_prompt_mismatch_falls_back_to_separate_sequences(reviews_tokenizer, models):
    pad = reviews_tokenizer.pad_token_id
    batch = collate_pairs(_pairs(3), pad)
    batch.rejected.input_ids[0, 0] += 1  # row 0's rejected prompt differs from its chosen prompt
    lay = pack_pairs(batch, pad, prefix_sharing=True)
    assert lay.real_tokens == int(batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum())
    with torch.no_grad():
        expected = pair_logps_padded(models["llama"], batch, pad)
        got = pair_logps(models["llama"], batch, pad, layout=lay)
    for e, g in zip(expected, got):
        assert torch.allclose(e.double(), g.double(), atol=TOL, rtol=0)


def test_sliding_window_shorter_than_a_sequence_falls_back(models, reviews_tokenizer, monkeypatch):
    model = models["llama"]
    pad = reviews_tokenizer.pad_token_id
    batch = collate_pairs(_pairs(4), pad)
    assert pair_layout(model, batch, pad) is not None
    monkeypatch.setattr(model.config, "sliding_window", 4, raising=False)  # a custom mask would ignore it
    assert pair_layout(model, batch, pad) is None
    monkeypatch.setattr(model.config, "sliding_window", 4096, raising=False)
    assert pair_layout(model, batch, pad) is not None


def test_lora_policy_prefix_shared_equals_padded(models, reviews_tokenizer):
    peft = pytest.importorskip("peft")
    pad = reviews_tokenizer.pad_token_id
    base = copy.deepcopy(models["llama"])
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    batch = collate_pairs(_pairs(5), pad)
    assert supports_packing(model)
    with torch.no_grad():
        expected = pair_logps_padded(model, batch, pad)
        got = pair_logps(model, batch, pad)
        with model.disable_adapter():  # the LoRA reference: adapters off, same layout
            ref_expected = pair_logps_padded(model, batch, pad)
            ref_got = pair_logps(model, batch, pad)
    for e, g in zip(expected + ref_expected, got + ref_got):
        assert torch.allclose(e.double(), g.double(), atol=TOL, rtol=0)
    assert not torch.allclose(expected[0], ref_expected[0])  # the adapters do change the outputs


def _rollout_rows(seed: int = 0, prompts: int = 3, k: int = 4):
    rng = random.Random(seed)
    prompt_list = [[rng.randint(3, 300) for _ in range(rng.randint(1, 12))] for _ in range(prompts)]
    prompt_ids = [p for p in prompt_list for _ in range(k)]
    lengths = [rng.randint(1, 9) for _ in prompt_ids]
    L = max(lengths)
    response_ids = torch.zeros(len(prompt_ids), L, dtype=torch.long)
    mask = torch.zeros(len(prompt_ids), L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        response_ids[i, :n] = torch.tensor([rng.randint(3, 300) for _ in range(n)])
        mask[i, :n] = True
    return prompt_ids, response_ids, mask


@pytest.mark.parametrize("prefix_sharing,padding_free", [(True, True), (True, False), (False, True)])
def test_grouped_response_logps_equal_response_forward(reviews_tokenizer, prefix_sharing, padding_free):
    """GRPO's training forward: the k samples of a prompt share it; logps, entropy, grads unchanged."""
    from prefopt.models.prefix import grouped_response_logps
    from prefopt.models.value import response_forward

    pad = reviews_tokenizer.pad_token_id
    model = load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer)
    prompt_ids, response_ids, mask = _rollout_rows()
    adv = torch.randn(mask.shape)

    def run(fn, **kw):
        model.zero_grad(set_to_none=True)
        out = fn(model, prompt_ids, response_ids, mask, pad, entropy=True, **kw)
        (out["logps"] * adv).sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, g_plain = run(response_forward)
    shared, g_shared = run(grouped_response_logps, prefix_sharing=prefix_sharing, padding_free=padding_free)
    assert torch.allclose(shared["logps"], plain["logps"], atol=TOL, rtol=0)
    assert torch.allclose(shared["entropy"], plain["entropy"], atol=TOL, rtol=0)
    assert (shared["logps"][~mask] == 0).all() and (shared["entropy"][~mask] == 0).all()
    for name, g in g_plain.items():
        assert torch.allclose(g_shared[name], g, atol=TOL, rtol=0), name


def test_row_length_trades_padding_against_attention():
    from prefopt.data.batching import choose_rows

    sizes = [10, 9, 9, 8, 8, 7]
    one_per_row = choose_rows(sizes, attention_cost=10.0)  # attention dear: rows no longer than needed
    assert max(sum(sizes[i] for i in r) for r in one_per_row) == 10 and len(one_per_row) == 6
    packed = choose_rows(sizes, attention_cost=0.0)  # attention free: least padding
    L = max(sum(sizes[i] for i in r) for r in packed)
    assert len(packed) * L < 6 * 10
    assert sorted(i for r in packed for i in r) == list(range(6))
    fixed = choose_rows(sizes, capacity=18)
    assert all(sum(sizes[i] for i in r) <= 18 for r in fixed) and len(fixed) == 3


def test_padding_free_sft_loss_and_gradients_equal_padded(reviews_tokenizer):
    from prefopt.data.tokenize import Encoded
    from prefopt.train.algorithms.sft import SFT

    model = load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer)
    rng = random.Random(2)
    rows = [Encoded([rng.randint(3, 300) for _ in range(rng.randint(0, 12))],
                    [rng.randint(3, 300) for _ in range(rng.randint(1, 9))]) for _ in range(9)]

    def run(padding_free):
        algo = SFT(rows, rows[:4], pad_id=0, batch_size=len(rows), shuffle=False, padding_free=padding_free)
        batch = algo.next_batches(model, 1)[0]
        model.zero_grad(set_to_none=True)
        out = algo.compute_loss(model, batch)
        out.loss.backward()
        return out, {n: p.grad.detach().clone() for n, p in model.named_parameters()}, algo.evaluate(model)

    (plain, g_plain, e_plain), (packed, g_packed, e_packed) = run(False), run(True)
    assert float(packed.loss.detach()) == pytest.approx(float(plain.loss.detach()), rel=1e-5)
    assert packed.metrics["sft/nll"] == pytest.approx(plain.metrics["sft/nll"], rel=1e-5)
    assert packed.tokens == plain.tokens and e_packed["loss"] == pytest.approx(e_plain["loss"], rel=1e-5)
    for name, g in g_plain.items():
        assert torch.allclose(g_packed[name], g, atol=1e-5, rtol=1e-4), (name, (g_packed[name] - g).abs().max())
