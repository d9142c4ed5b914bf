"""taskadapter_fast: Task-Adapter++ few-shot action recognition, faithful and fast.

Public names are imported lazily, so command-line tools that need no torch start quickly.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


def _installed_fallback() -> None:
    """From a source checkout (e.g. `python -m taskadapter_fast.train` in the repository root after `pip install .`),
    Python imports this source tree, which holds neither the built C++ extension (`_episodes`) nor
    `taskadapter_fast.kernels` (setup.py installs the top-level kernels/ under that name). Let submodules missing
    here come from the installed copy: source modules first, the installed package's folder after them.
    pkgutil.extend_path is the standard library's way to spread one package over several folders on sys.path (a
    symlink to kernels/ in the source tree would still leave the built extension out; `pip install -e .` needs none).
    """
    from pathlib import Path

    here = Path(__file__).resolve().parent
    if not ((here.parent / "setup.py").is_file() and (here.parent / "kernels").is_dir()):
        return  # an installed package
    import pkgutil

    __path__[:] = pkgutil.extend_path(__path__, __name__)


_installed_fallback()

_EXPORTS = {
    "ModelConfig": "config",
    "preset_names": "config",
    "create_model": "api",
    "load_corpus": "api",
    "save_adapters": "checkpoint",
    "load_adapters": "checkpoint",
    "explain": "explanation",
    "Explanation": "explanation",
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


def __dir__() -> list[str]:  # the lazy names too, for dir() and tab completion
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
