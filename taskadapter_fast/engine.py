"""Episodes in, accuracy out: the frozen-prefix cache and evaluation.

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
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_write_bytes
from .data.decode import (
    FRAME_NAME,
    VideoDecodeError,
)
from .data.episodes import EpisodeLoader, EpisodePlan
from .ops.dispatch import autocast_on

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "PrefixCache", "evaluate", "mean_ci95"]

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
