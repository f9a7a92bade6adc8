"""Shared fixtures: a lab tokenizer and tiny models built locally (no hub access)."""
from __future__ import annotations

import os

import pytest
import torch

# Keep the suite's caches inside the test session, never in the user's home.
os.environ.setdefault("PREFOPT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "prefopt-tests"))
# Tiny models gain little from intra-op threads, and one thread keeps a shared machine responsive.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reviews_tokenizer():
    from prefopt.cli.run import task_tokenizer
    return task_tokenizer("reviews", {})


@pytest.fixture
def tiny_llama(reviews_tokenizer):
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    return load_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer)
