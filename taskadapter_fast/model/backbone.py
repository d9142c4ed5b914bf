"""The frozen CLIP backbone, built through open_clip (configs, weights, tokenizer)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from importlib import resources

import open_clip
import torch
from torch import nn

_REGISTERED = False
_WARNED_RANDOM: set[str] = set()  # model names already warned about (once per process)
log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = (
    "warning: backbone {model} has random weights (no pretrained CLIP weights were loaded): fine for the demo, "
    "but on real videos its predictions are near chance; use a preset with pretrained weights for real use"
)


def register_clip_configs() -> None:
    """Register this package's small model configs (tests, CPU demo) with open_clip's own registry."""
    global _REGISTERED
    if not _REGISTERED:
        open_clip.add_model_config(str(resources.files("taskadapter_fast.clip_configs")))
        _REGISTERED = True


def warn_random_weights(model_name: str) -> None:
    """Say once per process, in one line, that a backbone was never given pretrained weights.

    open_clip's own notice of this is dropped (`_open_clip_logging`): callers that know the weights will not
    come later (an official checkpoint carries them) call this instead.
    """
    if model_name not in _WARNED_RANDOM:
        _WARNED_RANDOM.add(model_name)
        log.warning(RANDOM_WEIGHTS_NOTE.format(model=model_name))


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _open_clip_logging() -> Iterator[None]:
    """open_clip logs through the root logger's module functions (logging.info/warning), and the first such call
    installs a root handler (logging.basicConfig) that prefixes that and every later warning with `WARNING:root:`.
    While open_clip runs, the root logger has a handler if it had none (the one Python uses when there is none,
    so warnings still print as plain lines) and its random-init notice is dropped (`warn_random_weights` says it).
    """
    root = logging.getLogger()
    stand_in = None if root.handlers else (logging.lastResort or logging.NullHandler())
    drop = _DropRandomInitNotice()
    if stand_in is not None:
        root.addHandler(stand_in)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


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
    A random init is not reported here (weights may follow, e.g. from an official checkpoint): `create_model`
    calls `warn_random_weights` where none do.
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
        with torch.random.fork_rng(devices=[]), _open_clip_logging():
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
    with _open_clip_logging():
        return open_clip.get_tokenizer(model_name)
