"""Rollouts: batched sampling with a KV cache (``engine``)."""
from prefopt.rollout.engine import SamplingConfig, generate

__all__ = ["SamplingConfig", "generate"]
