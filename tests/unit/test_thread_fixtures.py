"""The one-torch-thread fixtures of tests/conftest.py: one thread inside, the previous count after."""

from __future__ import annotations

import pytest
import torch


def test_the_per_test_fixture_sets_one_thread_and_restores_the_count(request: pytest.FixtureRequest) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(3)

    def restored() -> None:  # runs after the fixture's teardown (finalizers run last-in, first-out)
        count = torch.get_num_threads()
        torch.set_num_threads(before)
        assert count == 3, f"one_torch_thread_per_test left {count} threads, not the 3 it found"

    request.addfinalizer(restored)
    request.getfixturevalue("one_torch_thread_per_test")
    assert torch.get_num_threads() == 1
