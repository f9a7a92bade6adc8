"""Batched sampling with a KV cache for any Hugging Face causal LM.

``generate(model, prompts, cfg, ...)`` samples ``cfg.num_samples`` responses for each prompt
and returns a :class:`prefopt.types.Rollout` with the sampled token ids, response masks and the
behaviour log-probs of the sampled tokens.

How it avoids ``model.generate``'s per-token overhead:

* **Prefill once.** Prompts are left-padded, with an attention mask and explicit
  ``position_ids`` (so padding does not shift positions), and each *distinct* prompt of a chunk
  is prefilled once; its KV cache is then repeated for the ``k`` samples.
* **Preallocate.** Output ids / log-probs, the attention mask and (for models whose layers are
  all plain full-attention layers) the KV cache itself are allocated once at their final size;
  a decode step writes in place instead of concatenating (``DynamicCache`` copies the whole
  cache every step).
* **Drop finished rows.** When rows stop, the cache, mask and positions are indexed down to
  the still-active rows, so finished rows cost nothing in later steps.
* **Sampling with tensor ops.** Temperature, top-k, top-p and inverse-CDF sampling are a few
  batched tensor ops; the random numbers of every row are drawn up front from that row's own
  ``torch.Generator`` (one small table per chunk), so there is no per-row work per token.
* **Stop strings** are checked by decoding only the last few tokens of each active row,
  never the whole response.

Log-probs: ``Rollout.logprobs`` holds ``log softmax(logits)[token]`` of the model's *raw*
logits (temperature 1, no top-k/top-p) -- the policy's log-prob of the sampled token, which is
what importance ratios against a later recomputation need. It is *not* the log-prob under the
(tempered, truncated) distribution the token was actually drawn from.

Determinism: the randomness of a row comes only from its row key, derived from
``(seed of its prompt, sample index j)`` by :func:`prefopt.seeding.derive_seed`, where the seed
of prompt ``p`` is ``seeds[p]`` when given and otherwise derived from ``(cfg.seed, p)``. Random
draws therefore do not depend on ``cfg.batch_size``, on the other prompts in the call, or (with
``seeds``) on the prompt's position in the list. Same call twice gives identical output. Across different chunkings or
batch compositions the token choices are identical as long as the model's logits for a row do
not change; in practice different padding / batch shapes can perturb logits at the 1e-6 level,
which changes a sample only when its uniform draw lands that close to a CDF boundary (or, for
greedy, on a near-exact tie).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from prefopt.errors import ConfigError
from prefopt.rollout.kv_cache import accepts, cache_arg, make_cache, select_rows
from prefopt.seeding import ROLLOUT_PROMPT, ROLLOUT_SAMPLE, SEED_WORD_MAX, derive_seed
from prefopt.types import Rollout
from prefopt.validation import bad_value, check_config

__all__ = ["SamplingConfig", "generate"]


@dataclass
class SamplingConfig:
    """How to sample responses from a causal LM (one flat config; a docstring per field)."""

    max_new_tokens: int = field(
        default=32, metadata={"help": "Maximum number of tokens generated per response (stop token included).", "min": 1}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature for sampling; 0 means greedy (argmax).", "min": 0}
    )
    top_k: int = field(
        default=0, metadata={"help": "Sample only among the k most likely tokens; 0 turns top-k off.", "min": 0}
    )
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus sampling: keep the smallest set of most likely tokens whose probability "
                          "(after temperature and top-k) reaches top_p; 1.0 turns it off.", "gt": 0, "max": 1},
    )
    num_samples: int = field(
        default=1, metadata={"help": "Responses sampled per prompt (k); rows of a prompt are consecutive.", "min": 1}
    )
    stop_token_ids: tuple[int, ...] = field(
        default=(), metadata={"help": "Token ids that end a response, in addition to the tokenizer's eos."}
    )
    stop_strings: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Strings that end a response once the decoded response contains them "
                          "(the token completing the string is kept; needs a tokenizer)."},
    )
    seed: int = field(
        default=0, metadata={"help": "Base seed; prompt p's seed is derived from (seed, p) unless per-prompt seeds are given.",
                            "min": 0, "max": SEED_WORD_MAX}
    )
    batch_size: int = field(
        default=64, metadata={"help": "Maximum number of rows decoded together; larger requests are chunked.", "min": 1}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "Weights training rollouts sample with: 'auto' = a bf16/fp16 copy of the policy under "
                          "train.precision bf16-mixed/fp16-mixed (refreshed from the fp32 masters before every "
                          "sampling call; costs half the policy's fp32 size in memory), else the policy itself; "
                          "'float32' = the policy itself (under the step's autocast); 'bfloat16'/'float16' = a copy "
                          "in that dtype. Applied by the trainer; generate() samples with the model it is given."},
    )

    def validate(self, prefix: str = "sampling.") -> None:
        """What the field ranges (:func:`prefopt.validation.check_config`) cannot express."""
        if any(not s for s in self.stop_strings):
            raise bad_value(f"{prefix}stop_strings", list(self.stop_strings), "no empty strings")


# --------------------------------------------------------------------------- seeds


def _row_uniforms(row_keys: list[int], steps: int) -> torch.Tensor:
    """(n, steps) float64 uniforms in (0, 1], row r drawn from a generator seeded with row_keys[r]."""
    out = torch.empty(len(row_keys), steps, dtype=torch.float64)
    gen = torch.Generator()
    for r, key in enumerate(row_keys):
        gen.manual_seed(key)
        torch.rand(steps, generator=gen, dtype=torch.float64, out=out[r])
    return 1.0 - out  # (0, 1]: keeps inverse-CDF sampling off zero-probability tokens


# --------------------------------------------------------------------------- sampling


def _sample(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Draw one token per row from ``logits`` (A, V) with uniforms ``u`` (A,) in (0, 1].

    Inverse-CDF sampling: the chosen token is the first whose cumulative (unnormalized)
    probability reaches ``u * total``. A zero-probability token is never chosen, because its
    predecessor reaches the same cumulative value first (and ``u * total > 0``).
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    vocab = x.shape[-1]
    idx = None
    if 0 < top_k < vocab:
        x, idx = torch.topk(x, top_k, dim=-1)  # sorted, descending
    elif top_p < 1.0:
        x, idx = torch.sort(x, dim=-1, descending=True)
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        # drop a token when the mass strictly before it already reaches top_p (the first always stays)
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.double().cumsum(dim=-1)
    thresh = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    j = torch.searchsorted(cdf, thresh, right=False).clamp_(max=cdf.shape[-1] - 1)
    return (idx.gather(-1, j) if idx is not None else j).squeeze(-1)


# --------------------------------------------------------------------------- stop strings


class _StopStrings:
    """Detect stop strings by decoding only the last ``window`` tokens of each active row."""

    def __init__(self, stop_strings: tuple[str, ...], tokenizer):
        self.strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        # a stop string of b bytes spans at most b tokens (each token decodes to >= 1 byte);
        # a few extra tokens keep decode artifacts at the start of the window (e.g. a stripped
        # leading space) away from the match
        self.window = max(len(s.encode("utf-8")) for s in self.strings) + 4
        decode = getattr(tokenizer, "batch_decode", None)
        self._batch_decode = decode if decode is not None else (lambda seqs: [tokenizer.decode(s) for s in seqs])

    def hits(self, tokens: torch.Tensor, active: torch.Tensor, t: int) -> torch.Tensor:
        """(A,) bool: active rows whose response tail (positions <= t) contains a stop string."""
        start = max(0, t + 1 - self.window)
        tails = tokens[active, start : t + 1].tolist()
        texts = self._batch_decode(tails)
        return torch.tensor([any(s in text for s in self.strings) for text in texts], dtype=torch.bool)


# --------------------------------------------------------------------------- generate


def generate(
    model,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    *,
    pad_token_id: int,
    eos_token_id: int | list[int] | None,
    tokenizer=None,
    seeds: list[int] | None = None,
) -> Rollout:
    """Sample ``cfg.num_samples`` responses for each prompt with a KV cache.

    Args:
        model: an HF causal LM (or anything with the same call interface:
            ``model(input_ids=, attention_mask=, position_ids=, cache=, use_cache=True)`` returning
            an object with ``.logits`` (B, T, V) and ``.cache``; models whose ``forward`` names the
            argument ``past_key_values`` (transformers before the rename, custom models) get that).
        prompts: P lists of prompt token ids, unpadded, each non-empty.
        cfg: sampling settings (see :class:`SamplingConfig`).
        pad_token_id: id used for left-padding prompts and right-padding responses.
        eos_token_id: token id(s) that end a response (plus ``cfg.stop_token_ids``); None for none.
        tokenizer: needed only for ``cfg.stop_strings`` (``batch_decode`` or ``decode``).
        seeds: optional per-prompt seeds (length P); see the module docstring for what they fix.

    Returns:
        Rollout with N = P*k rows, prompt p's samples in rows p*k .. p*k+k-1 (``group`` = p).
        ``response_ids`` (N, L) right-padded with ``pad_token_id``, L = longest response;
        ``response_mask`` True on generated tokens including the stop token;
        ``logprobs`` raw (temperature-1, unfiltered) log-prob of each sampled token, 0 where masked;
        ``truncated`` True where no stop happened within ``max_new_tokens``.
    """
    _check_request(prompts, cfg, seeds, tokenizer)
    k = cfg.num_samples
    n_rows = len(prompts) * k
    stop_ids = set(cfg.stop_token_ids)
    if eos_token_id is not None:
        stop_ids.update([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)
    device = _model_device(model)
    stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    stopper = _StopStrings(cfg.stop_strings, tokenizer) if cfg.stop_strings else None

    prompt_seeds = ([int(s) for s in seeds] if seeds is not None
                    else [derive_seed(cfg.seed, ROLLOUT_PROMPT, p) for p in range(len(prompts))])
    row_prompt = [r // k for r in range(n_rows)]
    row_keys = [derive_seed(prompt_seeds[p], ROLLOUT_SAMPLE, r % k) for r, p in enumerate(row_prompt)]

    T = cfg.max_new_tokens
    ids_out = torch.full((n_rows, T), pad_token_id, dtype=torch.long)
    lp_out = torch.zeros(n_rows, T, dtype=torch.float32)
    lengths = torch.full((n_rows,), T, dtype=torch.long)
    truncated = torch.ones(n_rows, dtype=torch.bool)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n_rows, cfg.batch_size):
                stop = min(n_rows, start + cfg.batch_size)
                ids, lps, lens, trunc = _generate_chunk(
                    model,
                    [prompts[p] for p in row_prompt[start:stop]],
                    row_keys[start:stop],
                    cfg,
                    pad_token_id=pad_token_id,
                    stop_tensor=stop_tensor,
                    stopper=stopper,
                    device=device,
                )
                ids_out[start:stop] = ids.cpu()
                lp_out[start:stop] = lps.cpu()
                lengths[start:stop] = lens.cpu()
                truncated[start:stop] = trunc.cpu()
    finally:
        model.train(was_training)

    L = max(1, int(lengths.max()))
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    return Rollout(
        prompt_ids=[list(prompts[p]) for p in row_prompt],
        response_ids=ids_out[:, :L].contiguous(),
        response_mask=mask,
        logprobs=lp_out[:, :L].masked_fill(~mask, 0.0).contiguous(),
        group=torch.tensor(row_prompt, dtype=torch.long),
        truncated=truncated,
    )


def _returned_cache(out, keyword: str, given):
    """The cache a forward returned (read under the name it was passed as: the old name warns)."""
    returned = getattr(out, keyword, None)
    return returned if returned is not None else given


def _check_request(prompts: list[list[int]], cfg: SamplingConfig, seeds, tokenizer) -> None:
    check_config(cfg, "sampling.")
    if not prompts:
        raise ConfigError("generate() needs at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ConfigError(f"prompt {i} is empty; every prompt needs at least one token")
    if seeds is not None and len(seeds) != len(prompts):
        raise ConfigError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
    if cfg.stop_strings and tokenizer is None:
        raise ConfigError("sampling.stop_strings needs a tokenizer")


def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _prefill(model, row_prompts, pad_token_id: int, new_tokens: int, device):
    """Prefill each distinct prompt of a chunk once (rows of one prompt are consecutive), left-padded
    with explicit positions, into a cache sized for ``new_tokens`` more, then repeat the cache and the
    last logits for the prompt's rows. Returns (cache, cache keyword, logits (n, V), the distinct
    prompts' attention mask and positions, row -> distinct prompt index)."""
    uniq: list[list[int]] = []
    inverse: list[int] = []
    for p in row_prompts:
        if not uniq or (p is not uniq[-1] and p != uniq[-1]):
            uniq.append(p)
        inverse.append(len(uniq) - 1)
    Lp = max(len(p) for p in uniq)
    input_ids = torch.full((len(uniq), Lp), pad_token_id, dtype=torch.long)
    attn = torch.zeros(len(uniq), Lp, dtype=torch.long)
    for i, p in enumerate(uniq):
        input_ids[i, Lp - len(p):] = torch.as_tensor(p, dtype=torch.long)
        attn[i, Lp - len(p):] = 1
    input_ids, attn = input_ids.to(device), attn.to(device)
    position_ids = (attn.cumsum(-1) - 1).clamp_(min=0)

    cache = make_cache(model, Lp + new_tokens)
    cache_kw = cache_arg(model)
    kwargs = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids,
                use_cache=True, **{cache_kw: cache}, **kwargs)
    logits = out.logits[:, -1, :]
    cache = _returned_cache(out, cache_kw, cache)
    inv = torch.tensor(inverse, dtype=torch.long, device=device)
    if len(uniq) != len(row_prompts):
        cache = select_rows(cache, inv)
        logits = logits.index_select(0, inv)
    return cache, cache_kw, logits, attn, position_ids, inv


def _generate_chunk(model, row_prompts, row_keys, cfg: SamplingConfig, *, pad_token_id, stop_tensor, stopper, device):
    """Decode one chunk of n rows. Returns (ids (n,T), logprobs (n,T), lengths (n,), truncated (n,))."""
    n = len(row_prompts)
    T = cfg.max_new_tokens
    sampling = cfg.temperature > 0.0
    uniforms = _row_uniforms(row_keys, T).to(device) if sampling else None

    cache, cache_kw, logits, attn, position_ids, inv = _prefill(model, row_prompts, pad_token_id, T, device)
    Lp = attn.shape[1]

    # preallocated buffers (active rows only for the mask / positions)
    mask_buf = torch.ones(n, Lp + T, dtype=attn.dtype, device=device)
    mask_buf[:, :Lp] = attn.index_select(0, inv)
    next_pos = position_ids[:, -1].index_select(0, inv) + 1  # (A,) position of the token being fed next
    ids = torch.full((n, T), pad_token_id, dtype=torch.long, device=device)
    lps = torch.zeros(n, T, dtype=torch.float32, device=device)
    lengths = torch.full((n,), T, dtype=torch.long, device=device)
    truncated = torch.ones(n, dtype=torch.bool, device=device)
    active = torch.arange(n, device=device)
    has_stops = stop_tensor.numel() > 0

    for t in range(T):
        u = uniforms[active, t] if sampling else None
        tok = _sample(logits, u, cfg.temperature, cfg.top_k, cfg.top_p)
        lf = logits.float()
        logp = lf.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - lf.logsumexp(dim=-1)
        ids[active, t] = tok
        lps[active, t] = logp
        done = torch.isin(tok, stop_tensor) if has_stops else None
        if stopper is not None:
            hit = stopper.hits(ids, active, t).to(device)
            done = hit if done is None else done | hit
        any_done = done is not None and bool(done.any())
        if any_done:
            finished = active[done]
            lengths[finished] = t + 1
            truncated[finished] = False
        if t == T - 1 or (any_done and bool(done.all())):
            break
        if any_done:  # drop finished rows: they cost nothing from here on
            keep = (~done).nonzero().squeeze(-1)
            active = active.index_select(0, keep)
            tok = tok.index_select(0, keep)
            next_pos = next_pos.index_select(0, keep)
            mask_buf = mask_buf.index_select(0, keep)
            cache = select_rows(cache, keep)
        out = model(input_ids=tok.unsqueeze(-1), attention_mask=mask_buf[:, : Lp + t + 1],
                    position_ids=next_pos.unsqueeze(-1), use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1, :]
        cache = _returned_cache(out, cache_kw, cache)
        next_pos = next_pos + 1
    return ids, lps, lengths, truncated
