"""What evaluation computes once and reuses: the frozen-prefix tokens of each video and the class text features.

The first depth - L visual blocks (and everything before them) are frozen and per video, so at
evaluation their output depends only on the video, its frame indices and crop: `PrefixCache` keeps
it per video (in memory, LRU bounded by bytes, optionally backed by a folder of ``.pt`` files), and
`ClassTextCache` keeps the text features of each class name for one evaluation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .._atomic import WriteError, as_write_error, atomic_write_bytes
from ..data.decode import FRAME_NAME
from ..ops.dispatch import autocast_on

log = logging.getLogger(__name__)

__all__ = ["ClassTextCache", "PrefixCache", "prefix_fingerprint"]


def prefix_fingerprint(model: torch.nn.Module) -> str:
    """A digest of everything the frozen visual prefix depends on (weights, temporal embedding, depth).

    The temporal embedding is trained, so a prefix cache is only valid for one set of weights.
    """
    visual_branch = model.visual
    visual = model.clip.visual
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{visual_branch.first_adapted}/{visual_branch.num_frames}/{visual_branch.image_size}".encode())
    tensors: list[tuple[str, torch.Tensor]] = []
    for name in ("conv1", "ln_pre"):
        tensors += [(f"{name}.{k}", v) for k, v in getattr(visual, name).state_dict().items()]
    tensors += [("class_embedding", visual.class_embedding), ("positional_embedding", visual.positional_embedding)]
    for i, block in enumerate(visual.transformer.resblocks[: visual_branch.first_adapted]):
        tensors += [(f"block{i}.{k}", v) for k, v in block.state_dict().items()]
    if visual_branch.temporal_embedding is not None:
        tensors.append(("temporal_embedding", visual_branch.temporal_embedding))
    for name, tensor in tensors:
        tensor = tensor.detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _content_version(path: str, indices: tuple[int, ...]) -> tuple:
    """(mtime_ns, size) of a video file, or of the frame files `indices` read from a frame folder."""
    files = [Path(path)]
    if files[0].is_dir():
        files = [files[0] / FRAME_NAME.format(index + 1) for index in sorted(set(indices))]
    version = []
    for file in files:
        try:
            stat = file.stat()
            version.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            version.append(None)  # past the folder's end (the last frame is read): its name has no file
    return tuple(version)


class PrefixCache:
    """Frozen-prefix tokens [T, N, D] per (video, frame indices, crop): an in-memory LRU, optionally on disk.

    Args:
        max_bytes: memory budget of the LRU (least recently used entries go first).
        directory: optional folder of ``.pt`` files (one per video, under a sub-folder per model
            fingerprint), for test sets larger than memory or reuse across runs. Optional in earnest: where it
            refuses a write (a full disk), a warning names it once and the cache goes on in memory alone.
        storage_device: where the in-memory entries live (default CPU, so GPU memory stays free).

    `bind(model)` must be called before use (``evaluate`` does): it ties the cache to the model's
    prefix weights and drops in-memory entries made with other weights.
    """

    def __init__(
        self,
        max_bytes: int = 4 << 30,
        directory: str | os.PathLike | None = None,
        storage_device: torch.device | str = "cpu",
    ):
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.directory = Path(directory) if directory is not None else None
        self.storage_device = torch.device(storage_device)
        self.fingerprint: str | None = None
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._disk_writes = self.directory is not None  # off after the folder refused a write (warned once)

    def __len__(self) -> int:
        return len(self._entries)

    def bind(self, model: torch.nn.Module) -> None:
        # Tokens computed under autocast are in its dtype: a bf16 run and an fp32 run keep separate entries.
        parameter = next(model.parameters())
        dtype = torch.get_autocast_dtype(parameter.device.type) if autocast_on(parameter.device) else parameter.dtype
        fingerprint = f"{prefix_fingerprint(model)}-{str(dtype).removeprefix('torch.')}"
        if fingerprint != self.fingerprint:
            with self._lock:
                self._entries.clear()
                self.bytes = 0
            self.fingerprint = fingerprint
        if self._disk_writes:
            try:
                self._folder().mkdir(parents=True, exist_ok=True)
            except OSError as error:
                self._stop_disk_writes(error)

    def _folder(self) -> Path:
        assert self.directory is not None and self.fingerprint is not None
        return self.directory / self.fingerprint

    @staticmethod
    def key(path: str, indices_T: np.ndarray, crop: np.ndarray | None, image_size: int) -> tuple:
        """What a cached entry stands for, the version of the file(s) read included: a video replaced at the
        same path (or a frame file of it) must not be served from a disk cache of the old one."""
        crop_key = None if crop is None else tuple(int(v) for v in crop)
        indices = tuple(int(v) for v in indices_T)
        return (str(path), indices, crop_key, int(image_size), _content_version(path, indices))

    def _file(self, key: tuple) -> Path:
        name = hashlib.blake2b(repr(key).encode(), digest_size=20).hexdigest()
        return self._folder() / name[:2] / f"{name}.pt"

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            if key in self._entries:
                return True
        return self.directory is not None and self.fingerprint is not None and self._file(key).is_file()

    def count_misses(self, count: int) -> None:
        """Record `count` entries computed because they were not cached."""
        with self._lock:
            self.misses += count

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return tensor
        if self.directory is not None:
            file = self._file(key)
            if file.is_file():
                try:
                    tensor = torch.load(file, map_location=self.storage_device, weights_only=True)
                except Exception as error:  # a damaged cache file is recomputed, not fatal
                    log.warning("prefix cache: ignoring unreadable %s (%s)", file, error)
                    tensor = None
                if tensor is not None:
                    self._remember(key, tensor)
                    with self._lock:
                        self.hits += 1
                    return tensor
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: tuple, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to(self.storage_device).contiguous().clone()
        if self._disk_writes:
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            try:
                # Under a temporary name of this writer's own, renamed into place: a reader never sees half a file,
                # and two processes writing the same entry at once each write a whole file (the last one stays).
                atomic_write_bytes(self._file(key), buffer.getvalue())
            except OSError as error:
                self._stop_disk_writes(error)
        self._remember(key, tensor)

    def _stop_disk_writes(self, error: OSError) -> None:
        """The disk cache is optional: a folder that refuses a write (full disk, read-only) is warned about once and
        left alone; the evaluation goes on from memory with the same numbers."""
        with self._lock:
            if not self._disk_writes:
                return
            self._disk_writes = False
        failure = as_write_error(self._folder(), error)
        reason = failure.strerror if isinstance(failure, WriteError) else failure
        log.warning("prefix cache: cannot write to %s (%s); going on without the disk cache", self.directory, reason)

    def _remember(self, key: tuple, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            self._entries[key] = tensor
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()


class ClassTextCache:
    """Class text features [S, E] per class name, computed once per evaluation."""

    def __init__(self, model: torch.nn.Module, corpus: Mapping[str, Sequence[str]] | None):
        self.model, self.corpus = model, corpus
        self._feats: dict[str, torch.Tensor] = {}

    def __call__(self, class_names: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(name for name in class_names if name not in self._feats))
        if missing:
            for name, feats in zip(missing, self.model.encode_classes(missing, self.corpus), strict=True):
                self._feats[name] = feats
        return torch.stack([self._feats[name] for name in class_names])  # [C, S, E]
