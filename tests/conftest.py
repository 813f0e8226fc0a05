"""Shared pytest configuration."""

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's markers."""
    config.addinivalue_line("markers", "integration: starts real processes (nnictl, web UI, browser); runs by default")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a busy 2-core machine OpenMP spin-waiting slows torch several times."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
