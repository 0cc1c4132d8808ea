"""Shared test fixtures: tiny configs, framework skips, and transformers (test-only oracle) helpers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any test imports TensorFlow
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

import importlib.util

import pytest

from gpt2.common.config import GPT2Config

# Tiny configs used throughout: small enough for milliseconds, odd enough to catch transposes (n_embd != n_inner,
# vocab != positions, several layers).
TINY = dict(n_layer=2, n_embd=8, n_head=2, vocab_size=11, n_positions=7)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pytest_configure(config) -> None:
    """One torch thread per test process: the suite runs two xdist workers on two cores, and two threads each
    oversubscribe them (the torch-heavy tests ran about twice as long)."""
    if has("torch"):
        import torch

        torch.set_num_threads(1)


requires_torch = pytest.mark.skipif(not has("torch"), reason="PyTorch is not installed")
requires_tf = pytest.mark.skipif(not has("tensorflow"), reason="TensorFlow is not installed")
requires_flax = pytest.mark.skipif(not has("flax"), reason="Flax is not installed")
requires_transformers = pytest.mark.skipif(not has("transformers"), reason="transformers (oracle) is not installed")


@pytest.fixture
def tiny_config() -> GPT2Config:
    return GPT2Config(**TINY)


@pytest.fixture
def two_threads():
    """Two torch intra-op threads for the test (whatever the machine has; each xdist worker runs with one), restored
    after."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
