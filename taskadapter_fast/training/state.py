"""Where a training run stands: the counters (`TrainState`), the RNG states, and `state.pt` + `state.json`,
the resumable state written atomically and read back bit-exactly."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_path, atomic_write_text
from ..runconfig import RunConfig

STATE_FILE = "state.pt"
STATE_JSON = "state.json"
STATE_FORMAT = "taskadapter_fast.train_state/1"


@dataclass
class TrainState:
    """Counters that, with the weights, optimizer, scheduler and RNG, define where a run stands."""

    episode: int = 0  # training episodes done, over all ranks
    step: int = 0  # optimizer steps done
    epochs_done: int = 0  # epochs whose end (validation, last checkpoint) is done
    best_val_accuracy: float | None = None
    best_val_ci95: float | None = None
    best_epoch: int | None = None
    val_history: list[dict[str, float]] = field(default_factory=list)
    metrics_bytes: int = 0  # length of metrics.jsonl when the state was saved
    wall_seconds: float = 0.0  # training time of earlier sessions of this run
    world: int = 1


def rng_state() -> dict[str, Any]:
    """The torch, numpy, python (and CUDA) RNG states, as tensors and plain values `torch.load` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (the CUDA states only on as many devices as saved them)."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to `path`, atomically. Through a Python file object: given a path, torch's own writer reports
    a full disk as "unexpected pos", the OSError (and its errno) lost; this way it is kept for the `WriteError`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def save_state(path: Path, model, optimizer, scheduler, state: TrainState, run: RunConfig) -> None:
    """Write `state.pt` (adapters, optimizer, scheduler, RNG, counters) and `state.json` (the counters) in `path`."""
    adapters = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    payload = {
        "format": STATE_FORMAT,
        "run_config": run.to_json(),
        "counters": asdict(state),
        "adapters": adapters,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
    }
    atomic_torch_save(payload, path / STATE_FILE)
    atomic_write_text(path / STATE_JSON, json.dumps(asdict(state), indent=1) + "\n")


def load_state(run_dir: Path) -> dict[str, Any]:
    """The payload of `run_dir/state.pt`, checked to be a training state."""
    file = run_dir / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no {STATE_FILE} there (not a training run directory?)")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{file} is not a readable training state: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{file} is not a {STATE_FORMAT} file")
    return payload


def apply_state(payload: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    """Put a `load_state` payload into the model, optimizer, scheduler and RNGs; return its counters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in payload["adapters"].items():
            if name not in params:
                raise ValueError(f"training state holds {name!r}, which this model does not have")
            params[name].copy_(tensor)
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        if payload["scheduler"] is None:
            raise ValueError("the training state has no scheduler state but the run config has a schedule")
        scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    return TrainState(**payload["counters"])
