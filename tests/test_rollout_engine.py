"""Tests of the rollout engine with a mock model + byte tokenizer, and tiny random HF models."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prefopt.errors import ConfigError
from prefopt.rollout import SamplingConfig, generate

PAD, EOS = 256, 257
VOCAB = 258


class ByteTokenizer:
    """Bytes 0..255 are tokens; 256 = pad, 257 = eos (decode to nothing)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def batch_decode(self, seqs) -> list[str]:
        return [self.decode(s) for s in seqs]


class HistoryLM(torch.nn.Module):
    """A mock causal LM whose logits depend on the whole (unpadded) history through a cached state.

    state_t = sum over attended tokens of (token + 1) * (position + 1); logits = A[state % S] + B[token].
    The cache it returns is the (B,) state, so row bookkeeping errors show up as different samples;
    a full forward without cache gives the teacher-forced logits.
    """

    def __init__(self, vocab: int = VOCAB, states: int = 97, scale: float = 3.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.randn(states, vocab, generator=g) * scale)
        self.b = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g) * scale)
        self.states = states
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True, **kw):
        self.calls += 1
        bsz, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -t:]
        am = attention_mask[:, -t:]
        contrib = (input_ids + 1) * (position_ids + 1) * am
        prev = past_key_values if isinstance(past_key_values, torch.Tensor) else torch.zeros(bsz, dtype=torch.long)
        cum = prev.unsqueeze(-1) + contrib.cumsum(-1)
        logits = self.a[cum % self.states] + self.b[input_ids]
        return SimpleNamespace(logits=logits, past_key_values=cum[:, -1])


class ScriptLM(torch.nn.Module):
    """Greedy-deterministic mock: at position p it strongly predicts byte TEXT[p % len(TEXT)].

    Needs correct position_ids under left padding: a prompt of n tokens continues with TEXT[n:].
    """

    def __init__(self, text: str):
        super().__init__()
        self.script = torch.tensor(list(text.encode()), dtype=torch.long)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True, **kw):
        target = self.script[(position_ids + 1) % len(self.script)]
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits.scatter_(-1, target.unsqueeze(-1), 20.0)
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def teacher_forced_logits(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """(len(response), V) logits predicting each response token from a full forward without cache."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                    position_ids=torch.arange(ids.shape[1]).unsqueeze(0), use_cache=False)
    return out.logits[0, len(prompt) - 1 : len(prompt) + len(response) - 1].float()


def rows(r):
    """(prompt, response tokens) per row, response cut at the mask."""
    return [(r.prompt_ids[i], r.response_ids[i][r.response_mask[i]].tolist()) for i in range(len(r))]


PROMPTS = [[1, 2, 3], [7], [40, 41, 42, 43, 44, 45, 46], [9, 9]]


# ----------------------------------------------------------------- sampling rules


def test_top_k_never_samples_outside_top_k():
    model = HistoryLM(scale=1.0)
    cfg = SamplingConfig(max_new_tokens=12, top_k=5, num_samples=8, temperature=1.3)
    r = generate(model, PROMPTS, cfg, pad_token_id=PAD, eos_token_id=None)
    distinct = set()
    for prompt, resp in rows(r):
        logits = teacher_forced_logits(model, prompt, resp)
        top5 = logits.topk(5, dim=-1).indices
        for t, tok in enumerate(resp):
            assert tok in top5[t].tolist()
            distinct.add((t, tok))
    assert len({tok for _, tok in distinct}) > 5  # really sampling, not greedy


def test_top_p_stays_in_nucleus():
    model = HistoryLM(scale=2.0)
    top_p = 0.6
    cfg = SamplingConfig(max_new_tokens=10, top_p=top_p, num_samples=8)
    r = generate(model, PROMPTS, cfg, pad_token_id=PAD, eos_token_id=None)
    n_checked = 0
    for prompt, resp in rows(r):
        probs = teacher_forced_logits(model, prompt, resp).softmax(-1)
        sp, si = probs.sort(-1, descending=True)
        before = sp.cumsum(-1) - sp
        for t, tok in enumerate(resp):
            nucleus = si[t][before[t] < top_p - 1e-6].tolist()
            assert tok in nucleus
            n_checked += 1
    assert n_checked == 4 * 8 * 10


def test_sampling_frequencies_match_softmax():
    """One step from a fixed distribution: empirical frequencies match softmax(logits / temperature)."""
    torch.manual_seed(0)
    fixed = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -30.0] + [-1e9] * (VOCAB - 6))

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, **kw):
            return SimpleNamespace(logits=fixed.expand(*input_ids.shape, VOCAB), past_key_values=None)

    n = 4000
    for temperature in (1.0, 2.0):
        r = generate(Fixed(), [[1]], SamplingConfig(max_new_tokens=1, num_samples=n, temperature=temperature,
                                                   batch_size=4096), pad_token_id=PAD, eos_token_id=None)
        counts = torch.bincount(r.response_ids[:, 0], minlength=VOCAB).float() / n
        expected = (fixed / temperature).softmax(-1)
        assert counts[6:].sum() == 0
        assert torch.allclose(counts[:6], expected[:6], atol=0.025), (counts[:6], expected[:6])
        # behaviour log-probs are the raw (temperature-1) log-probs
        assert torch.allclose(r.logprobs[:, 0], fixed.log_softmax(-1)[r.response_ids[:, 0]])


def test_temperature_zero_is_greedy():
    model = HistoryLM()
    r = generate(model, PROMPTS, SamplingConfig(max_new_tokens=15, temperature=0.0, num_samples=2),
                 pad_token_id=PAD, eos_token_id=None)
    for prompt, resp in rows(r):
        logits = teacher_forced_logits(model, prompt, resp)
        assert resp == logits.argmax(-1).tolist()
    assert torch.equal(r.response_ids[0], r.response_ids[1])  # greedy samples of one prompt agree


# ----------------------------------------------------------------- stopping


TEXT = "the cat sat. a dog ran. END of it all; "


def test_script_model_respects_left_padding():
    tok = ByteTokenizer()
    prompts = [tok.encode("the"), tok.encode("the cat s"), tok.encode("t")]
    r = generate(ScriptLM(TEXT), prompts, SamplingConfig(max_new_tokens=6, temperature=0.0),
                 pad_token_id=PAD, eos_token_id=None)
    got = [tok.decode(resp) for _, resp in rows(r)]
    assert got == [TEXT[3:9], TEXT[9:15], TEXT[1:7]]
    assert r.truncated.all() and r.response_mask.all()


@pytest.mark.parametrize("via", ["eos", "stop_token_ids"])
def test_stop_token_ends_row_and_mask_covers_it(via):
    tok = ByteTokenizer()
    prompts = [tok.encode("the"), tok.encode("the cat sat. a d"), tok.encode("th")]
    dot = ord(".")
    cfg = SamplingConfig(max_new_tokens=30, temperature=0.0, stop_token_ids=(dot,) if via != "eos" else ())
    r = generate(ScriptLM(TEXT), prompts, cfg, pad_token_id=PAD, eos_token_id=dot if via == "eos" else EOS)
    expected = [" cat sat.", "og ran.", "e cat sat."]
    for i, exp in enumerate(expected):
        n = len(exp)
        assert tok.decode(r.response_ids[i, :n].tolist()) == exp
        assert r.response_mask[i, :n].all() and not r.response_mask[i, n:].any()
        assert (r.response_ids[i, n:] == PAD).all()
        assert (r.logprobs[i, n:] == 0).all()
    assert not r.truncated.any()
    assert r.response_ids.shape[1] == max(len(e) for e in expected)


def test_stop_strings_end_row():
    tok = ByteTokenizer()
    prompts = [tok.encode("the"), tok.encode("the cat sat. a dog ran. EN"), tok.encode("x")]
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0, stop_strings=("dog", "END"))
    r = generate(ScriptLM(TEXT), prompts, cfg, pad_token_id=PAD, eos_token_id=None, tokenizer=tok)
    got = [tok.decode(resp) for _, resp in rows(r)]
    # row 1 starts inside "END": the stop string must lie within the response, so it runs to the next match
    assert got == [" cat sat. a dog", "D of it all; the cat sat. a dog", "he cat sat. a dog"]
    assert not r.truncated.any()
    with pytest.raises(ConfigError):
        generate(ScriptLM(TEXT), prompts, cfg, pad_token_id=PAD, eos_token_id=None)


def test_stop_at_last_step_is_not_truncation():
    tok = ByteTokenizer()
    cfg = SamplingConfig(max_new_tokens=3, temperature=0.0)
    r = generate(ScriptLM(TEXT), [tok.encode("the cat s"), tok.encode("the")], cfg,
                 pad_token_id=PAD, eos_token_id=ord("."))
    assert [tok.decode(resp) for _, resp in rows(r)] == ["at.", " ca"]
    assert r.truncated.tolist() == [False, True]  # "." was the 3rd and last allowed token
    s = generate(ScriptLM(TEXT), [tok.encode("the cat s")], SamplingConfig(max_new_tokens=3, temperature=0.0,
                 stop_strings=("t.",)), pad_token_id=PAD, eos_token_id=None, tokenizer=tok)
    assert not s.truncated.any()


def test_max_new_tokens_truncation():
    model = HistoryLM()
    r = generate(model, PROMPTS, SamplingConfig(max_new_tokens=7), pad_token_id=PAD, eos_token_id=None)
    assert r.response_ids.shape == (4, 7)
    assert r.response_mask.all() and r.truncated.all()


# ----------------------------------------------------------------- layout, chunking, determinism


def test_k_samples_group_ids_and_prompt_ids():
    model = HistoryLM(scale=1.0)
    r = generate(model, PROMPTS, SamplingConfig(max_new_tokens=8, num_samples=3), pad_token_id=PAD,
                 eos_token_id=None)
    assert len(r) == 12
    assert r.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert r.prompt_ids == [p for p in PROMPTS for _ in range(3)]
    for g in range(4):
        samples = {tuple(r.response_ids[3 * g + j].tolist()) for j in range(3)}
        assert len(samples) > 1  # samples of one prompt differ
    for t in (r.response_ids, r.response_mask, r.logprobs, r.truncated, r.group):
        assert t.shape[0] == 12


def test_determinism_and_chunking():
    model = HistoryLM(scale=1.0)
    eos = list(range(60, 100))  # frequent stops: rows finish at different steps and get dropped
    cfg = SamplingConfig(max_new_tokens=8, num_samples=3, top_k=40, seed=5)
    a = generate(model, PROMPTS, cfg, pad_token_id=PAD, eos_token_id=eos)
    b = generate(model, PROMPTS, cfg, pad_token_id=PAD, eos_token_id=eos)
    lengths = a.response_mask.sum(1)
    assert lengths.min() < lengths.max() and a.truncated.any() and not a.truncated.all()  # ragged
    for field in ("response_ids", "response_mask", "logprobs", "truncated"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    # chunking into batches of 1, 2, 5 rows gives the same rows
    for bs in (1, 2, 5):
        c = generate(model, PROMPTS, SamplingConfig(**{**cfg.__dict__, "batch_size": bs}),
                     pad_token_id=PAD, eos_token_id=eos)
        assert torch.equal(a.response_ids, c.response_ids) and torch.equal(a.response_mask, c.response_mask)
        assert torch.allclose(a.logprobs, c.logprobs)
    other = generate(model, PROMPTS, SamplingConfig(**{**cfg.__dict__, "seed": 6}), pad_token_id=PAD,
                     eos_token_id=eos)
    assert not torch.equal(a.response_ids, other.response_ids)


def test_per_prompt_seeds_follow_the_prompt():
    model = HistoryLM(scale=1.0)
    cfg = SamplingConfig(max_new_tokens=10, num_samples=2, batch_size=3)
    seeds = [11, 22, 33, 44]
    a = generate(model, PROMPTS, cfg, pad_token_id=PAD, eos_token_id=None, seeds=seeds)
    order = [2, 0, 3, 1]
    b = generate(model, [PROMPTS[i] for i in order], SamplingConfig(**{**cfg.__dict__, "seed": 99}),
                 pad_token_id=PAD, eos_token_id=None, seeds=[seeds[i] for i in order])
    for new_pos, old in enumerate(order):
        for j in range(2):
            assert torch.equal(b.response_ids[2 * new_pos + j], a.response_ids[2 * old + j])


def test_training_mode_restored_and_validation():
    model = HistoryLM()
    model.train()
    generate(model, PROMPTS, SamplingConfig(max_new_tokens=2), pad_token_id=PAD, eos_token_id=None)
    assert model.training
    model.eval()
    generate(model, PROMPTS, SamplingConfig(max_new_tokens=2), pad_token_id=PAD, eos_token_id=None)
    assert not model.training
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, PROMPTS, SamplingConfig(top_p=0.0), pad_token_id=PAD, eos_token_id=None)
    with pytest.raises(ConfigError, match="empty"):
        generate(model, [[1], []], SamplingConfig(), pad_token_id=PAD, eos_token_id=None)
    with pytest.raises(ConfigError, match="seeds"):
        generate(model, PROMPTS, SamplingConfig(), pad_token_id=PAD, eos_token_id=None, seeds=[1])


def test_prefill_once_per_prompt():
    model = HistoryLM()
    generate(model, PROMPTS, SamplingConfig(max_new_tokens=5, num_samples=4), pad_token_id=PAD, eos_token_id=None)
    assert model.calls == 1 + 4  # one prefill, then one call per decode step (none after the last token)


# ----------------------------------------------------------------- real HF models


def _tiny_llama(vocab=97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, initializer_range=0.3,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _tiny_gpt2(vocab=97):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.3,
                     bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


HF_PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15], [3], [20, 21, 22, 23, 24]]


def _hf_greedy(model, prompts, max_new_tokens, eos):
    L = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    am = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        am[i, L - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=am, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=0, eos_token_id=eos)
    res = []
    for row in out[:, L:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        res.append(row)
    return res


@pytest.mark.parametrize("make", [_tiny_llama, _tiny_gpt2], ids=["llama", "gpt2"])
def test_greedy_equals_hf_generate(make):
    model = make()
    n = 16
    free = _hf_greedy(model, HF_PROMPTS, n, None)
    # pick as eos a token that appears mid-way in one row so some rows stop early and others don't
    eos = next(tok for tok in free[1][2:] if tok not in free[0])
    for eos_id in (None, eos):
        expected = _hf_greedy(model, HF_PROMPTS, n, eos_id)
        r = generate(model, HF_PROMPTS, SamplingConfig(max_new_tokens=n, temperature=0.0, batch_size=3),
                     pad_token_id=0, eos_token_id=eos_id)
        assert [resp for _, resp in rows(r)] == expected
        assert r.truncated.tolist() == [eos_id is None or eos_id not in e for e in expected]
    assert len({len(e) for e in expected}) > 1


@pytest.mark.parametrize("make", [_tiny_llama, _tiny_gpt2], ids=["llama", "gpt2"])
def test_behaviour_logprobs_match_teacher_forcing(make):
    model = make()
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9, num_samples=2, seed=3)
    r = generate(model, HF_PROMPTS, cfg, pad_token_id=0, eos_token_id=[1, 2, 3, 4])
    for i, (prompt, resp) in enumerate(rows(r)):
        lp = teacher_forced_logits(model, prompt, resp).log_softmax(-1)
        expected = lp.gather(-1, torch.tensor(resp).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(r.logprobs[i, : len(resp)], expected, atol=1e-4), i
        assert (r.logprobs[i, len(resp):] == 0).all()


def test_llama_sampling_deterministic_across_chunking():
    model = _tiny_llama()
    cfg = SamplingConfig(max_new_tokens=10, num_samples=2, seed=1)
    a = generate(model, HF_PROMPTS, cfg, pad_token_id=0, eos_token_id=[1, 2, 3])
    b = generate(model, HF_PROMPTS, cfg, pad_token_id=0, eos_token_id=[1, 2, 3])
    c = generate(model, HF_PROMPTS, SamplingConfig(**{**cfg.__dict__, "batch_size": 3}), pad_token_id=0,
                 eos_token_id=[1, 2, 3])
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.response_ids, c.response_ids)
