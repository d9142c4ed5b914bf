"""The public entry points: create_model, save/load adapters, load_corpus."""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import (
    checkpoint_config,
    is_official_checkpoint,
    load_adapters,
    load_official_state,
    read_official_checkpoint,
)
from .config import ModelConfig, load_preset, resolve_model_config


def create_model(
    preset_or_config: str | dict | ModelConfig | None = None,
    pretrained: str | os.PathLike | bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: Any = None,
    **overrides: Any,
):
    """Build a Task-Adapter++ model.

    preset_or_config: a preset name (`ssv2_small`, `ssv2_full`, `kinetics`, `hmdb51`, `ucf101`, `tiny`), a dict
        of ModelConfig fields, or a ModelConfig. May be None when `checkpoint` is one of our adapter
        checkpoints: its stored config is used (a preset or config given beside one must agree with it).
    pretrained: open_clip tag ("openai"), a local CLIP checkpoint file, False (random init: no weights
        downloaded), or None (keeps the config's value).
    checkpoint: our adapter checkpoint (.safetensors) or an official-implementation checkpoint (torch file
        with {'epoch', 'state'}; it holds the CLIP weights too, so no `pretrained` download happens).
    overrides: ModelConfig fields, e.g. impl="triton", adapter_layers=4.

    A backbone left without pretrained weights (random init) is reported once per process, in one line.
    """
    from .model.backbone import warn_random_weights
    from .model.task_adapter import TaskAdapterPP

    official_state = None
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if checkpoint is not None and is_official_checkpoint(checkpoint):
        official_state = read_official_checkpoint(checkpoint)
        if preset_or_config is None:
            raise ValueError(f"{checkpoint} is an official checkpoint, which stores no config: pass a preset too")
        overrides.setdefault("pretrained", None)  # the official file carries the CLIP weights
        overrides.setdefault("quick_gelu", True)  # official runs use OpenAI CLIP (QuickGELU)
    elif checkpoint is not None:
        stored = checkpoint_config(checkpoint)
        if preset_or_config is not None:
            _check_agrees(preset_or_config, stored, checkpoint)
        preset_or_config = stored  # our checkpoints carry their config
    elif preset_or_config is None:
        raise ValueError("create_model needs a preset, a config or a checkpoint")
    if pretrained is not None:
        overrides["pretrained"] = pretrained
    config = resolve_model_config(preset_or_config, **overrides)
    model = TaskAdapterPP(config)
    if official_state is not None:
        model.load_report = load_official_state(model, official_state, source=str(checkpoint))
    else:
        if config.pretrained is None:
            warn_random_weights(config.clip_model)
        if checkpoint is not None:
            load_adapters(model, checkpoint)
    if device is not None:
        model.to(device)
    return model


def _check_agrees(preset_or_config: str | dict | ModelConfig, stored: ModelConfig, checkpoint: Any) -> None:
    """Refuse a preset or config that sets a model field otherwise than our checkpoint's stored config does.

    Checked before the model is built, so a conflicting preset never starts a weights download.
    """
    if isinstance(preset_or_config, str):
        given, what = dict(load_preset(preset_or_config).get("model") or {}), f"preset {preset_or_config!r}"
    elif isinstance(preset_or_config, ModelConfig):
        given, what = preset_or_config.to_dict(), "the given ModelConfig"
    else:
        given, what = dict(preset_or_config.get("model", preset_or_config)), "the given config"
    wanted = ModelConfig.from_dict({**stored.to_dict(), **given}, source=what).to_dict()
    differ = [
        f"{key}={wanted[key]!r} (stored: {value!r})" for key, value in stored.to_dict().items() if wanted[key] != value
    ]
    if differ:
        raise ValueError(
            f"{what} conflicts with the model config stored in {checkpoint}: {', '.join(differ)}; "
            "the checkpoint carries its config, so leave the preset out (model.KEY=VALUE changes a field)"
        )


def load_corpus(path: str | os.PathLike) -> dict[str, list[str]]:
    """{class name: [stage1, stage2, stage3]} from the official YAML corpus format or JSON."""
    from .data.corpus import load_corpus as _load

    return _load(path)


def load_model(
    checkpoint: str | os.PathLike | None,
    preset: str | None,
    model_overrides: dict[str, Any],
    device: Any,
    stored: dict[str, Any] | None = None,
):
    """Our checkpoint (its stored config; a `preset` beside it must agree), an official one (needs `preset`), or a
    bare preset.

    stored: the checkpoint's run config (`checkpoint.stored_run_config`), if any. The evaluate and predict
    commands load their model here.
    """
    import torch

    if checkpoint is None and preset is None:
        raise ValueError("load_model needs a checkpoint or a preset")
    # A backbone without pretrained weights (the tiny demo model) is a random draw that adapter checkpoints
    # do not store: draw it from the seed the training run used, so evaluation sees the same backbone.
    train_section = (stored or {}).get("train") or {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(train_section.get("seed", 0)))
        return create_model(preset, checkpoint=checkpoint, device=device, **model_overrides)
