"""Shared fixtures for the benchmark suites (`pytest benchmarks/ --benchmark-only`)."""

import importlib.metadata
import shutil
import subprocess

import pytest
import torch


@pytest.fixture(scope="session")
def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def _driver_version() -> str:
    if not torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        return "n/a"
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, check=False)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what benchmarks/write_results.py puts in the header of RESULTS.md."""
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = "not installed"
    machine_info["taskadapter_fast"] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "driver": _driver_version(),
        "cuda": torch.version.cuda or "n/a",
        "torch": torch.__version__,
        "triton": triton_version,
    }
