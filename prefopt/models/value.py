"""Value head for PPO, and the teacher-forced forward that gives per-token log-probs (and values) of
sampled responses laid out like a :class:`prefopt.types.Rollout` (row i, response token j).

The value head is a linear layer on the policy's last hidden state, attached to the policy as the
submodule ``value_head`` so the optimizer, gradient clipping and the loop see its parameters. It
is kept *out of* the policy's ``state_dict`` (so ``save_pretrained`` writes a plain causal LM that
loads anywhere) and saved instead with the algorithm's state; see :func:`attach_value_head`.
"""
from __future__ import annotations

import torch
from torch import nn

from prefopt.data.tokenize import collate_sequences
from prefopt.models.logprobs import supports_logits_to_keep, selective_log_softmax

VALUE_HEAD = "value_head"


class ValueHead(nn.Module):
    """V(s_t) = w · h_t + b on the last hidden state h_t (B, T, H) -> (B, T), in fp32.

    With ``backbone`` (a separate critic model, e.g. a copy of the policy) h_t comes from the
    backbone's own forward instead of the policy's hidden states.
    """

    def __init__(self, hidden_size: int, backbone: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.backbone = backbone

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        if config is not None and getattr(config, name, None):
            return int(getattr(config, name))
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return int(emb.weight.shape[1])
    raise ValueError("cannot tell the hidden size of this model for a value head")


def _drop_from_state_dict(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + VALUE_HEAD + ".")]:
        del state_dict[key]


def _ignore_missing(module, incompatible_keys):
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys
                                         if not (k == VALUE_HEAD or f"{VALUE_HEAD}." in k)]


def attach_value_head(model: nn.Module, separate: bool = False) -> ValueHead:
    """Give ``model`` a zero-initialized value head (idempotent) and return it.

    ``separate``: the critic gets its own trunk, a copy of the policy as it is now (the standard
    PPO setup with a critic model; twice the trainable parameters) instead of sharing the policy's.

    The head's parameters appear in ``model.parameters()`` but not in ``model.state_dict()``;
    loading a policy state dict without them is not an error. Save the head with
    ``head.state_dict()`` (the PPO algorithm keeps it in its own checkpoint state).
    """
    existing = getattr(model, VALUE_HEAD, None)
    if isinstance(existing, ValueHead):
        return existing
    param = next(model.parameters())
    backbone = None
    if separate:
        import copy
        backbone = copy.deepcopy(model)
        backbone.train(model.training)
    head = ValueHead(_hidden_size(model), backbone).to(device=param.device)
    model.add_module(VALUE_HEAD, head)
    model.register_state_dict_post_hook(_drop_from_state_dict)
    model.register_load_state_dict_post_hook(_ignore_missing)
    return head


def get_value_head(model: nn.Module) -> ValueHead | None:
    head = getattr(model, VALUE_HEAD, None)
    return head if isinstance(head, ValueHead) else None


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    from prefopt.losses.rl import entropy_from_logits
    return entropy_from_logits(logits)


def _device(model: nn.Module, default: torch.device) -> torch.device:
    for m in (model, getattr(model, "policy", None)):  # `policy`: adapter-disabled references own no parameters
        if m is None:
            continue
        try:
            return next(m.parameters()).device
        except StopIteration:
            continue
    return default


def response_forward(model: nn.Module, prompt_ids: list[list[int]], response_ids: torch.Tensor,
                     response_mask: torch.Tensor, pad_id: int, *, values: bool = False,
                     entropy: bool = False) -> dict[str, torch.Tensor]:
    """Teacher-forced per-token outputs for responses in rollout layout.

    prompt_ids: B unpadded prompt id lists; response_ids, response_mask: (B, L) right-padded.
    Returns a dict with ``logps`` (B, L) float32 log π(token_j | prompt, tokens_<j) (0 where
    masked; with grad when grad is enabled), ``values`` (B, L) V of the state each token is
    generated from (when ``values``; needs :func:`attach_value_head`), ``entropy`` (B, L) of the
    policy's next-token distribution at each response position (detached, when ``entropy``).
    Sequences are right-padded with :func:`collate_sequences` and the LM head runs only from the
    shortest prompt on.
    """
    mask = response_mask.to(torch.bool)
    lengths = mask.sum(-1).tolist()
    rows = [(list(p), response_ids[i, :n].tolist()) for i, (p, n) in enumerate(zip(prompt_ids, lengths))]
    device = _device(model, response_ids.device)
    batch = collate_sequences(rows, pad_id).to(device)
    B, L = response_ids.shape
    plen = torch.tensor([len(p) for p in prompt_ids], device=device)
    first = max(1, int(plen.min()))
    T = batch.input_ids.shape[1]
    keep = T - first + 1
    kwargs = {"logits_to_keep": keep} if supports_logits_to_keep(model) else {}
    head = get_value_head(model) if values else None
    if values and head is None:
        raise ValueError("response_forward(values=True) needs a value head (attach_value_head)")
    shared = head is not None and head.backbone is None
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                output_hidden_states=shared, **kwargs)
    logits = out.logits[:, -keep:-1]  # (B, T - first, V): column c predicts position first + c
    labels = batch.input_ids[:, first:]
    # response token j of row i sits at position plen_i + j -> column plen_i - first + j
    cols = (plen - first).unsqueeze(1) + torch.arange(L, device=device).unsqueeze(0)
    cols = cols.clamp(max=T - first - 1)
    mask_d = mask.to(device)
    logps_all = selective_log_softmax(logits, labels)
    result = {"logps": torch.where(mask_d, logps_all.gather(1, cols), torch.zeros((), device=device))}
    if entropy:
        with torch.no_grad():
            ent = _entropy(logits.detach()).gather(1, cols)
        result["entropy"] = torch.where(mask_d, ent, torch.zeros((), device=device))
    if head is not None:
        if shared:
            hidden_states = out.hidden_states[-1]
        else:
            critic_kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(head.backbone) else {}
            hidden_states = head.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                          use_cache=False, output_hidden_states=True, **critic_kwargs).hidden_states[-1]
        hidden = hidden_states[:, first - 1:T - 1]  # the state each label is predicted from
        vals = head(hidden).gather(1, cols)
        result["values"] = torch.where(mask_d, vals, torch.zeros((), device=device))
    return result
