"""Data parallelism over the runtime's ranks: prepare a model (DDP: identical replicas; FSDP2:
``fully_shard``), sum gradients, keep FSDP2 weights gathered while sampling, and move full
(unsharded) state dicts in and out so a checkpoint loads under any world size or strategy.

Why no ``DistributedDataParallel`` wrapper: loss terms call the model's own attributes
(``config``, value heads, reward ensembles) and several forwards per step; a replica plus one
bucketed all-reduce (sum) of the gradients after the step's backward passes is the same
arithmetic as DDP without its overlap of communication and backward.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from prefopt.dist.runtime import Runtime
from prefopt.errors import ConfigError

BUCKET_BYTES = 25 * 1024 * 1024  # gradient all-reduce bucket (DDP's default size)


def prepare_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """Make ``model`` ready for ``rt.strategy`` before its optimizer is built: DDP replicas start
    from rank 0's weights; FSDP2 shards each decoder layer and the root in place."""
    if rt.strategy == "fsdp2" and rt.backend is not None:
        return _fully_shard(model, rt)
    if rt.distributed:
        import torch.distributed as dist
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                buf = t.detach().to(rt._comm_device(), copy=True)
                dist.broadcast(buf, src=0)
                t.copy_(buf.to(t.device))
    return model


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (HF's ``_no_split_modules`` classes), each one FSDP2 unit."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    inner = getattr(model, "base_model", model)
    names |= set(getattr(inner, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def _fully_shard(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"dist.strategy: fsdp2 shards torch modules; got {type(model).__name__}")
    mesh = init_device_mesh(rt._comm_device().type, (rt.world_size,))
    try:
        for layer in _layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    except Exception as exc:  # e.g. quantized (bitsandbytes) weights, non-float parameters
        raise ConfigError(f"dist.strategy: fsdp2 cannot shard {type(model).__name__} ({type(exc).__name__}: "
                          f"{exc}); use dist.strategy=ddp") from exc
    # Each rank's loss is already divided by the GLOBAL units: reduce-scatter must sum, not average
    # (and with a plain SUM: gloo has no pre-multiplied sum). Both settings are per FSDP unit.
    from torch.distributed.fsdp import FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def sync_gradients(params: list[torch.Tensor], rt: Runtime) -> None:
    """DDP: sum every gradient over ranks in flat buckets (a missing gradient counts as zeros, so
    all ranks reduce the same buffers). FSDP2 already reduce-scattered in backward."""
    if not rt.distributed or rt.sharded:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= BUCKET_BYTES:
            _reduce_bucket(bucket, rt, dist)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, rt, dist)


def _reduce_bucket(grads: list[torch.Tensor], rt: Runtime, dist) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group]).to(rt._comm_device())
        dist.all_reduce(flat)
        flat = flat.to(group[0].device)
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def grad_norm_value(norm) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor under FSDP2)."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


@contextmanager
def gathered(model: torch.nn.Module, rt: Runtime):
    """FSDP2: keep every weight unsharded for the block. Sampling calls forward a different number
    of times on each rank (responses end at different lengths); with weights gathered once, those
    forwards need no collective. A no-op otherwise."""
    if not rt.sharded:
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)  # FSDP2's default: root stays gathered


# ---------------------------------------------------------------------- full state dicts
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: torch.nn.Module, rt: Runtime) -> dict | None:
    """Collective under FSDP2: the full weights on rank 0 (CPU), ``{}`` on the others; None when
    the model holds full weights itself (save it directly)."""
    if not rt.sharded:
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    # Gathered copies no longer share storage: drop the aliases of tied weights (lm_head = embeddings),
    # which a plain save leaves out.
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            state.pop(name, None)
    return state


def load_full_model_state(model: torch.nn.Module, state: dict, rt: Runtime) -> None:
    """Load full weights (as saved by any run) into a sharded model; every rank passes them."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, state, options=_options(strict=False))


def _param_names(model: torch.nn.Module, optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    try:
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError:
        raise ConfigError("dist.strategy: fsdp2 needs an optimizer over the model's own parameters") from None


def full_optimizer_state(model: torch.nn.Module, optimizer, rt: Runtime) -> dict:
    """The optimizer's state as a single-process run saves it (integer parameter ids in group
    order, full tensors), whatever the strategy; collective under FSDP2 (``{}`` off rank 0)."""
    if not rt.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    names = _param_names(model, optimizer)
    osd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not rt.is_main:
        return {}
    index = {n: i for i, n in enumerate(names)}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]}
              for g in osd["param_groups"]]
    return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: torch.nn.Module, optimizer, state: dict, rt: Runtime) -> None:
    """Load a single-process-layout optimizer state (see :func:`full_optimizer_state`)."""
    if not rt.sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model, optimizer)
    osd = {"state": {names[int(i)]: s for i, s in state["state"].items()},
           "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                             "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, osd, options=_options())
