"""prefopt.seeding.derive_seed: the one seed derivation (distinct streams, stable, in range)."""
import random

import numpy as np
import pytest
import torch

from prefopt.errors import ConfigError, PrefoptError
from prefopt.seeding import PURPOSES, REWARD_MEMBER, derive_seed


def test_no_collisions_over_purposes_indices_ranks_and_seeds():
    seeds = [0, 1, 2, 7, 1000, 1001, 2**31, 2**63 - 1]
    grid = [(s, p, i, r) for s in seeds for p in PURPOSES for i in range(100) for r in range(3)]
    derived = {derive_seed(*key) for key in grid}
    assert len(derived) == len(grid)


def test_ensemble_members_do_not_collide_across_base_seeds():
    # the old `seed + 1000 * i` gave seed 0 member 1 the stream of seed 1000 member 0
    assert derive_seed(0, REWARD_MEMBER, 1) != derive_seed(1000, REWARD_MEMBER, 0)
    members = {derive_seed(s, REWARD_MEMBER, i) for s in range(0, 5000, 1000) for i in range(8)}
    assert len(members) == 5 * 8


def test_stable_across_processes_and_in_range():
    # another process with another hash salt derives the same seed (no Python hash())
    first = derive_seed(0, "global")
    assert first == derive_seed(0, "global")
    import subprocess, sys
    code = "from prefopt.seeding import derive_seed; print(derive_seed(0, 'global'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "", **_pythonpath()}, check=True)
    assert int(out.stdout) == first
    for key in [(0, "global"), (2**64 - 1, "data.order", 2**64 - 1, 2**64 - 1)]:
        s = derive_seed(*key)
        assert 0 <= s < 2**63
        torch.Generator().manual_seed(s)
        random.Random(s)
        np.random.default_rng(s)
        np.random.seed(derive_seed(*key, bits=32))


def _pythonpath():
    import os
    return {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}


def test_bits_bounds_the_range():
    values = [derive_seed(s, "global", bits=8) for s in range(200)]
    assert all(0 <= v < 256 for v in values) and len(set(values)) > 100


@pytest.mark.parametrize("args, expected", [
    ((0, "no.such.purpose"), "purpose 'no.such.purpose' is not one of"),
    ((-1, "global"), "seed=-1, expected an integer in [0, 2**64)"),
    ((0, "global", 2**64), "index=18446744073709551616, expected"),
    ((0, "global", 0, -2), "rank=-2, expected"),
    ((0.5, "global"), "seed=0.5, expected"),
    ((True, "global"), "seed=True, expected"),
])
def test_bad_arguments_are_config_errors(args, expected):
    with pytest.raises(ConfigError) as exc:
        derive_seed(*args)
    assert isinstance(exc.value, PrefoptError)
    assert expected in str(exc.value)


def test_numpy_integers_are_accepted():
    assert derive_seed(np.int64(3), "global", np.int32(2)) == derive_seed(3, "global", 2)


def test_reward_ensemble_members_differ_from_other_seeds_members(reviews_tokenizer):
    from prefopt.models.config import ModelConfig
    from prefopt.models.reward import build_reward_model

    def members(seed):
        ens = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, ensemble_size=2,
                                 seed=seed)
        return [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in ens.members]

    (a0, a1), (b0, b1) = members(0), members(1000)
    assert not torch.equal(a0, a1)
    assert not torch.equal(a1, b0)  # `seed + 1000 * i` made these identical
    assert torch.equal(members(0)[1], a1)  # still deterministic
