"""Algorithm builders: ``algo.name`` → a function (cfg, model, tokenizer) -> (Algorithm, data stats).

Each family registers its builders in its own module (offline, online, ...), imported below.
"""
from __future__ import annotations

import difflib
from typing import Callable

from prefopt.errors import ConfigError

BUILDERS: dict[str, Callable] = {}
# algo.name -> (cfg, tokenizer) -> the model that algorithm trains, when it is not the policy
# (e.g. a reward model with a classification head); the default is ``load_policy`` (LoRA applied).
MODEL_BUILDERS: dict[str, Callable] = {}


def register(name: str, *, model_builder: Callable | None = None):
    def deco(fn):
        BUILDERS[name] = fn
        if model_builder is not None:
            MODEL_BUILDERS[name] = model_builder
        return fn
    return deco


def build_model(cfg, tokenizer):
    """The model ``cfg.algo.name`` trains: its own model builder's, else the policy of ``cfg.model``
    with LoRA adapters when ``cfg.lora.enabled``."""
    if cfg.algo.name in MODEL_BUILDERS:
        return MODEL_BUILDERS[cfg.algo.name](cfg, tokenizer)
    from prefopt.models.lora import load_policy
    return load_policy(cfg, tokenizer)


def finish_run(cfg, model, tokenizer, run_dir, result) -> None:
    """After training: write a merged model to ``<run_dir>/merged`` when ``lora.save`` asks for it."""
    lora = getattr(cfg, "lora", None)
    if lora is None or not lora.enabled or lora.save == "adapter":
        return
    from pathlib import Path

    from prefopt.models.lora import save_merged
    adapter = Path(result.final_checkpoint) / "model" if result.final_checkpoint else None
    save_merged(model, tokenizer, Path(run_dir) / "merged", cfg.model, lora, adapter)


def build_algorithm(cfg, model, tokenizer):
    name = cfg.algo.name
    if name not in BUILDERS:
        close = difflib.get_close_matches(name, list(BUILDERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"algo.name: unknown algorithm '{name}'{hint} (known: {', '.join(sorted(BUILDERS))})")
    return BUILDERS[name](cfg, model, tokenizer)


from prefopt.cli.builders import offline  # noqa: E402,F401  (registers sft, dpo)
from prefopt.cli.builders import online  # noqa: E402,F401  (registers rloo, grpo, ppo, online_dpo, ...)
from prefopt.cli.builders import hybrid  # noqa: E402,F401  (registers hypo, drpo)
from prefopt.cli.builders import recipe  # noqa: E402,F401  (registers recipe: the YAML recipe section)
from prefopt.cli.builders import multiobjective  # noqa: E402,F401  (registers modpo, ric)
from prefopt.cli.builders import selfplay  # noqa: E402,F401  (registers sppo, inpo, dno, selm, egpo, online_ipo, spo)
