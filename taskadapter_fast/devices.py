"""Which torch device a run uses (`resolve_device`), and how reports name it (`describe_device`)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def resolve_device(name: Any = None, local_rank: int = 0):
    """The torch device a `--device` value names; auto (or None): this rank's GPU when there is one, else the CPU.

    A bare "cuda" is this rank's GPU (`local_rank`), so every rank of a torchrun job gets its own.
    """
    if name is None or str(name) in ("", "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {str(name)!r} is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def describe_device(device: torch.device) -> str:
    """The device as the start line and results.json name it (GPU model, or CPU cores and threads)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    processor = platform.processor() or platform.machine()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads, {processor})"
