"""The KV caches of the rollout engine: a preallocated full-attention layer written in place, row
selection when rows finish, and the keyword a model's ``forward`` takes its cache under."""
from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["accepts", "cache_arg", "make_cache", "select_rows"]

def _prealloc_layer_cls():
    """Build the preallocated layer class on first use (keeps ``import`` of this module light)."""
    from transformers.cache_utils import DynamicLayer

    global _PREALLOC_CLS
    if _PREALLOC_CLS is not None:
        return _PREALLOC_CLS

    class PreallocDynamicLayer(DynamicLayer):
        """A full-attention cache layer written in place into a buffer sized for the whole generation.

        ``keys``/``values`` are views ``buf[:, :, :length]``; ``update`` copies the new states into
        the buffer instead of concatenating (which copies the whole cache every step).
        """

        def __init__(self, capacity: int, **kwargs):
            super().__init__(**kwargs)
            self.capacity = int(capacity)
            self.length = 0

        def lazy_initialization(self, key_states, value_states):
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, d = key_states.shape
            self._kbuf = key_states.new_empty(b, h, self.capacity, d)
            self._vbuf = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
            self.length = 0
            self.keys, self.values = self._kbuf[:, :, :0], self._vbuf[:, :, :0]
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            end = self.length + n
            if end > self.capacity:  # grow (should not happen: capacity is prompt + max_new_tokens)
                self.capacity = max(end, 2 * self.capacity)
                kb = self._kbuf.new_empty(*self._kbuf.shape[:2], self.capacity, self._kbuf.shape[-1])
                vb = self._vbuf.new_empty(*self._vbuf.shape[:2], self.capacity, self._vbuf.shape[-1])
                kb[:, :, : self.length] = self._kbuf[:, :, : self.length]
                vb[:, :, : self.length] = self._vbuf[:, :, : self.length]
                self._kbuf, self._vbuf = kb, vb
            self._kbuf[:, :, self.length:end] = key_states
            self._vbuf[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._kbuf = self._kbuf.index_select(0, indices)
                self._vbuf = self._vbuf.index_select(0, indices)
                self.keys, self.values = self._kbuf[:, :, : self.length], self._vbuf[:, :, : self.length]

        def reset(self) -> None:
            super().reset()
            self.length = 0

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("PreallocDynamicLayer does not support crop")

        def batch_repeat_interleave(self, repeats: int) -> None:
            raise NotImplementedError("PreallocDynamicLayer does not support batch_repeat_interleave")

    _PREALLOC_CLS = PreallocDynamicLayer
    return _PREALLOC_CLS


_PREALLOC_CLS = None


def make_cache(model, capacity: int):
    """A cache for ``model``: preallocated when every layer is plain full attention, else HF's own.

    Returns None for models without an HF config (they build and return their own cache).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return None
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=config)
    except Exception:  # noqa: BLE001 - unusual config: let the model build its cache
        return None
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cls = _prealloc_layer_cls()
        cache.layers = [cls(capacity) for _ in cache.layers]
    return cache


def select_rows(cache: Any, idx: torch.Tensor) -> Any:
    """Keep only the batch rows ``idx`` of a KV cache (HF Cache object or legacy tuples)."""
    if cache is None:
        return None
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
        return cache
    if isinstance(cache, (tuple, list)):
        return type(cache)(select_rows(c, idx) for c in cache)
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, idx)
    raise TypeError(f"don't know how to select batch rows of a cache of type {type(cache).__name__}")


def _forward_params(model) -> dict:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return {}


def cache_arg(model) -> str:
    """The KV-cache keyword of ``model.forward``: ``cache`` (current transformers, where
    ``past_key_values`` is deprecated and warns on every call) or ``past_key_values`` (older
    transformers, custom models). A PEFT wrapper forwards ``**kwargs``: its base model decides."""
    for _ in range(4):
        params = _forward_params(model)
        for name in ("cache", "past_key_values"):
            if name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD:
                return name
        base = getattr(model, "get_base_model", None)
        if base is None:
            break
        model = base()
    return "past_key_values"


def accepts(model, name: str) -> bool:
    params = _forward_params(model)
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
