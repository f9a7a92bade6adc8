"""Rollout workers: Ray actors that generate with the policy's current weights.

:class:`RayRolloutWorkers` stands in for :func:`prefopt.rollout.engine.generate` (same call): the
prompts of a call are split into contiguous chunks, one per actor, each generating with its
prompts' own seeds, and the chunks are stacked back in order. The engine's draws depend only on
each prompt's seed, so the result is the in-process one (up to float noise of batch shapes).

Weights are version-stamped: the version is the sum of the parameters' in-place update counters
(``Tensor._version``), which every optimizer step advances. A call that sees a newer version than
the workers hold broadcasts the state dict (one copy in Ray's object store for all actors) unless
the workers are at most ``max_staleness`` learner updates behind. A worker that dies stops the run
with its error (raised while the step's batches are made: no half step is saved).
Scoring stays in the learner process (reward functions and judges are the user's Python).
"""
from __future__ import annotations

import copy

import torch

from prefopt.errors import ConfigError, TrainingError

RAY_EXTRA = "pip install 'prefopt[ray]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"dist.rollout_workers: Ray is not installed; {RAY_EXTRA} (or set dist.rollout_workers=0)"
                          ) from None
    return ray


def init_ray(ray, **kwargs) -> None:
    """``ray.init`` that leaves this process's SIGINT/SIGTERM handlers as they were (Ray installs its
    own, which would bypass the loop's signal-safe checkpointing)."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(**kwargs)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def weights_version(model: torch.nn.Module) -> int:
    """Advances with every in-place update of any parameter (optimizer steps, loads)."""
    return sum(p._version for p in model.parameters())


class _Worker:
    """One actor: a copy of the policy, generating with the weights it was last sent."""

    def __init__(self, model, tokenizer, threads: int):
        torch.set_num_threads(max(1, threads))
        self.model, self.tokenizer, self.version = model.eval(), tokenizer, -1

    def load(self, state: dict, version: int) -> int:
        self.model.load_state_dict(state, strict=False)
        self.version = version
        return version

    def generate(self, prompts, cfg, pad_token_id, eos_token_id, seeds, version):
        from prefopt.rollout.engine import generate

        if version != self.version:  # never sample with weights other than the ones asked for
            raise RuntimeError(f"worker holds weights version {self.version}, the call needs {version}")
        return generate(self.model, prompts, cfg, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                        tokenizer=self.tokenizer, seeds=seeds)


class RayRolloutWorkers:
    """``n`` Ray actors generating for the learner (``max_staleness`` learner updates allowed)."""

    def __init__(self, model: torch.nn.Module, tokenizer, n: int, *, max_staleness: int = 0, threads: int = 1):
        if n < 1:
            raise ConfigError(f"dist.rollout_workers: got {n}, expected >= 1")
        ray = import_ray()
        if not ray.is_initialized():
            init_ray(ray, num_cpus=n, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        self.ray, self.max_staleness = ray, max_staleness
        actor = ray.remote(num_cpus=1)(_Worker)
        template = ray.put(copy.deepcopy(model).cpu())
        self.actors = [actor.remote(template, tokenizer, threads) for _ in range(n)]
        self.sent_version, self.seen_version, self.behind = None, None, 0
        self.pushes = 0

    def _sync(self, model) -> int:
        """The version the workers hold after pushing new weights if they are too far behind."""
        version = weights_version(model)
        if version != self.seen_version:
            self.behind += self.seen_version is not None
            self.seen_version = version
        if self.sent_version is None or self.behind > self.max_staleness:
            state = self.ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
            self._get([a.load.remote(state, version) for a in self.actors])
            self.sent_version, self.behind, self.pushes = version, 0, self.pushes + 1
        return self.sent_version

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except Exception as exc:  # RayActorError (a dead worker), or the worker's own exception
            raise TrainingError(f"rollout worker failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def __call__(self, model, prompts, cfg, *, pad_token_id, eos_token_id, tokenizer=None, seeds=None):
        from prefopt.rollout.ops import cat_rollouts

        version = self._sync(model)
        if seeds is None:
            raise ConfigError("rollout workers need per-prompt seeds (the learner's sampling calls give them)")
        bounds = torch.linspace(0, len(prompts), len(self.actors) + 1).round().long().tolist()
        chunks = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        refs = [actor.generate.remote(prompts[a:b], cfg, pad_token_id, eos_token_id, seeds[a:b], version)
                for actor, (a, b) in zip(self.actors, chunks)]
        return cat_rollouts(self._get(refs), pad_token_id)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
