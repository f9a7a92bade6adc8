"""Tiny built-in model configs (Llama-style and GPT-2-style), ~1M to ~25M parameters."""
from __future__ import annotations

# name -> (family, hidden, layers, heads, intermediate)
TINY_MODELS: dict[str, tuple[str, int, int, int, int]] = {
    "llama-1m": ("llama", 128, 4, 4, 344),
    "llama-5m": ("llama", 256, 6, 8, 688),
    "llama-25m": ("llama", 512, 8, 8, 1376),
    "gpt2-1m": ("gpt2", 128, 4, 4, 512),
    "gpt2-5m": ("gpt2", 256, 6, 8, 1024),
    "gpt2-25m": ("gpt2", 512, 8, 8, 2048),
}
TINY_PREFIX = "tiny:"


def is_tiny(name: str) -> bool:
    return name.startswith(TINY_PREFIX)


def tiny_config(name: str, vocab_size: int, *, pad_token_id: int, eos_token_id: int,
                bos_token_id: int | None = None, max_positions: int = 256):
    """A ``transformers`` config for the tiny model ``name`` (with or without the ``tiny:`` prefix)."""
    from transformers import GPT2Config, LlamaConfig

    key = name[len(TINY_PREFIX):] if is_tiny(name) else name
    if key not in TINY_MODELS:
        import difflib

        from prefopt.errors import ConfigError
        close = difflib.get_close_matches(key, list(TINY_MODELS), n=1)
        hint = f"; did you mean 'tiny:{close[0]}'?" if close else ""
        raise ConfigError(f"unknown tiny model '{name}'{hint} (known: {', '.join('tiny:' + k for k in TINY_MODELS)})")
    family, hidden, layers, heads, inter = TINY_MODELS[key]
    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                  bos_token_id=bos_token_id if bos_token_id is not None else eos_token_id)
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, intermediate_size=inter,
                           max_position_embeddings=max_positions, tie_word_embeddings=True, **common)
    return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter,
                      n_positions=max_positions, **common)
