"""The loop's side of data parallelism: what a step reduces over ranks, and checkpoints that hold
full (unsharded) state written by rank 0 alone and loadable under any world size or strategy.

A checkpoint of a W-rank run holds rank 0's algorithm and RNG state in the usual places (what a
single-process run saves) plus ``ranks``: every rank's algorithm and RNG state. Resumed on W ranks,
each rank takes its own; on another world size every rank takes rank 0's, which is exact for
sources whose state is global (dataset samplers, prompt positions, sampling-call counters) — a
rollout buffer or a round's rows drawn by the other ranks are not redistributed.
"""
from __future__ import annotations

import warnings

from prefopt.dist import Runtime
from prefopt.dist.parallel import (full_model_state, full_optimizer_state, load_full_model_state,
                                   load_full_optimizer_state)
from prefopt.train.checkpoint import STATE_NAME, read_model_state, rng_state

# Config keys counted per rank: on a resume under another world size they may change so that
# value × world size (the global count) stays the same.
PER_RANK_KEYS = ("train.batch_size", "online.prompts_per_step", "online.round_prompts", "hypo.prompts_per_step")


class NullLogger:
    """The metrics sink of ranks other than 0: they compute every metric, rank 0 writes them."""

    path = None

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def reduce_step(rt: Runtime, sums: dict[str, float], metrics: dict[str, float], tokens: int):
    """Per-term loss sums, unit-weighted metrics (already divided by the GLOBAL units, so their sum
    over ranks is the global mean) and tokens, summed over ranks in one exchange."""
    if not rt.distributed:
        return sums, metrics, tokens
    packed = {**{f"sum\0{k}": v for k, v in sums.items()}, **{f"metric\0{k}": v for k, v in metrics.items()},
              "tokens\0": float(tokens)}
    total = rt.sum_dicts(packed)
    pick = lambda tag: {k.split("\0", 1)[1]: v for k, v in total.items() if k.startswith(tag + "\0")}  # noqa: E731
    return pick("sum"), pick("metric"), int(total["tokens\0"])


def checkpoint_state(rt: Runtime, model, optimizer, scheduler, algorithm, *, collective: bool = True):
    """(full model state dict or None, trainer state) to save; collective under data parallelism
    (every rank calls it; only rank 0's result is complete). ``collective=False`` (an interrupt,
    when the other ranks may be gone): rank 0's own state, valid for DDP replicas only."""
    state = {"scheduler": scheduler.state_dict(), "algorithm": algorithm.state_dict()}
    if not rt.distributed:
        return None, {"optimizer": optimizer.state_dict(), **state}
    if not collective:
        if rt.sharded:
            return None, None  # FSDP2 shards cannot be saved by one rank
        return None, {"optimizer": optimizer.state_dict(), **state}
    model_state = full_model_state(model, rt)
    state["optimizer"] = full_optimizer_state(model, optimizer, rt)
    state["ranks"] = rt.all_gather_object({"algorithm": state["algorithm"], "rng": rng_state()})
    state["world_size"] = rt.world_size
    return model_state, state


def restore_state(rt: Runtime, ckpt, state: dict, model, optimizer, load_weights) -> tuple[dict, dict]:
    """Load weights and optimizer state of a checkpoint saved under any world size; returns this
    rank's (algorithm state, RNG state)."""
    if rt.sharded:
        load_full_model_state(model, read_model_state(ckpt), rt)
    else:
        load_weights(model, ckpt)
    load_full_optimizer_state(model, optimizer, state["optimizer"], rt)
    ranks = state.get("ranks")
    if ranks and len(ranks) == rt.world_size:
        return ranks[rt.rank]["algorithm"], ranks[rt.rank]["rng"]
    if ranks and rt.is_main:
        warnings.warn(f"resuming a {len(ranks)}-rank checkpoint on {rt.world_size} rank(s): every rank continues "
                      "from rank 0's data position (exact for dataset and prompt streams; a partly used rollout "
                      "buffer is rank 0's)", stacklevel=2)
    return state["algorithm"], state["rng"]


def checkpoint_world_size(ckpt) -> int:
    """The world size a checkpoint was saved under (1 for single-process checkpoints)."""
    import json
    from pathlib import Path

    path = Path(ckpt) / f"{STATE_NAME}.json"
    return int(json.loads(path.read_text(encoding="utf-8")).get("world_size", 1)) if path.is_file() else 1


def per_rank_counts_for(saved: dict, requested: dict, saved_world: int, world: int) -> dict:
    """``saved`` (a config dict) with each per-rank count restated for ``world`` ranks where the
    requested value keeps the global count: 2 ranks × 4 resumed on 1 rank as 1 × 8 is no change."""
    if saved_world == world:
        return saved
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for key in PER_RANK_KEYS:
        section, name = key.split(".")
        old, new = saved.get(section, {}).get(name), requested.get(section, {}).get(name)
        if not (isinstance(old, int) and isinstance(new, int)):
            continue
        if old * saved_world == new * world:
            out[section][name] = new
        elif old == new:  # accepted, but the global count changes (the key may be one this recipe ignores)
            warnings.warn(f"--resume on {world} rank(s) of a {saved_world}-rank run: {key}={new} per rank makes the "
                          f"global count {new * world} (was {old * saved_world}); set {key}="
                          f"{old * saved_world // world} to keep it", stacklevel=2)
    return out
