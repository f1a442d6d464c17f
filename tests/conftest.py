"""Shared test configuration: offline hubs, Ray auth off on loopback, GPU tier skipping."""

from __future__ import annotations

import contextlib
import os

# Tests never reach a hub, and a local Ray head on loopback runs without token auth
# (see docs/reference/ray-lmeval-duckdb.md, pitfall 1).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (gpu tier); no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@contextlib.contextmanager
def _one_torch_thread():
    """One torch thread, as in a Ray worker with num_cpus=1; the previous count is restored on exit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, as in a Ray worker with num_cpus=1 (and much faster on a busy
    2-core machine); the previous count is restored afterwards."""
    with _one_torch_thread():
        yield


@pytest.fixture
def one_torch_thread_per_test():
    """The function-scoped twin of ``one_torch_thread``: one torch thread for a single test."""
    with _one_torch_thread():
        yield
