"""Shared fixtures for the benchmark suites (`pytest benchmarks/ --benchmark-only`)."""

import pytest
import torch


@pytest.fixture(scope="session")
def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"
