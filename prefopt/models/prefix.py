"""Forward passes over packed layouts: prefix-shared preference pairs and padding-free batches.

One forward runs the whole :class:`~prefopt.data.batching.PackedLayout` with a 4-D attention
mask (a token sees earlier tokens of its own group that are in the prompt or in its own branch)
and per-group position ids, so

* a pair's prompt is computed once and both responses attend to it; gradients from both
  responses flow back into the one copy of the prompt, and
* several short sequences share a row instead of padding each to the longest.

The LM head then runs only on the positions that predict a label (the prompt's last token once
per response, then each response token), in row chunks, and per-sequence sums are one
``index_add``. The result equals the plain padded computation up to float rounding
(``tests/test_perf_exactness.py`` checks losses and gradients to 1e-5).

Needs a model that accepts a custom 4-D mask and ``position_ids`` (transformers' ``sdpa`` and
``eager`` attention do); :func:`supports_packing` says whether it does, and callers fall back to
the plain path otherwise.
"""
from __future__ import annotations

import torch

from prefopt.dist import current
from prefopt.data.batching import PackedLayout

# Model types whose causal-LM head is exactly ``lm_head(final_hidden_state)`` (with the softcapping
# some of them apply handled below). Others go through the model's own forward and gather logits.
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "gemma2", "gemma3_text", "phi3", "olmo",
               "olmo2", "smollm3", "starcoder2", "stablelm", "gpt_neox", "phi", "qwen2_moe", "qwen3_moe",
               "mixtral"}
# Both take an additive float mask. (sdpa would accept a boolean one, but converts it to a new float
# mask in every layer and keeps each copy for the backward pass.)
_MASK_IMPLS = {"sdpa": None, "eager": None}


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def supports_packing(model: torch.nn.Module, layout: PackedLayout | None = None) -> bool:
    """Whether ``model`` takes the custom 4-D masks packed layouts need (sdpa or eager attention),
    and, given ``layout``, whether a sliding attention window (which a custom mask would override)
    is wider than every sequence in it."""
    config = getattr(_causal_lm(model), "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in _MASK_IMPLS:
        return False
    window = _sliding_window(config)
    return window is None or layout is None or int(layout.position_ids.max()) < window


def attention_cost(model: torch.nn.Module) -> float:
    """Attention cost per token and unit of row length relative to the matmuls, ~1/(6 x hidden):
    what :func:`prefopt.data.batching.choose_rows` trades row length against padding with."""
    hidden = getattr(getattr(_causal_lm(model), "config", None), "hidden_size", None) or 128
    return 1.0 / (6 * hidden)


def packed_layout(model: torch.nn.Module, build) -> PackedLayout | None:
    """``build(attention_cost)`` -> the layout a batch packs into, or None when ``model`` needs the
    padded path: no custom-mask support, rows not in right-padded prompt+response form (``build``
    raises ValueError), or a sliding window narrower than the layout's sequences."""
    if not supports_packing(model):
        return None
    try:
        layout = build(attention_cost(model))
    except ValueError:
        return None
    return layout if supports_packing(model, layout) else None


def _mask(model: torch.nn.Module, layout: PackedLayout, device) -> torch.Tensor:
    config = _causal_lm(model).config
    impl = getattr(config, "_attn_implementation", None)
    if impl not in _MASK_IMPLS:
        raise NotImplementedError(f"packed layouts need sdpa or eager attention, the model uses {impl!r}")
    dtype = _MASK_IMPLS[impl] or next(model.parameters()).dtype
    return layout.attention_mask(dtype).to(device)


def _label_logps(logits: torch.Tensor, labels: torch.Tensor, entropies: list | None) -> torch.Tensor:
    """log softmax(logits)[labels] in fp32; appends the (detached) entropy to ``entropies`` if given."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    if entropies is not None:
        with torch.no_grad():
            logp = logits.detach() - lse.detach().unsqueeze(-1)
            entropies.append(-(logp.exp() * logp).sum(-1))
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse


def _head_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, softcap: float | None,
                chunk_elems: int, entropies: list | None = None) -> torch.Tensor:
    """log softmax(head(hidden))[labels] for (N, d) hidden states, in row chunks of about
    ``chunk_elems`` logits.

    With several chunks and gradients on, each chunk's logits are recomputed in the backward pass
    instead of kept alive, so the working set is one chunk of logits, never N x V.
    """
    def chunk_fn(h: torch.Tensor, y: torch.Tensor, ent: list | None = None) -> torch.Tensor:
        logits = head(h)
        if softcap is not None:
            logits = torch.tanh(logits.float() / softcap) * softcap
        return _label_logps(logits, y, ent)

    n = hidden.shape[0]
    rows = max(16, chunk_elems // head.weight.shape[0])
    if n <= rows:
        return chunk_fn(hidden, labels, entropies)
    recompute = torch.is_grad_enabled()
    parts = []
    for s in range(0, n, rows):
        h, y = hidden[s:s + rows], labels[s:s + rows]
        if recompute:
            from torch.utils.checkpoint import checkpoint
            if entropies is not None:
                with torch.no_grad():
                    chunk_fn(h.detach(), y, entropies)
            parts.append(checkpoint(chunk_fn, h, y, use_reentrant=False))
        else:
            parts.append(chunk_fn(h, y, entropies))
    return torch.cat(parts)


def layout_token_logps(model: torch.nn.Module, layout: PackedLayout, chunk_elems: int = 1 << 24,
                       entropy: bool = False):
    """(N,) float32 log-prob of each label token of ``layout`` under ``model``; the LM head works on
    about ``chunk_elems`` logits at a time. With ``entropy``, returns (logps, entropies) where
    entropies (N,) are those of the (detached) predicted distributions."""
    ent: list | None = [] if entropy else None
    logps = _layout_token_logps(model, layout, chunk_elems, ent)
    if not entropy:
        return logps
    return logps, (torch.cat(ent) if ent else logps.new_zeros(0)).detach()


def _layout_token_logps(model, layout: PackedLayout, chunk_elems: int, ent: list | None) -> torch.Tensor:
    device = next(model.parameters()).device
    layout = layout.to(device)
    mask = _mask(model, layout, device)
    lm = _causal_lm(model)
    config = lm.config
    backbone = getattr(lm, "base_model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    # FSDP2 gathers a module's weights in its own forward: calling the backbone and head directly would
    # skip the root's gather (embeddings, head) and its gradient reduction, so a sharded model goes through forward.
    fast = (getattr(config, "model_type", None) in _PLAIN_HEAD and backbone is not None and backbone is not lm
            and isinstance(head, torch.nn.Linear) and not current().sharded)
    if fast:
        hidden = backbone(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids,
                          use_cache=False).last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, layout.src)
        softcap = getattr(config, "final_logit_softcapping", None)
        return _head_logps(head, picked, layout.labels, softcap, chunk_elems, ent)
    logits = model(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids,
                   use_cache=False).logits
    picked = logits.reshape(-1, logits.shape[-1]).index_select(0, layout.src)
    rows = max(16, chunk_elems // picked.shape[-1])
    out = [_label_logps(picked[s:s + rows], layout.labels[s:s + rows], ent)
           for s in range(0, picked.shape[0], rows)]
    return torch.cat(out) if out else picked.new_zeros(0, dtype=torch.float32)


def layout_sequence_logps(model: torch.nn.Module, layout: PackedLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (S,) and label counts (S,) of the layout's output sequences."""
    logps = layout_token_logps(model, layout)
    owner = layout.owner.to(logps.device)
    sums = torch.zeros(layout.num_outputs, dtype=logps.dtype, device=logps.device).index_add(0, owner, logps)
    counts = torch.zeros(layout.num_outputs, dtype=torch.float32, device=logps.device).index_add(
        0, owner, torch.ones_like(logps))
    return sums, counts


def grouped_response_logps(model: torch.nn.Module, prompt_ids: list[list[int]], response_ids: torch.Tensor,
                           response_mask: torch.Tensor, pad_id: int, *, entropy: bool = False,
                           prefix_sharing: bool = True, padding_free: bool = True) -> dict[str, torch.Tensor]:
    """Teacher-forced log-probs of responses in rollout layout, rows sharing a prompt computing it once.

    The same outputs as ``prefopt.models.value.response_forward(..., values=False)``: ``logps``
    (B, L) float32, 0 where ``response_mask`` is False, and with ``entropy`` the (detached) entropy
    (B, L) of the next-token distribution at each response position. The k samples of one prompt
    attend to a single copy of it and rows are packed without padding, so the forward and backward
    run on about ``P + k * R`` tokens per prompt instead of ``k * max(P + R)``.
    """
    from prefopt.data.batching import pack_groups

    mask = response_mask.to(torch.bool)
    lengths = mask.sum(-1).tolist()
    responses = [response_ids[i, :n].tolist() for i, n in enumerate(lengths)]
    layout = pack_groups([list(p) for p in prompt_ids], responses, pad_id, prefix_sharing=prefix_sharing,
                         padding_free=padding_free, attention_cost=attention_cost(model))
    if not supports_packing(model, layout):
        from prefopt.models.value import response_forward
        return response_forward(model, prompt_ids, response_ids, response_mask, pad_id, entropy=entropy)
    out = layout_token_logps(model, layout, entropy=entropy)
    logps, ent = out if entropy else (out, None)
    device = logps.device
    B, L = response_ids.shape
    index = (layout.owner.to(device), layout.label_pos.to(device))
    result = {"logps": torch.zeros(B, L, dtype=logps.dtype, device=device).index_put(index, logps)}
    if entropy:
        result["entropy"] = torch.zeros(B, L, dtype=ent.dtype, device=device).index_put(index, ent)
    return result
