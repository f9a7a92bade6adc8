"""Reward functions the distributed tests name as ``dist_reward_fns:NAME``."""
import os


def words(prompts, responses):
    return [float(len(r.split())) for r in responses]


def fails_on_rank_1(prompts, responses):
    if os.environ.get("RANK") == "1":
        raise ValueError("reward server down on rank 1")
    return [float(len(r)) for r in responses]
