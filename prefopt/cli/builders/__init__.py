"""Algorithm builders: ``algo.name`` → a function (cfg, model, tokenizer) -> (Algorithm, data stats).

Each family registers its builders in its own module (offline, online, ...), imported below.
"""
from __future__ import annotations

import difflib
from typing import Callable

from prefopt.errors import ConfigError

BUILDERS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        BUILDERS[name] = fn
        return fn
    return deco


def build_algorithm(cfg, model, tokenizer):
    name = cfg.algo.name
    if name not in BUILDERS:
        close = difflib.get_close_matches(name, list(BUILDERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"algo.name: unknown algorithm '{name}'{hint} (known: {', '.join(sorted(BUILDERS))})")
    return BUILDERS[name](cfg, model, tokenizer)


from prefopt.cli.builders import offline  # noqa: E402,F401  (registers sft, dpo)
