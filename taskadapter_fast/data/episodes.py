"""Episodes: planning, loading and the episodes file.

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

An episodes file (`write_episodes_file` / `read_episodes_file`) stores the plans of evaluated episodes
(classes, support and query rows, frame indices), so another model can be evaluated on identical episodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write_text
from .decode import (
    SkipCounter,
    VideoDecodeError,
    count_frame_files,
    load_clips,
    probe_video,
    resize_size,
    video_kind,
)
from .sampler import EpisodeSampler, crop_offsets, format_listing, frame_indices

log = logging.getLogger(__name__)

EPISODES_FORMAT = "taskadapter_fast.episodes"
EPISODES_VERSION = 1

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


def map_ahead(fn: Callable[[Any], Any], items: Iterable[Any], ahead: int, thread_name: str) -> Iterator[Any]:
    """fn(item) for each item, in order, computed up to `ahead` items ahead in `ahead` background threads (in this
    thread when 0): while the caller works on one result, the next ones are being computed, and at most
    `ahead + 1` results are held. Stopping the iteration early cancels what has not started."""
    if ahead == 0:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix=thread_name)
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


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
        return map_ahead(fn, items, self.prefetch, "taf-episodes")

    def iterate(self, start: int, count: int) -> Iterator[Episode]:
        """Episodes start .. start + count - 1, in order, decoded ahead in background threads."""
        if int(start) < 0 or int(count) < 0:
            raise ValueError(f"start and count must be >= 0, got {start} and {count}")
        return self.imap(self.episode, range(int(start), int(start) + int(count)))


# ----------------------------------------------------------------------------------------------
# Episodes files


def write_episodes_file(
    path: str | os.PathLike, loader: EpisodeLoader, plans: Sequence[EpisodePlan], split: str, source: str | None = None
) -> Path:
    """Write the evaluated episodes (JSON), atomically: `loader`'s settings and the `plans` it drew.

    split: which split (or a description of it); source: the file or folder the split was read from.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": EPISODES_FORMAT,
        "version": EPISODES_VERSION,
        "split": split,
        **({"source": source} if source is not None else {}),
        "num_rows": len(loader.rows),
        "rows_digest": loader.rows_digest,
        "n_way": loader.n_way,
        "n_shot": loader.n_shot,
        "n_query": loader.n_query,
        "num_frames": loader.num_frames,
        "image_size": loader.image_size,
        "seed": loader.seed,
        "train": loader.train,
        "episodes": [plan.to_record() for plan in plans],
    }
    return atomic_write_text(path, json.dumps(document) + "\n")


def read_episodes_file(path: str | os.PathLike) -> tuple[dict[str, Any], list]:
    """-> (header, list of EpisodePlan)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"episodes file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not an episodes file (not JSON: {error})") from None
    # Also accepted: files without the format tag (the `test_episodes.json` of earlier training runs).
    if not isinstance(document, dict) or document.get("format", EPISODES_FORMAT) != EPISODES_FORMAT:
        raise ValueError(f"{path} is not an episodes file (written by --save-episodes or the trainer)")
    if document.get("version", EPISODES_VERSION) != EPISODES_VERSION:
        raise ValueError(f"{path}: episodes file version {document.get('version')!r}, expected {EPISODES_VERSION}")
    missing = [key for key in ("n_way", "n_shot", "n_query", "seed", "episodes") if key not in document]
    if missing:
        raise ValueError(f"{path} is not an episodes file (missing {missing})")
    plans = []
    for number, record in enumerate(document.get("episodes") or []):
        try:
            plans.append(EpisodePlan.from_record(record))
        except ValueError as error:
            raise ValueError(f"{path}: episode #{number}: {error}") from None
    if not plans:
        raise ValueError(f"{path} holds no episodes")
    header = {key: value for key, value in document.items() if key != "episodes"}
    return header, plans


def check_episodes_fit(path: str | os.PathLike, header: Mapping[str, Any], loader: EpisodeLoader, split: str) -> None:
    """Refuse an episodes file (`read_episodes_file`'s header) saved for another model input (T, S) or for other
    videos than `loader`'s rows: its row numbers would name other videos. split: this split, for the message."""
    num_frames, image_size, rows = loader.num_frames, loader.image_size, loader.rows
    if header.get("num_frames", num_frames) != num_frames or header.get("image_size", image_size) != image_size:
        raise ValueError(
            f"{path} was saved for T={header.get('num_frames')}, S={header.get('image_size')}; "
            f"this model uses T={num_frames}, S={image_size}"
        )
    if header.get("num_rows", len(rows)) != len(rows):
        raise ValueError(
            f"{path} was saved for a split of {header.get('num_rows')} videos "
            f"({header.get('split')}), this split ({split}) has {len(rows)}"
        )
    if header.get("rows_digest", loader.rows_digest) != loader.rows_digest:
        raise ValueError(
            f"{path} was saved for other videos of {len(rows)} rows ({header.get('split')}): "
            f"this split ({split}) lists other files or another order, so its row numbers name other videos"
        )
