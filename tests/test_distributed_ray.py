"""Ray rollout workers (``dist.rollout_workers``): the same samples as in-process generation for
fixed seeds, weights pushed by version (``dist.max_staleness``), a dead worker stops the run, and a
GRPO run with 2 workers trains to the weights of the in-process run. Skipped without Ray."""
from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'prefopt[ray]')")

from prefopt.dist.rollout_workers import RayRolloutWorkers, init_ray  # noqa: E402
from prefopt.errors import TrainingError  # noqa: E402
from prefopt.rollout.engine import SamplingConfig, generate  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    init_ray(ray, num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _prompts(tok):
    return [tok.encode(t, add_special_tokens=False) for t in ("the food was", "service", "i would", "great", "bad")]


def _gen(model, tok, prompts, cfg, seeds, engine=generate):
    return engine(model, prompts, cfg, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  tokenizer=tok, seeds=seeds)


def _same(a, b):
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.group, b.group)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_workers_sample_what_the_learner_samples_with_the_weights_they_are_sent(ray_cluster, tiny_llama,
                                                                                 reviews_tokenizer):
    tok, model = reviews_tokenizer, tiny_llama
    cfg, seeds, prompts = SamplingConfig(max_new_tokens=8, num_samples=2), [11, 12, 13, 14, 15], _prompts(tok)
    workers = RayRolloutWorkers(model, tok, 2, max_staleness=1)
    try:
        before = _gen(model, tok, prompts, cfg, seeds)
        _same(_gen(model, tok, prompts, cfg, seeds, workers), before)
        with torch.no_grad():  # a learner update
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        after = _gen(model, tok, prompts, cfg, seeds)
        assert not torch.equal(after.response_ids, before.response_ids)
        _same(_gen(model, tok, prompts, cfg, seeds, workers), before)  # 1 update behind: allowed, not pushed
        assert workers.pushes == 1
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.0)
        newest = _gen(model, tok, prompts, cfg, seeds)
        _same(_gen(model, tok, prompts, cfg, seeds, workers), newest)  # 2 behind: the new weights are pushed
        assert workers.pushes == 2
    finally:
        workers.close()


def test_ray_leaves_the_signal_handlers_alone(ray_cluster):
    import signal
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_dead_worker_stops_the_call_with_its_error(ray_cluster, tiny_llama, reviews_tokenizer):
    tok = reviews_tokenizer
    workers = RayRolloutWorkers(tiny_llama, tok, 2)
    ray.kill(workers.actors[1])
    with pytest.raises(TrainingError, match="rollout worker failed: .*Actor"):
        _gen(tiny_llama, tok, _prompts(tok), SamplingConfig(max_new_tokens=4), [1, 2, 3, 4, 5], workers)
    workers.close()


def test_grpo_with_two_rollout_workers_trains_as_in_process(ray_cluster, tmp_path):
    from safetensors.torch import load_file

    from test_distributed import _config, _local

    base = _config(tmp_path, "inproc", "grpo", tmp_path / "unused.jsonl", online__prompts_per_step=4)
    _local(base)
    _local(base | {"run_name": "workers", "dist": {"rollout_workers": 2}})
    a, b = (load_file(tmp_path / r / "checkpoint-4" / "model" / "model.safetensors") for r in ("inproc", "workers"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
