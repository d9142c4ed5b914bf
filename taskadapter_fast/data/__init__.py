"""Data: episode sampling, split files, sub-action corpus, decoding, the synthetic dataset.

Names are imported lazily so that `import taskadapter_fast.data` stays cheap and optional
dependencies (PyAV, DALI) are only needed by the functions that use them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EpisodeSampler": "sampler",
    "frame_indices": "sampler",
    "crop_offsets": "sampler",
    "load_corpus": "corpus",
    "save_corpus": "corpus",
    "resolve_subactions": "corpus",
    "generate_corpus": "corpus_generate",
    "fetch_corpus": "corpus_fetch",
    "read_split": "splits",
    "prepare": "splits",
    "load_clip": "decode",
    "load_clips": "decode",
    "VideoDecodeError": "decode",
    "SkipCounter": "decode",
    "make_synthetic_dataset": "synthetic",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskadapter_fast.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_EXPORTS)
