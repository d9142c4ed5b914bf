"""The frozen CLIP backbone, built through open_clip (configs, weights, tokenizer)."""

from __future__ import annotations

import os
from importlib import resources

import open_clip
import torch
from torch import nn

_REGISTERED = False


def register_clip_configs() -> None:
    """Register this package's small model configs (tests, CPU demo) with open_clip's own registry."""
    global _REGISTERED
    if not _REGISTERED:
        open_clip.add_model_config(str(resources.files("taskadapter_fast.clip_configs")))
        _REGISTERED = True


def _pretrained_error(model_name: str, pretrained: str, reason: str) -> RuntimeError:
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    sources = []
    if cfg.get("hf_hub"):
        hf_home = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        sources.append(f"Hugging Face Hub repo '{cfg['hf_hub']}' (cache: {hf_home})")
    if cfg.get("url"):
        sources.append(f"URL {cfg['url']} (cache: ~/.cache/clip)")
    where = "; ".join(sources) or "no known source"
    return RuntimeError(
        f"cannot load CLIP weights pretrained={pretrained!r} for model {model_name!r}: {reason.splitlines()[0]}. "
        f"Looked in: {where}. Without network access, download the checkpoint elsewhere and pass its local path, "
        f"e.g. pretrained='/path/to/{model_name}.pt' (or model.pretrained=/path/to/file on the command line)."
    )


def build_clip(
    model_name: str, pretrained: str | None = None, quick_gelu: bool | None = None, init_seed: int = 0
) -> nn.Module:
    """An open_clip CLIP model. `pretrained`: None (random init), an open_clip tag, or a local file.

    The random initialisation is drawn from `init_seed` (the global RNG is left untouched), so a model
    without pretrained weights is the same model wherever its config is rebuilt.
    """
    register_clip_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {model_name!r}; open_clip knows e.g. {open_clip.list_models()[:8]} ...")
    tag_cfg = None
    if pretrained is not None:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or None
        if tag_cfg is None:
            if not os.path.exists(pretrained):
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise FileNotFoundError(
                    f"pretrained={pretrained!r} is neither an open_clip tag for {model_name!r} "
                    f"(known tags: {tags}) nor an existing file"
                )
            if not os.path.isfile(pretrained):
                raise FileNotFoundError(f"pretrained={pretrained!r} is not a file")
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else False
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except RuntimeError as exc:
        if tag_cfg is not None:
            raise _pretrained_error(model_name, pretrained, str(exc)) from None
        raise
    except (OSError, ValueError) as exc:
        if tag_cfg is not None:
            raise _pretrained_error(model_name, pretrained, str(exc)) from None
        raise RuntimeError(f"cannot load CLIP weights from file {pretrained!r}: {exc}") from None
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
        raise ValueError(f"{model_name!r} is not a CLIP ViT (no patch-embedding ViT visual tower)")
    block = visual.transformer.resblocks[0]
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise ValueError(f"{model_name!r}: adapted blocks need nn.MultiheadAttention attention layers")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError(f"{model_name!r}: only class-token pooled ViTs are supported")
    return model


def get_tokenizer(model_name: str):
    register_clip_configs()
    return open_clip.get_tokenizer(model_name)
