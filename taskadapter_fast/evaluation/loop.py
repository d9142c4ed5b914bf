"""Episodes in, accuracy out: `evaluate`, its result (`EvalResult`) and the confidence interval (`mean_ci95`).

Evaluation runs the model in eval mode without gradients. An episode's features come from a
feature source (`features.CachedPrefix` or `features.DirectPrefix`), so the loop is the same with
and without the frozen-prefix cache; the loader's prefetch threads decode episodes ahead of the model.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.decode import VideoDecodeError
from ..data.episodes import EpisodeLoader, EpisodePlan
from .cache import PrefixCache
from .features import CachedPrefix, DirectPrefix, EpisodeFeatures, FeatureSource

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate", "mean_ci95"]


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, 1.96 * std / sqrt(n)) with the population std (ddof = 0), as the official code computes it.

    Raises ValueError for an empty sequence. One value gives an interval of 0.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    return float(array.mean()), float(1.96 * array.std(ddof=0) / math.sqrt(array.size))


@dataclass
class EvalResult:
    """Accuracy (%) over episodes, with the 95% confidence interval (docs/method.md §7.4)."""

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


Item = int | EpisodePlan  # an episode index of the loader, or a saved plan


def _after_bad_video(
    loader: EpisodeLoader, source: FeatureSource, item: Item, error: VideoDecodeError
) -> tuple[EpisodePlan, list[int] | None, torch.Tensor | None]:
    """A video of `item` is unreadable: mark it bad, and draw the episode again -> (plan, decoded positions,
    their clips). A saved episode cannot be redrawn: (the plan, None, None), it is skipped."""
    loader.mark_bad(error)
    if isinstance(item, EpisodePlan):
        return item, None, None
    return loader.load(int(item), source.needed)


def _episodes(
    loader: EpisodeLoader, source: FeatureSource, items: list[Item]
) -> Iterator[tuple[EpisodePlan, EpisodeFeatures | None]]:
    """(plan, features) of each item in order, decoded ahead by the loader's prefetch threads.

    features None: a saved episode that holds an unreadable video.
    """

    def planned() -> Iterator[tuple[Item, EpisodePlan, list[int]]]:  # runs in this thread, in episode order
        for item in items:
            plan = item if isinstance(item, EpisodePlan) else loader.plan(int(item))
            yield item, plan, source.claim(plan)

    def fetch(job: tuple[Item, EpisodePlan, list[int]]):  # runs in a prefetch thread
        item, plan, positions = job
        try:
            return item, plan, positions, (loader.decode(plan, positions) if positions else None)
        except VideoDecodeError as error:
            return (item, *_after_bad_video(loader, source, item, error))

    for item, plan, positions, clips in loader.imap(fetch, planned()):
        features = None
        while positions is not None and features is None:
            try:
                features = source.features(plan, positions, clips)
            except VideoDecodeError as error:  # found bad after this episode was planned
                plan, positions, clips = _after_bad_video(loader, source, item, error)
        yield plan, features


def _feature_source(model, loader: EpisodeLoader, corpus, cache: bool | PrefixCache | None) -> FeatureSource:
    """`evaluate`'s cache argument as a feature source: True a fresh `PrefixCache`, False (or None) none."""
    if cache is False or cache is None:
        return DirectPrefix(model, corpus)
    return CachedPrefix(model, loader, corpus, PrefixCache() if cache is True else cache)


def _score_episode(model, plan: EpisodePlan, features: EpisodeFeatures, inductive: bool) -> torch.Tensor:
    """Scores [C*Q, C]; inductive: every query alone (its own set of one), so no query sees another."""
    support_labels = torch.as_tensor(plan.support_labels, device=model.device)
    num_classes = len(plan.class_names)
    sets = [(q, q + 1) for q in range(features.num_queries)] if inductive else [(0, features.num_queries)]
    rows = []
    for start, stop in sets:
        query = features.encode_queries(start, stop)
        rows.append(model.scores_from_features(features.support, support_labels, query, features.text, num_classes))
    return torch.cat(rows) if inductive else rows[0]


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
    for item in items:
        if isinstance(item, EpisodePlan):
            loader.check_plan(item)
    was_training = model.training
    model.eval()
    source = _feature_source(model, loader, corpus, cache)
    per_episode: list[float] = []
    plans: list[EpisodePlan] = []
    scores: list[torch.Tensor] = []
    start_time = time.perf_counter()
    bar = tqdm(total=len(items), desc="evaluate", unit="episode", disable=not progress, file=sys.stderr)
    try:
        with torch.no_grad():
            for plan, features in _episodes(loader, source, items):
                if features is None:
                    log.warning("episode %d skipped: it holds an unreadable video", plan.index)
                    bar.update(1)
                    continue
                episode_scores = _score_episode(model, plan, features, inductive)  # [C*Q, C]
                query_labels = torch.as_tensor(plan.query_labels, device=episode_scores.device)
                per_episode.append(100.0 * (episode_scores.argmax(dim=1) == query_labels).double().mean().item())
                plans.append(plan)
                if keep_scores:
                    scores.append(episode_scores.detach().cpu())
                bar.update(1)
                bar.set_postfix(acc=f"{sum(per_episode) / len(per_episode):.2f}", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start_time
    if not per_episode:
        raise RuntimeError(f"no episode could be evaluated ({loader.skipped.count} unreadable videos)")
    (mean, ci95), (hits, misses) = mean_ci95(per_episode), source.cache_counts()
    return EvalResult(
        accuracy=mean, ci95=ci95, per_episode=per_episode, episodes=len(per_episode), skipped=loader.skipped.count,
        episode_ids=[plan.index for plan in plans], plans=plans, seconds=seconds, cache_hits=hits,
        cache_misses=misses, inductive=inductive, scores=scores if keep_scores else None,
    )  # fmt: skip
