"""Load any ``AutoModelForCausalLM`` by hub name or local path, or build a tiny one from a config."""
from __future__ import annotations

import typing
from pathlib import Path

import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.models.config import DtypeName, ModelConfig
from prefopt.models.tiny import is_tiny, tiny_config

DTYPES = {name: getattr(torch, name) for name in typing.get_args(DtypeName)}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype: got '{name}', expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _check_local(name_or_path: str, what: str) -> None:
    """A name that can only be a local path (not 'org/name') must exist."""
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise PrefoptError(f"cannot load {what} '{name_or_path}': no such local path")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer; a missing pad token falls back to the eos token."""
    from transformers import AutoTokenizer

    _check_local(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise PrefoptError(f"cannot load tokenizer '{name_or_path}': {str(exc).splitlines()[0]}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _attn_kwargs(cfg: ModelConfig) -> dict:
    return {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}


def load_model(cfg: ModelConfig, tokenizer=None):
    """The policy model described by ``cfg`` (tiny models need ``tokenizer`` for their vocabulary)."""
    from transformers import AutoModelForCausalLM

    dtype = _dtype(cfg.dtype)
    if is_tiny(cfg.name_or_path):
        if tokenizer is None:
            raise ConfigError(f"model.name_or_path '{cfg.name_or_path}' is a tiny model: it needs a tokenizer")
        config = tiny_config(cfg.name_or_path, len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                             max_positions=cfg.max_positions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = AutoModelForCausalLM.from_config(config, **_attn_kwargs(cfg))
        return model.to(dtype)
    _check_local(cfg.name_or_path, "model")
    if Path(cfg.name_or_path).exists() and not (Path(cfg.name_or_path) / "config.json").exists():
        raise PrefoptError(f"cannot load model '{cfg.name_or_path}': the directory has no config.json")
    try:
        return AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, dtype=dtype, **_attn_kwargs(cfg))
    except (OSError, ValueError) as exc:
        raise PrefoptError(f"cannot load model '{cfg.name_or_path}': {str(exc).splitlines()[0]}") from exc


def freeze_except(model: torch.nn.Module, patterns: list[str]) -> int:
    """Train only the parameters whose names match one of ``patterns`` (``re.search``); freeze the rest.

    Returns the number of trainable elements. A pattern that is not a valid regular expression, or
    patterns that match no parameter, raise ConfigError naming them (and some parameter names).
    """
    import re

    compiled = []
    for pat in patterns:
        try:
            compiled.append(re.compile(pat))
        except re.error as exc:
            raise ConfigError(f"model.trainable: '{pat}' is not a regular expression ({exc})") from exc
    names = [name for name, _ in model.named_parameters()]
    unmatched = [c.pattern for c in compiled if not any(c.search(n) for n in names)]
    if unmatched:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        listed = ", ".join(f"'{u}'" for u in unmatched)
        verb = "matches" if len(unmatched) == 1 else "match"
        raise ConfigError(f"model.trainable: {listed} {verb} no parameter of the model "
                          f"({len(names)} parameters: {shown})")
    for name, p in model.named_parameters():
        p.requires_grad_(any(c.search(name) for c in compiled))
    return count_parameters(model, trainable_only=True)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
