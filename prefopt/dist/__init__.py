"""Scale-out: the distributed runtime (rank, world size, device, is_main, all-reduce, unwrap) and
data parallelism (DDP replicas or FSDP2 shards) over the processes torchrun starts.

Imports stay light: ``torch.distributed`` is touched only inside the functions that need it.
"""
from prefopt.dist.config import DistConfig
from prefopt.dist.runtime import Runtime, current, init_runtime, launched_world_size, set_current, shutdown

__all__ = ["DistConfig", "Runtime", "current", "init_runtime", "launched_world_size", "set_current", "shutdown"]
