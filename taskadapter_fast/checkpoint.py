"""Adapter-only checkpoints (safetensors) and loading of official-implementation checkpoints."""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._atomic import atomic_path
from .config import ModelConfig

log = logging.getLogger(__name__)

FORMAT = "taskadapter_fast.adapters"
FORMAT_VERSION = "1"

_VISUAL_ADAPTER_NAMES = {
    "t_adapter": "t_adapter",
    "s_adapter": "s_adapter",
    "task_adapter": "task_adapter",
    "mlp_adapter": "MLP_adapter",
}
_OFFICIAL_TO_OURS_ADAPTER = {v: k for k, v in _VISUAL_ADAPTER_NAMES.items()}
_TEXT_TOP = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "logit_scale", "transformer.")


# --------------------------------------------------------------------------------------------- ours
def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of the model (adapters, temporal embedding, alignment/metric parameters)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_adapters(model: nn.Module, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the trainable tensors and the resolved config to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: t.contiguous().cpu().clone() for name, t in adapter_state(model).items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    with atomic_path(path) as tmp:  # makes the folder; a full disk (SafetensorError "os error 28") is a WriteError
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _open_adapter_checkpoint(path: str | os.PathLike, read_tensors: bool):
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()} if read_tensors else {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors adapter checkpoint: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a {FORMAT} checkpoint (metadata: {metadata})")
    return tensors, metadata


def read_adapter_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors, metadata) of one of our adapter checkpoints; errors name the file."""
    return _open_adapter_checkpoint(path, read_tensors=True)


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of one of our adapter checkpoints (config, run config), without reading its tensors."""
    return _open_adapter_checkpoint(path, read_tensors=False)[1]


def checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    metadata = read_checkpoint_metadata(path)
    return ModelConfig.from_dict(json.loads(metadata["config"]), source=f"checkpoint {path}")


def load_adapters(model: nn.Module, path: str | os.PathLike) -> None:
    """Load one of our adapter checkpoints into a model built with a compatible config (strict)."""
    tensors, _ = read_adapter_checkpoint(path)
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = params[name]
            if target.shape != tensor.shape:
                raise ValueError(
                    f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}"
                )
            target.copy_(tensor)


# --------------------------------------------------------------------------------------------- official
@dataclass
class LoadReport:
    """What loading an official checkpoint did: keys it did not use, expected keys it did not find."""

    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def ours_to_official(name: str) -> str | None:
    """Our state-dict key -> the official implementation's key, or None if it has no counterpart."""
    if name == "visual.temporal_embedding":
        return "feature.temporal_embedding"
    m = re.fullmatch(r"visual\.adapters\.(\d+)\.(\w+)\.fc([12])\.(weight|bias)", name)
    if m:
        return f"feature.transformer.resblocks.{m[1]}.{_VISUAL_ADAPTER_NAMES[m[2]]}.D_fc{m[3]}.{m[4]}"
    m = re.fullmatch(r"text\.adapters\.(\d+)\.fc([12])\.(weight|bias)", name)
    if m:
        return f"text.transformer.resblocks.{m[1]}.sub3_adapter.D_fc{m[2]}.{m[3]}"
    if name.startswith("clip.visual."):
        return "feature." + name[len("clip.visual.") :]
    if name.startswith("clip.") and name[len("clip.") :].startswith(_TEXT_TOP):
        return "text." + name[len("clip.") :]
    if name in ("alignment.ln_1.weight", "alignment.ln_1.bias"):
        return "ca." + name[len("alignment.") :]
    return None


def _normalise_official_key(key: str) -> str:
    # DataParallel inserts "module." after the top-level attribute ("feature.module.conv1.weight").
    parts = key.split(".")
    return ".".join(p for i, p in enumerate(parts) if not (p == "module" and i <= 1))


def is_official_checkpoint(path: str | os.PathLike) -> bool:
    """Whether the file starts like a torch file (zip archive or legacy pickle), so it is read as an official
    checkpoint (and an unreadable one is reported as not a torch checkpoint, not as a bad safetensors file)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith(b"PK") or head[:2] == b"\x80\x02"  # torch zip or legacy pickle


def _torch_load_problem(path: Path, error: Exception) -> str:
    """Why torch.load failed, in one line, without torch's advice to retry with weights_only=False (for a file that
    is no torch file at all it does not apply, and for an official checkpoint tensors and plain values suffice)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            legacy = handle.read(2) == b"\x80\x02"
        if not legacy:
            return "it starts like a zip archive but is not a complete one (a torch checkpoint is a zip archive)"
    text = str(error)
    if "WeightsUnpickler error:" in text:  # the cause sits between torch's advice and its documentation link
        cause = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        text = "it holds more than tensors and plain values: " + " ".join(cause.split()).split(". ")[0]
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The `state` of an official checkpoint ({'epoch', 'state'}), its keys without DataParallel's `module.`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"{path} is not a readable torch checkpoint: {_torch_load_problem(path, exc)}") from None
    if not isinstance(data, dict) or "state" not in data:
        keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path} is not an official Task-Adapter++ checkpoint: expected {{'epoch', 'state'}}, found {keys}"
        )
    return {_normalise_official_key(k): v for k, v in data["state"].items()}


def load_official_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state") -> LoadReport:
    """Import an official-layout state dict: CLIP weights, adapters, temporal embedding, alignment LN."""
    report = LoadReport()
    targets = model.state_dict(keep_vars=True)
    official_to_ours = {}
    for name in targets:
        official = ours_to_official(name)
        if official is not None:
            official_to_ours[official] = name
    with torch.no_grad():
        for key, value in state.items():
            ours = official_to_ours.get(key)
            if ours is None:
                report.unused.append(key)
                continue
            target = targets[ours]
            if value.numel() != target.numel():
                raise ValueError(
                    f"{source}: {key} has shape {tuple(value.shape)}, this model's {ours} has "
                    f"{tuple(target.shape)} (is the preset right? adapter_layers / text_adapter_layers)"
                )
            target.copy_(value.reshape(target.shape).to(target.dtype))
            report.loaded.append(key)
    report.missing = sorted(set(official_to_ours) - set(report.loaded))
    if report.unused:
        log.warning("%s: %d key(s) not used: %s", source, len(report.unused), report.unused)
    if report.missing:
        log.warning(
            "%s: %d expected key(s) not found (they keep their initial values): %s",
            source,
            len(report.missing),
            report.missing,
        )
    return report


def save_official_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's state in the official layout (for parity runs with the official code)."""
    return {ours_to_official(k): v.detach().clone() for k, v in model.state_dict().items() if ours_to_official(k)}


def stored_run_config(checkpoint: str | os.PathLike) -> dict | None:
    """The run config tree (model, data and train sections) a training run stored in one of our checkpoints, or None."""
    if is_official_checkpoint(checkpoint):
        return None
    text = read_checkpoint_metadata(checkpoint).get("run_config")
    if not text:
        return None
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{checkpoint}: the stored run_config is not valid JSON ({error})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{checkpoint}: the stored run_config is not a mapping")
    return tree
