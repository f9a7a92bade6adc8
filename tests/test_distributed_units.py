"""The distributed runtime's pieces without processes: sharded samplers, the error agreement,
step reductions, global whitening, sharded reference precompute, config errors."""
from __future__ import annotations

import pytest
import torch

from prefopt.cli.config import load_config
from prefopt.dist import DistConfig, Runtime, init_runtime
from prefopt.errors import ConfigError, StopTraining, TrainingError
from prefopt.losses.rl import whiten
from prefopt.models.reference import sharded_compute
from prefopt.train.config import TrainConfig
from prefopt.train.distributed import per_rank_counts_for, reduce_step
from prefopt.train.sampler import EpochSampler


class ScriptedRuntime(Runtime):
    """Rank ``rank`` of a world whose other ranks' contributions to the next gathers are scripted."""

    def __init__(self, rank: int, world_size: int, others: list):
        super().__init__(rank=rank, world_size=world_size)
        self.others = others  # per gather: the full list with this rank's slot left None

    def all_gather_object(self, obj):
        out = list(self.others.pop(0))
        out[self.rank] = obj
        return out


# ---------------------------------------------------------------------- samplers
def test_two_ranks_draw_what_one_rank_draws_with_twice_the_batch():
    one = EpochSampler(10, seed=3, rank=0, world_size=1)
    ranks = [EpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # crosses epoch boundaries
        assert one.take(4) == ranks[0].take(2) + ranks[1].take(2)
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()


def test_each_example_once_per_epoch_across_ranks():
    ranks = [EpochSampler(12, seed=0, rank=r, world_size=3) for r in range(3)]
    seen = [i for _ in range(2) for s in ranks for i in s.take(2)]
    assert sorted(seen) == list(range(12))
    assert ranks[2].offset(2) == 4


def test_a_two_rank_sampler_state_resumes_on_one_rank():
    ranks = [EpochSampler(9, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.take(3)
    single = EpochSampler(9, seed=1, rank=0, world_size=1)
    single.load_state_dict(ranks[0].state_dict())
    reference = EpochSampler(9, seed=1, rank=0, world_size=1)
    reference.take(6)
    assert single.take(5) == reference.take(5)


def test_sampler_rank_outside_world():
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        EpochSampler(4, 0, rank=2, world_size=2)


# ---------------------------------------------------------------------- runtime
def test_single_process_runtime_is_the_identity():
    rt = Runtime()
    t = torch.tensor([1.0, 2.0])
    assert rt.is_main and not rt.distributed and rt.all_reduce(t) is t
    assert rt.all_gather_object({"a": 1}) == [{"a": 1}] and rt.sum_dicts({"x": 2.0}) == {"x": 2.0}
    with pytest.raises(KeyError):
        rt.check_all(KeyError("own error"))
    rt.check_all(None)
    wrapped = torch.nn.Module()
    wrapped.module = torch.nn.Linear(2, 2)
    assert rt.unwrap(wrapped) is wrapped.module


def test_every_rank_raises_when_one_fails_naming_the_rank_and_message():
    rt = ScriptedRuntime(0, 2, [[None, ("RewardError", "reward fn 'x' failed on prompt 3", False)]])
    with pytest.raises(TrainingError, match="rank 1 failed: RewardError: reward fn 'x' failed on prompt 3"):
        rt.check_all(None)
    own = ValueError("mine")
    with pytest.raises(ValueError, match="mine"):
        ScriptedRuntime(1, 2, [[("StopTraining", "done", True), None]]).check_all(own)


def test_a_clean_stop_on_one_rank_stops_all_cleanly():
    rt = ScriptedRuntime(1, 2, [[("StopTraining", "nothing left to learn", True), None]])
    with pytest.raises(StopTraining, match="rank 0: nothing left to learn"):
        rt.check_all(None)
    ScriptedRuntime(0, 2, [[None, None]]).check_all(None)  # nobody failed: no raise


def test_step_reduction_sums_terms_metrics_and_tokens_over_ranks():
    # rank 1 saw 3 of 4 global units of term "0" with metric mean 0.5 -> share 0.75
    rt = ScriptedRuntime(0, 2, [[None, {"sum\0" "0": 2.0, "metric\0acc": 0.5 * 0.75, "tokens\0": 30.0}]])
    sums, metrics, tokens = reduce_step(rt, {"0": 1.0}, {"acc": 1.0 * 0.25}, 10)
    assert sums == {"0": 3.0} and metrics == {"acc": pytest.approx(0.625)} and tokens == 40


# ---------------------------------------------------------------------- global statistics
def _stats_of(x, mask):
    m = mask.to(x.dtype)
    return (x * m).sum(), m.sum()


def test_whitening_over_ranks_equals_whitening_the_global_batch():
    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.3
    full = whiten(x, mask)
    (xa, ma), (xb, mb) = (x[:3], mask[:3]), (x[3:], mask[3:])
    sb, cb = _stats_of(xb, mb)
    mean = (x * mask).sum() / mask.sum()
    ssb = (((xb - mean) ** 2) * mb).sum()
    calls = iter([torch.stack([sb, cb]), ssb.reshape(1)])  # what rank 1 contributes to each sum
    part = whiten(xa, ma, total=lambda t: t + next(calls))
    assert torch.allclose(part, full[:3], atol=1e-6)
    assert torch.allclose(whiten(x, mask, total=lambda t: t), full, atol=1e-6)


def test_reference_precompute_is_sharded_and_gathered_in_row_order(monkeypatch):
    import prefopt.models.reference as reference

    rows = list(range(7))
    calls = []

    def compute(model, share):
        calls.append(share)
        return torch.tensor([10.0 * r for r in share]), torch.tensor([-1.0 * r for r in share])

    other = [torch.tensor([10.0 * r for r in rows[1::2]]), torch.tensor([-1.0 * r for r in rows[1::2]])]
    monkeypatch.setattr(reference, "current", lambda: ScriptedRuntime(0, 2, [[None, other]]))
    chosen, rejected = sharded_compute(compute, None, rows)
    assert calls == [[0, 2, 4, 6]]  # rank 0 computed its share only
    assert chosen.tolist() == [10.0 * r for r in rows] and rejected.tolist() == [-1.0 * r for r in rows]


# ---------------------------------------------------------------------- config
def test_dist_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="dist.strategy: got 'zero3', expected one of 'none', 'ddp', 'fsdp2'"):
        load_config(TrainConfig, None, ["dist.strategy=zero3"])
    with pytest.raises(ConfigError, match="dist.timeout_s"):
        init_runtime(DistConfig(timeout_s=0))
    with pytest.raises(ConfigError, match="dist.strategy: got 'zero3'"):
        init_runtime(DistConfig(strategy="zero3"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="dist.strategy: 'none' with 2 processes"):
        init_runtime(DistConfig(strategy="none"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="nccl needs CUDA"):
            init_runtime(DistConfig(backend="nccl"))


def test_resume_under_another_world_size_restates_per_rank_counts():
    saved = {"train": {"batch_size": 4, "steps": 10}, "online": {"prompts_per_step": 2}}
    same_global = per_rank_counts_for(saved, {"train": {"batch_size": 8}, "online": {"prompts_per_step": 4}}, 2, 1)
    assert same_global["train"] == {"batch_size": 8, "steps": 10} and same_global["online"]["prompts_per_step"] == 4
    assert saved["train"]["batch_size"] == 4  # the saved config is not modified
    other = per_rank_counts_for(saved, {"train": {"batch_size": 6}, "online": {"prompts_per_step": 2}}, 2, 2)
    assert other is saved  # same world size: the usual resume checks apply unchanged
    with pytest.warns(UserWarning, match="train.batch_size=4 per rank makes the global count 4 \\(was 8\\)"):
        per_rank_counts_for(saved, {"train": {"batch_size": 4}, "online": {"prompts_per_step": 4}}, 2, 1)


def test_rollout_workers_without_ray_name_the_extra(monkeypatch):
    import sys

    from prefopt.dist.rollout_workers import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"Ray is not installed; pip install 'prefopt\[ray\]'"):
        import_ray()
