"""Where an evaluated episode's features come from: the prefix cache (`CachedPrefix`) or the pixels (`DirectPrefix`).

Evaluation asks a feature source three things, whatever it keeps:
- `claim(plan)`: which videos of an episode its prefetch decodes, asked in episode order;
- `needed(plan, position)`: whether a video needs pixels at all (for an episode drawn again);
- `features(plan, positions, clips)`: the episode's support, query and class text features from
  the clips decoded at `positions`; it may raise `VideoDecodeError` when it has to decode more.
Both sources compute the same scores (tests/test_engine.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..data.episodes import EpisodeLoader, EpisodePlan
from .cache import ClassTextCache, PrefixCache

__all__ = ["CachedPrefix", "DirectPrefix", "EpisodeFeatures", "FeatureSource"]


@dataclass
class EpisodeFeatures:
    """An episode's features, ready for `model.scores_from_features`."""

    support: torch.Tensor  # [C*K, T, E], the support set encoded together
    text: torch.Tensor | None  # [C, S, E]; None when the model scores videos only
    num_queries: int
    # (start, stop) -> [stop - start, T, E]: queries start..stop-1 encoded as one set, when asked for (so the
    # inductive mode, which asks for each query alone, never encodes the whole set too)
    encode_queries: Callable[[int, int], torch.Tensor]


class FeatureSource(Protocol):
    """What `evaluate` asks of an episode's feature source (see the module doc)."""

    def claim(self, plan: EpisodePlan) -> list[int]: ...

    def needed(self, plan: EpisodePlan, position: int) -> bool: ...

    def features(self, plan: EpisodePlan, positions: list[int], clips: torch.Tensor | None) -> EpisodeFeatures: ...

    def cache_counts(self) -> tuple[int, int]: ...  # (hits, misses) of its cache during this evaluation


class DirectPrefix:
    """No cache: every episode decodes all of its videos and runs the whole visual and text towers."""

    def __init__(self, model: torch.nn.Module, corpus: Mapping[str, Sequence[str]] | None):
        self.model, self.corpus = model, corpus
        self.dtype = next(model.parameters()).dtype
        self.needs_text = model.config.score != "video"

    def claim(self, plan: EpisodePlan) -> list[int]:
        return list(range(plan.rows.shape[0]))

    def needed(self, plan: EpisodePlan, position: int) -> bool:
        return True

    def features(self, plan: EpisodePlan, positions: list[int], clips: torch.Tensor | None) -> EpisodeFeatures:
        model, num_support = self.model, plan.support_rows.shape[0]
        clips = clips.to(device=model.device, dtype=self.dtype)
        support = model.encode_videos(clips[:num_support])
        query_videos = clips[num_support:]
        return EpisodeFeatures(
            support=support,
            text=model.encode_classes(plan.class_names, self.corpus) if self.needs_text else None,
            num_queries=query_videos.shape[0],
            encode_queries=lambda start, stop: model.encode_videos(query_videos[start:stop]),
        )

    def cache_counts(self) -> tuple[int, int]:
        return 0, 0


class CachedPrefix:
    """Frozen-prefix tokens from a `PrefixCache` (only the videos it lacks are decoded), class text once per name.

    One per evaluation: it binds the cache to the model, and stats each clip's file(s) for its cache
    key once (not at every lookup).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loader: EpisodeLoader,
        corpus: Mapping[str, Sequence[str]] | None,
        cache: PrefixCache,
    ):
        self.model, self.loader, self.cache = model, loader, cache
        self.dtype = next(model.parameters()).dtype
        self.text = ClassTextCache(model, corpus) if model.config.score != "video" else None
        cache.bind(model)
        self._start = (cache.hits, cache.misses)
        self._keys: dict[tuple, tuple] = {}  # clip -> cache key
        self._claimed: set[tuple] = set()

    def key(self, plan: EpisodePlan, position: int) -> tuple:
        """The cache key of the plan's video at `position`."""
        crop = None if plan.crop_offsets is None else plan.crop_offsets[position]
        row, indices = int(plan.rows[position]), plan.frame_indices[position]
        clip = (row, indices.tobytes(), None if crop is None else tuple(int(v) for v in crop))
        key = self._keys.get(clip)
        if key is None:
            key = self._keys[clip] = PrefixCache.key(self.loader.rows[row].path, indices, crop, self.loader.image_size)
        return key

    def claim(self, plan: EpisodePlan) -> list[int]:
        # Asked in episode order, in the thread that feeds the prefetcher: a video is decoded by the first
        # episode that needs it and found in the cache by every later one (never decoded twice).
        positions = []
        for position in range(plan.rows.shape[0]):
            key = self.key(plan, position)
            if key not in self._claimed and key not in self.cache:
                self._claimed.add(key)
                positions.append(position)
        return positions

    def needed(self, plan: EpisodePlan, position: int) -> bool:
        return self.key(plan, position) not in self.cache

    def tokens(self, plan: EpisodePlan, positions: list[int], clips: torch.Tensor | None) -> torch.Tensor:
        """[V, T, N, D] frozen-prefix tokens of every video of the plan: fresh ones computed and cached."""
        model, device = self.model, self.model.device
        tokens: list[torch.Tensor | None] = [None] * plan.rows.shape[0]
        if clips is not None:
            fresh = model.encode_video_prefix(clips.to(device=device, dtype=self.dtype))  # [V', T, N, D]
            self.cache.count_misses(len(positions))
            for position, tokens_TND in zip(positions, fresh, strict=True):
                self.cache.put(self.key(plan, position), tokens_TND)
                tokens[position] = tokens_TND
        for position in range(len(tokens)):
            if tokens[position] is None:
                cached = self.cache.get(self.key(plan, position))
                if cached is None:  # evicted, or claimed by an episode whose decoding failed: decode it now
                    clip = self.loader.decode(plan, [position])  # may raise VideoDecodeError
                    cached = model.encode_video_prefix(clip.to(device=device, dtype=self.dtype))[0]
                    self.cache.put(self.key(plan, position), cached)
                tokens[position] = cached
        return torch.stack([t.to(device=device) for t in tokens])  # the dtype they were computed in, cached or not

    def features(self, plan: EpisodePlan, positions: list[int], clips: torch.Tensor | None) -> EpisodeFeatures:
        model, num_support = self.model, plan.support_rows.shape[0]
        stacked = self.tokens(plan, positions, clips)  # [V, T, N, D]
        support = model.encode_from_prefix(stacked[:num_support])
        query_tokens = stacked[num_support:]
        return EpisodeFeatures(
            support=support,
            text=self.text(plan.class_names) if self.text is not None else None,
            num_queries=query_tokens.shape[0],
            encode_queries=lambda start, stop: model.encode_from_prefix(query_tokens[start:stop]),
        )

    def cache_counts(self) -> tuple[int, int]:
        """(hits, misses) of the cache since this source was made."""
        return self.cache.hits - self._start[0], self.cache.misses - self._start[1]
