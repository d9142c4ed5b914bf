"""taskadapter_fast: Task-Adapter++ few-shot action recognition, faithful and fast.

Public names are imported lazily, so command-line tools that need no torch start quickly.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "config",
    "preset_names": "config",
    "create_model": "api",
    "load_corpus": "api",
    "save_adapters": "checkpoint",
    "load_adapters": "checkpoint",
}
_SUBMODULES = ("data", "ops", "model", "config", "checkpoint")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskadapter_fast' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted([*_EXPORTS, *_SUBMODULES])
