"""Episodes in, accuracy out: the episode loader, the frozen-prefix cache and evaluation.

`EpisodeLoader` turns manifest rows into decoded C-way K-shot episodes. Episode ``i`` is a pure
function of ``(seed, i)``: the sampler draws the classes and videos, and every random number of
a video (TSN frame offsets and crop position when training) is keyed by the sampler index that
drew it and the video's position in the episode, so any worker, rank or replay gets the same
episode, whatever the order or the prefetching.

Bad videos: a video that cannot be probed or decoded (`VideoDecodeError`: missing, corrupt,
truncated, unsupported codec) is skipped with a warning and counted once in ``loader.skipped``
(a `SkipCounter`); the episode is drawn again from a derived sampler index (``redraw_index``),
repeatedly until every video of the draw is readable. A file that failed once is treated as bad
from then on, so it is never decoded again. Episode ``i`` stays a pure function of ``(seed, i)``
and the set of bad files.

Frame counts: rows that carry ``num_frames`` (official lists, prepared manifests) are used as
they are; rows without one (folder layouts) are probed the first time an episode needs them
(frame folders: a directory listing; video files: a demux pass) and the count is cached, so
nothing has to be prepared up front. ``python -m taskadapter_fast.data prepare`` probes a whole
split ahead of time instead and reports every unreadable file at once.

Evaluation (`evaluate`) runs the model in eval mode without gradients. The first depth - L
visual blocks (and everything before them) are frozen and per video, so at evaluation their
output depends only on the video, its frame indices and crop: `PrefixCache` keeps it per video
(in memory, LRU bounded by bytes, optionally backed by a folder of ``.pt`` files), and class
text features are computed once per class name. Cached and uncached evaluation compute the
same scores (tests/test_engine.py checks it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_write_bytes
from .data.decode import (
    FRAME_NAME,
    SkipCounter,
    VideoDecodeError,
    count_frame_files,
    load_clips,
    probe_video,
    resize_size,
    video_kind,
)
from .data.sampler import EpisodeSampler, crop_offsets, format_listing, frame_indices
from .ops.dispatch import autocast_on

log = logging.getLogger(__name__)

__all__ = [
    "Episode",
    "EpisodePlan",
    "EpisodeLoader",
    "EvalResult",
    "PrefixCache",
    "evaluate",
    "mean_ci95",
    "probe_frame_count",
    "redraw_index",
]

MAX_REDRAWS = 100  # draws of one episode before giving up (the dataset is then mostly unreadable)
_MASK64 = (1 << 64) - 1
_MASK62 = (1 << 62) - 1


def _mix64(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def redraw_index(index: int, attempt: int) -> int:
    """Sampler index of draw `attempt` of episode `index`: the index itself first, then indices in
    [2**62, 2**63) derived from (index, attempt), far from every ordinary episode index."""
    if attempt == 0:
        return index
    return (1 << 62) | (_mix64(_mix64(index) + attempt * 0x9E3779B97F4A7C15) & _MASK62)


def probe_frame_count(path: str | os.PathLike, kind: str | None = None) -> int:
    """Frames of a video file (a demux pass, cached per file version) or a JPEG frame folder (a listing).

    kind: "video" | "frames" (default: guessed from the path). Raises `VideoDecodeError` naming the file.
    """
    kind = kind or video_kind(path)
    if kind == "frames":
        count = count_frame_files(path)
        if count == 0:
            raise VideoDecodeError(path, "frame folder holds no img_*.jpg frames")
        return count
    return probe_video(path).num_frames


# ----------------------------------------------------------------------------------------------
# Episodes


@dataclass
class EpisodePlan:
    """Everything that defines an episode except the pixels (what an episodes file stores).

    Videos are ordered support first (class-major: the K shots of class 0, then class 1, ...),
    then queries (class-major too). Row indices refer to the loader's rows.
    """

    index: int  # the episode index asked for
    draw: int  # the sampler index that drew it (== index unless bad videos forced a redraw)
    class_names: list[str]  # [C] in drawn order; label c is class_names[c]
    support_rows: np.ndarray  # [C*K] int64
    query_rows: np.ndarray  # [C*Q] int64
    support_labels: np.ndarray  # [C*K] int64 in 0..C-1
    query_labels: np.ndarray  # [C*Q] int64 in 0..C-1
    frame_indices: np.ndarray  # [C*K + C*Q, T] int64, 0-based
    crop_offsets: np.ndarray | None  # [C*K + C*Q, 2] (top, left) for training crops; None: centre crop

    @property
    def rows(self) -> np.ndarray:
        """[C*K + C*Q] row indices, support then query."""
        return np.concatenate([self.support_rows, self.query_rows])

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form (see `from_record`)."""
        record = {
            "index": int(self.index),
            "draw": int(self.draw),
            "classes": list(self.class_names),
            "support_rows": self.support_rows.tolist(),
            "query_rows": self.query_rows.tolist(),
            "support_labels": self.support_labels.tolist(),
            "query_labels": self.query_labels.tolist(),
            "frame_indices": self.frame_indices.tolist(),
        }
        if self.crop_offsets is not None:
            record["crop_offsets"] = self.crop_offsets.tolist()
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> EpisodePlan:
        try:
            crops = record.get("crop_offsets")
            return cls(
                index=int(record["index"]),
                draw=int(record.get("draw", record["index"])),
                class_names=[str(name) for name in record["classes"]],
                support_rows=np.asarray(record["support_rows"], dtype=np.int64),
                query_rows=np.asarray(record["query_rows"], dtype=np.int64),
                support_labels=np.asarray(record["support_labels"], dtype=np.int64),
                query_labels=np.asarray(record["query_labels"], dtype=np.int64),
                frame_indices=np.asarray(record["frame_indices"], dtype=np.int64),
                crop_offsets=None if crops is None else np.asarray(crops, dtype=np.int64),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not an episode record ({type(error).__name__}: {error})") from None


@dataclass
class Episode:
    """One decoded episode. Labels follow the class order the sampler drew."""

    index: int
    support: torch.Tensor  # [C*K, T, 3, S, S]
    support_labels: torch.Tensor  # [C*K] int64 in 0..C-1
    query: torch.Tensor  # [C*Q, T, 3, S, S]
    query_labels: torch.Tensor  # [C*Q] int64 in 0..C-1
    class_names: list[str]
    support_rows: np.ndarray  # [C*K] manifest row indices
    query_rows: np.ndarray  # [C*Q] manifest row indices
    plan: EpisodePlan | None = None  # frame indices, crops and the sampler index used


class EpisodeLoader:
    """Decoded C-way K-shot episodes from manifest rows, episode ``i`` a pure function of ``(seed, i)``.

    Args:
        rows: `ManifestRow`s (from `read_split` / `read_manifest`); classes are grouped by
            ``class_name`` and ordered by (``label``, name).
        n_way, n_shot, n_query: C, K and Q.
        num_frames: T. image_size: S (frames are resized to int(1.15 S) and cropped to S).
        train: TSN random frame offsets and random crops (keyed per video, see the module doc);
            otherwise segment centres and the centre crop.
        seed: the sampler seed (episodes, frame offsets and crops all derive from it).
        decoder: "auto" | "pyav" | "dali_cpu" | "dali_gpu" (see `taskadapter_fast.data.decode`).
        device, dtype: where and in what dtype the clips are returned.
        prefetch: episodes decoded ahead in background threads by `iterate` / `imap` (0: none).
    """

    def __init__(
        self,
        rows: Sequence[Any],
        n_way: int,
        n_shot: int,
        n_query: int,
        *,
        num_frames: int,
        image_size: int,
        train: bool,
        seed: int,
        decoder: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        prefetch: int = 2,
    ):
        self.rows = list(rows)
        if not self.rows:
            raise ValueError("EpisodeLoader needs at least one row (the split is empty)")
        if int(num_frames) < 1 or int(image_size) < 1:
            raise ValueError(f"num_frames and image_size must be >= 1, got {num_frames} and {image_size}")
        if int(prefetch) < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.n_way, self.n_shot, self.n_query = int(n_way), int(n_shot), int(n_query)
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.decoder = decoder
        self.device = device
        self.dtype = dtype
        self.prefetch = int(prefetch)

        first_label: dict[str, int] = {}
        for row in self.rows:
            label = int(row.label) if row.label is not None else 0
            first_label[row.class_name] = min(first_label.get(row.class_name, label), label)
        self.class_names: list[str] = sorted(first_label, key=lambda name: (first_label[name], name))
        position = {name: c for c, name in enumerate(self.class_names)}
        videos_per_class: list[list[int]] = [[] for _ in self.class_names]
        for r, row in enumerate(self.rows):
            videos_per_class[position[row.class_name]].append(r)
        self.videos_per_class = videos_per_class
        self._check_class_sizes()
        self.sampler = EpisodeSampler(videos_per_class, self.n_way, self.n_shot, self.n_query, self.seed)

        self.skipped = SkipCounter()
        self._bad_paths: set[str] = set()
        self._lock = threading.Lock()
        self._frame_counts: list[int | None] = [
            int(row.num_frames) if row.num_frames is not None else None for row in self.rows
        ]

    def _check_class_sizes(self) -> None:
        """The sampler's refusals, with class names instead of class positions."""
        if self.n_way > len(self.class_names):
            raise ValueError(
                f"n_way = {self.n_way} is larger than the number of classes ({len(self.class_names)}: "
                f"{format_listing(self.class_names)})"
            )
        per_class = self.n_shot + self.n_query
        small = [(name, len(v)) for name, v in zip(self.class_names, self.videos_per_class, strict=True)]
        small = [f"{name!r} has {count}" for name, count in small if count < per_class]
        if small:
            raise ValueError(
                f"every class needs at least n_shot + n_query = {self.n_shot} + {self.n_query} = {per_class} "
                f"videos; {len(small)} class(es) have fewer: {format_listing(small)}"
            )

    # ------------------------------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        """Classes in the rows (the sampler draws n_way of them per episode)."""
        return len(self.class_names)

    @property
    def videos_per_episode(self) -> int:
        return self.n_way * (self.n_shot + self.n_query)

    def __repr__(self) -> str:
        return (
            f"EpisodeLoader({len(self.rows)} videos, {self.num_classes} classes, {self.n_way}-way {self.n_shot}-shot "
            f"{self.n_query}-query, T={self.num_frames}, S={self.image_size}, train={self.train}, seed={self.seed})"
        )

    def is_bad(self, row: int) -> bool:
        """True once row's video failed to probe or decode."""
        return self.rows[row].path in self._bad_paths

    def mark_bad(self, error: VideoDecodeError) -> None:
        """Record a video that cannot be read: warned about and counted once, never decoded again."""
        with self._lock:
            if error.path in self._bad_paths:
                return
            self._bad_paths.add(error.path)
            self.skipped._record(error)

    def frame_count(self, row: int) -> int:
        """The row's number of frames, probed once when the row does not carry it.

        Raises `VideoDecodeError` when the video is missing or unreadable.
        """
        count = self._frame_counts[row]
        if count is None:
            count = probe_frame_count(self.rows[row].path, self.rows[row].kind)
            self._frame_counts[row] = count
        return count

    # ------------------------------------------------------------------------------------------ plans
    def draw(self, index: int, attempt: int = 0) -> EpisodePlan:
        """Draw `attempt` of episode `index`, without checking or decoding its videos.

        Raises `VideoDecodeError` if a video without a stored frame count cannot be probed.
        """
        draw = redraw_index(int(index), int(attempt))
        classes, support, query = self.sampler.episode(draw)  # [C], [C, K], [C, Q]
        support_rows = support.reshape(-1)
        query_rows = query.reshape(-1)
        rows = np.concatenate([support_rows, query_rows])
        counts = np.array([self.frame_count(int(r)) for r in rows], dtype=np.int64)
        # Keys: the drawing sampler index and the video's slot, so a video's random numbers do not
        # depend on which worker or rank computes them (mod 2**64, as the sampler takes uint64 keys).
        keys = np.array([(draw * len(rows) + slot) & _MASK64 for slot in range(len(rows))], dtype=np.uint64)
        indices = frame_indices(counts, self.num_frames, self.train, self.seed, keys=keys)
        crops = None
        if self.train:
            crops = crop_offsets(len(rows), resize_size(self.image_size), self.image_size, True, self.seed, keys=keys)
        labels = np.arange(self.n_way, dtype=np.int64)
        return EpisodePlan(
            index=int(index),
            draw=draw,
            class_names=[self.class_names[int(c)] for c in classes],
            support_rows=support_rows,
            query_rows=query_rows,
            support_labels=np.repeat(labels, self.n_shot),
            query_labels=np.repeat(labels, self.n_query),
            frame_indices=indices,
            crop_offsets=crops,
        )

    def plan(self, index: int) -> EpisodePlan:
        """The first draw of episode `index` none of whose videos is known to be bad.

        Videos that fail to probe here are marked bad; videos never decoded are not checked (see
        `load`, which decodes and redraws on failure).
        """
        for attempt in range(MAX_REDRAWS):
            try:
                plan = self.draw(index, attempt)
            except VideoDecodeError as error:
                self.mark_bad(error)
                continue
            if not any(self.is_bad(int(r)) for r in plan.rows):
                return plan
        raise RuntimeError(
            f"episode {index}: every one of {MAX_REDRAWS} draws holds an unreadable video "
            f"({self.skipped.count} skipped so far); check the dataset with `python -m taskadapter_fast.data prepare`"
        )

    @property
    def rows_digest(self) -> str:
        """A digest of the rows in order, each as class/file name (not the full path, so a dataset moved to
        another root still matches): an episodes file names rows by position, and this binds them to videos."""
        digest = hashlib.blake2b(digest_size=12)
        for row in self.rows:
            digest.update(f"{row.class_name}/{Path(row.path).name}\n".encode())
        return digest.hexdigest()

    def check_plan(self, plan: EpisodePlan) -> None:
        """Raise ValueError unless `plan` (e.g. read from an episodes file) fits these rows and settings."""
        rows = plan.rows
        num_videos = rows.shape[0]
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.rows)):
            raise ValueError(f"episode {plan.index}: row index out of range for {len(self.rows)} rows")
        if plan.frame_indices.shape != (num_videos, self.num_frames):
            raise ValueError(
                f"episode {plan.index}: frame_indices has shape {plan.frame_indices.shape}, expected "
                f"({num_videos}, {self.num_frames})"
            )
        labels = np.concatenate([plan.support_labels, plan.query_labels])
        if labels.shape[0] != num_videos or (
            labels.size and (labels.min() < 0 or labels.max() >= len(plan.class_names))
        ):
            raise ValueError(f"episode {plan.index}: labels do not match its rows and {len(plan.class_names)} classes")
        for row, label in zip(rows.tolist(), labels.tolist(), strict=True):
            if self.rows[row].class_name != plan.class_names[label]:
                raise ValueError(
                    f"episode {plan.index}: row {row} is {self.rows[row].class_name!r}, the episode says "
                    f"{plan.class_names[label]!r} (was it saved for another split?)"
                )

    # ------------------------------------------------------------------------------------------ decoding
    def decode(self, plan: EpisodePlan, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Decode the videos of `plan` at `positions` (default: all; support then query) -> [V, T, 3, S, S].

        Raises `VideoDecodeError` naming a bad video.
        """
        rows = plan.rows
        positions = list(range(rows.shape[0])) if positions is None else list(positions)
        crops = None if plan.crop_offsets is None else plan.crop_offsets[positions]
        return load_clips(
            [self.rows[int(rows[p])].path for p in positions],
            plan.frame_indices[positions],
            image_size=self.image_size,
            train=plan.crop_offsets is not None,
            decoder=self.decoder,
            crop_offsets=crops,
            device=self.device,
            dtype=self.dtype,
        )

    def load(
        self, index: int, needed: Callable[[EpisodePlan, int], bool] | None = None
    ) -> tuple[EpisodePlan, list[int], torch.Tensor | None]:
        """Plan episode `index` and decode its videos, redrawing past bad ones.

        needed(plan, position): False for videos the caller does not need pixels of (e.g. whose
        features are cached); those are not decoded. Returns (plan, decoded positions, their clips
        [V', T, 3, S, S] or None when nothing was needed).
        """
        for _ in range(MAX_REDRAWS):
            plan = self.plan(index)
            positions = [p for p in range(plan.rows.shape[0]) if needed is None or needed(plan, p)]
            if not positions:
                return plan, positions, None
            try:
                return plan, positions, self.decode(plan, positions)
            except VideoDecodeError as error:
                self.mark_bad(error)
        raise RuntimeError(f"episode {index}: too many unreadable videos ({self.skipped.count} skipped)")

    def episode(self, index: int) -> Episode:
        """Episode `index`, decoded (a pure function of (seed, index) and the set of bad files)."""
        plan, _, clips = self.load(index)
        return self.assemble(plan, clips)

    def assemble(self, plan: EpisodePlan, clips: torch.Tensor) -> Episode:
        """An `Episode` from a plan and all of its clips [V, T, 3, S, S] (support then query)."""
        num_support = plan.support_rows.shape[0]
        device = clips.device
        return Episode(
            index=plan.index,
            support=clips[:num_support],
            support_labels=torch.as_tensor(plan.support_labels, device=device),
            query=clips[num_support:],
            query_labels=torch.as_tensor(plan.query_labels, device=device),
            class_names=list(plan.class_names),
            support_rows=plan.support_rows,
            query_rows=plan.query_rows,
            plan=plan,
        )

    # ------------------------------------------------------------------------------------------ iteration
    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """fn(item) for each item, in order, computed up to `prefetch` items ahead in background threads."""
        if self.prefetch == 0:
            for item in items:
                yield fn(item)
            return
        pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="taf-episodes")
        pending: deque[Future] = deque()
        iterator = iter(items)
        try:
            for item in iterator:
                pending.append(pool.submit(fn, item))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def iterate(self, start: int, count: int) -> Iterator[Episode]:
        """Episodes start .. start + count - 1, in order, decoded ahead in background threads."""
        if int(start) < 0 or int(count) < 0:
            raise ValueError(f"start and count must be >= 0, got {start} and {count}")
        return self.imap(self.episode, range(int(start), int(start) + int(count)))


# ----------------------------------------------------------------------------------------------
# Statistics


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, 1.96 * std / sqrt(n)) with the population std (ddof = 0), as the official code computes it.

    Raises ValueError for an empty sequence. One value gives an interval of 0.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    return float(array.mean()), float(1.96 * array.std(ddof=0) / math.sqrt(array.size))


# ----------------------------------------------------------------------------------------------
# Frozen-prefix cache


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
            fingerprint), for test sets larger than memory or reuse across runs.
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
        if self.directory is not None:
            self._folder().mkdir(parents=True, exist_ok=True)

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
        if self.directory is not None:
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            atomic_write_bytes(self._file(key), buffer.getvalue())  # a reader never sees half a file
        self._remember(key, tensor)

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


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    """Accuracy (%) over episodes, with the 95% confidence interval (SPEC section 7)."""

    accuracy: float  # mean per-episode accuracy, %
    ci95: float  # 1.96 * std / sqrt(n), %
    per_episode: list[float]  # accuracy of each evaluated episode, %, in episode_ids order
    episodes: int  # number of episodes evaluated
    skipped: int  # unreadable videos skipped (their episodes were redrawn)
    episode_ids: list[int] = field(default_factory=list)
    plans: list[EpisodePlan] = field(default_factory=list)  # what was evaluated (for an episodes file)
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    inductive: bool = False
    scores: list[torch.Tensor] | None = None  # [C*Q, C] per episode, when keep_scores=True

    @property
    def episodes_per_second(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        mode = "inductive" if self.inductive else "transductive"
        return f"{self.accuracy:.2f} ± {self.ci95:.2f} % over {self.episodes} episodes ({mode})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "ci95": self.ci95,
            "episodes": self.episodes,
            "per_episode": self.per_episode,
            "episode_ids": self.episode_ids,
            "skipped": self.skipped,
            "inductive": self.inductive,
            "seconds": self.seconds,
            "episodes_per_second": self.episodes_per_second,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }


class _TextCache:
    """Class text features [S, E] per class name, computed once per evaluation."""

    def __init__(self, model, corpus):
        self.model, self.corpus = model, corpus
        self._feats: dict[str, torch.Tensor] = {}

    def __call__(self, class_names: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(name for name in class_names if name not in self._feats))
        if missing:
            for name, feats in zip(missing, self.model.encode_classes(missing, self.corpus), strict=True):
                self._feats[name] = feats
        return torch.stack([self._feats[name] for name in class_names])  # [C, S, E]


def _score_episode(model, support_feats, support_labels, query_feats, text_feats, num_classes, inductive, encode_one):
    """Scores [M, C]; inductive: every query alone (its own set of one), so no query sees another."""
    if not inductive:
        return model.scores_from_features(support_feats, support_labels, query_feats, text_feats, num_classes)
    rows = []
    for q in range(query_feats.shape[0]):
        rows.append(model.scores_from_features(support_feats, support_labels, encode_one(q), text_feats, num_classes))
    return torch.cat(rows)


def evaluate(
    model: torch.nn.Module,
    loader: EpisodeLoader,
    episode_ids: Iterable[int | EpisodePlan],
    corpus: Mapping[str, Sequence[str]] | None,
    *,
    cache: bool | PrefixCache = True,
    inductive: bool = False,
    progress: bool = True,
    keep_scores: bool = False,
) -> EvalResult:
    """Accuracy of `model` on the given episodes (episode indices of `loader`, or saved `EpisodePlan`s).

    Runs in eval mode without gradients and restores the model's mode afterwards. Transductive by
    default: the whole query set is encoded together (Task-MSA and the cross-query alignment see
    all queries). inductive=True classifies each query alone: it is encoded as a set of one and
    aligned per video (with one query, the cross-query attention has a single key, so it is the
    per-video alignment), so no query sees another.

    cache: True for a fresh in-memory `PrefixCache` (frozen-prefix tokens per video and text
    features per class), a `PrefixCache` to reuse or keep on disk, False to encode everything
    every episode. The loader's own prefetch threads decode episodes ahead of the model.
    """
    from tqdm.auto import tqdm

    items = list(episode_ids)
    if not items:
        raise ValueError("evaluate needs at least one episode")
    prefix_cache: PrefixCache | None
    if cache is True:
        prefix_cache = PrefixCache()
    elif cache is False or cache is None:
        prefix_cache = None
    else:
        prefix_cache = cache
    for item in items:
        if isinstance(item, EpisodePlan):
            loader.check_plan(item)

    was_training = model.training
    model.eval()
    device = model.device
    dtype = next(model.parameters()).dtype
    needs_text = model.config.score != "video"
    text = _TextCache(model, corpus) if (needs_text and prefix_cache is not None) else None
    if prefix_cache is not None:
        prefix_cache.bind(model)
    hits0, misses0 = (prefix_cache.hits, prefix_cache.misses) if prefix_cache is not None else (0, 0)

    # A key stats the video's file(s) (its version): once per distinct clip of this call, not at every lookup.
    keys: dict[tuple, tuple] = {}

    def video_key(plan: EpisodePlan, position: int) -> tuple:
        crop = None if plan.crop_offsets is None else plan.crop_offsets[position]
        row, indices = int(plan.rows[position]), plan.frame_indices[position]
        clip = (row, indices.tobytes(), None if crop is None else tuple(int(v) for v in crop))
        key = keys.get(clip)
        if key is None:
            key = keys[clip] = PrefixCache.key(loader.rows[row].path, indices, crop, loader.image_size)
        return key

    # Which videos to decode is decided in episode order, in this thread, as the prefetcher asks for
    # the next episode: a video is decoded by the first episode that needs it and found in the cache
    # by every later one (the prefetch threads never decode a video twice).
    claimed: set[tuple] = set()

    def planned(items_: Iterable[int | EpisodePlan]) -> Iterator[tuple[int | EpisodePlan, EpisodePlan, list[int]]]:
        for item in items_:
            plan = item if isinstance(item, EpisodePlan) else loader.plan(int(item))
            if prefix_cache is None:
                yield item, plan, list(range(plan.rows.shape[0]))
                continue
            positions = []
            for position in range(plan.rows.shape[0]):
                key = video_key(plan, position)
                if key not in claimed and key not in prefix_cache:
                    claimed.add(key)
                    positions.append(position)
            yield item, plan, positions

    def needed(plan: EpisodePlan, position: int) -> bool:
        return prefix_cache is None or video_key(plan, position) not in prefix_cache

    def fetch(job: tuple[int | EpisodePlan, EpisodePlan, list[int]]):
        """-> (item, plan, decoded positions, their clips); positions None: a saved episode with a bad video."""
        item, plan, positions = job
        try:
            return item, plan, positions, (loader.decode(plan, positions) if positions else None)
        except VideoDecodeError as error:
            loader.mark_bad(error)
        if isinstance(item, EpisodePlan):
            return item, item, None, None  # a saved episode cannot be redrawn: it is skipped
        return (item, *loader.load(int(item), needed))

    def prefix_tokens(plan: EpisodePlan, positions: list[int], clips: torch.Tensor | None) -> torch.Tensor:
        """[V, T, N, D] frozen-prefix tokens of every video of the plan: fresh ones computed and cached."""
        tokens: list[torch.Tensor | None] = [None] * plan.rows.shape[0]
        if clips is not None:
            fresh = model.encode_video_prefix(clips.to(device=device, dtype=dtype))  # [V', T, N, D]
            prefix_cache.count_misses(len(positions))
            for position, tokens_TND in zip(positions, fresh, strict=True):
                prefix_cache.put(video_key(plan, position), tokens_TND)
                tokens[position] = tokens_TND
        for position in range(len(tokens)):
            if tokens[position] is None:
                cached = prefix_cache.get(video_key(plan, position))
                if cached is None:  # evicted, or claimed by an episode whose decoding failed: decode it now
                    clip = loader.decode(plan, [position])  # may raise VideoDecodeError
                    cached = model.encode_video_prefix(clip.to(device=device, dtype=dtype))[0]
                    prefix_cache.put(video_key(plan, position), cached)
                tokens[position] = cached
        return torch.stack([t.to(device=device) for t in tokens])  # the dtype they were computed in, cached or not

    per_episode: list[float] = []
    evaluated_ids: list[int] = []
    plans: list[EpisodePlan] = []
    all_scores: list[torch.Tensor] = []
    start_time = time.perf_counter()
    bar = tqdm(total=len(items), desc="evaluate", unit="episode", disable=not progress, file=sys.stderr)
    try:
        with torch.no_grad():
            for item, plan, positions, clips in loader.imap(fetch, planned(items)):
                stacked = None
                while positions is not None and prefix_cache is not None:
                    try:
                        stacked = prefix_tokens(plan, positions, clips)  # [V, T, N, D]
                        break
                    except VideoDecodeError as error:  # found bad after this episode was planned
                        loader.mark_bad(error)
                        if isinstance(item, EpisodePlan):
                            positions = None
                        else:
                            plan, positions, clips = loader.load(int(item), needed)
                if positions is None:  # a saved episode with an unreadable video
                    log.warning("episode %d skipped: it holds an unreadable video", plan.index)
                    bar.update(1)
                    continue
                num_support = plan.support_rows.shape[0]
                support_labels = torch.as_tensor(plan.support_labels, device=device)
                if stacked is None:
                    clips = clips.to(device=device, dtype=dtype)
                    support_feats = model.encode_videos(clips[:num_support])
                    query_videos = clips[num_support:]
                    query_feats = model.encode_videos(query_videos)
                    text_feats = model.encode_classes(plan.class_names, corpus) if needs_text else None

                    def encode_one(q, query_videos=query_videos):
                        return model.encode_videos(query_videos[q : q + 1])
                else:
                    support_feats = model.encode_from_prefix(stacked[:num_support])
                    query_tokens = stacked[num_support:]
                    query_feats = model.encode_from_prefix(query_tokens)
                    text_feats = text(plan.class_names) if text is not None else None

                    def encode_one(q, query_tokens=query_tokens):
                        return model.encode_from_prefix(query_tokens[q : q + 1])

                scores = _score_episode(
                    model,
                    support_feats,
                    support_labels,
                    query_feats,
                    text_feats,
                    len(plan.class_names),
                    inductive,
                    encode_one,
                )  # [C*Q, C]
                query_labels = torch.as_tensor(plan.query_labels, device=scores.device)
                accuracy = 100.0 * (scores.argmax(dim=1) == query_labels).double().mean().item()
                per_episode.append(accuracy)
                evaluated_ids.append(plan.index)
                plans.append(plan)
                if keep_scores:
                    all_scores.append(scores.detach().cpu())
                bar.update(1)
                bar.set_postfix(acc=f"{sum(per_episode) / len(per_episode):.2f}", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start_time
    if not per_episode:
        raise RuntimeError(f"no episode could be evaluated ({loader.skipped.count} unreadable videos)")
    mean, ci95 = mean_ci95(per_episode)
    return EvalResult(
        accuracy=mean,
        ci95=ci95,
        per_episode=per_episode,
        episodes=len(per_episode),
        skipped=loader.skipped.count,
        episode_ids=evaluated_ids,
        plans=plans,
        seconds=seconds,
        cache_hits=(prefix_cache.hits - hits0) if prefix_cache is not None else 0,
        cache_misses=(prefix_cache.misses - misses0) if prefix_cache is not None else 0,
        inductive=inductive,
        scores=all_scores if keep_scores else None,
    )
