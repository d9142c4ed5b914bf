"""Episodes per second: the C++ sampler, its Python twin, and the official research-code style.

Run: pytest benchmarks/test_bench_sampler.py --benchmark-only

"official" is what the reference code does for every episode: torch.randperm over the classes
to pick C, then for each picked class a freshly shuffled iterator of that class's DataLoader
(batch_size=1) from which it takes K + Q items. "cpp" and "python" make a block of episodes in
one call (what a DataLoader worker or rank asks for); "cpp_per_call" calls episode(i) once per
episode. Each case checks its episodes first (validity, and C++ == Python twin on the same
episodes) and records episodes/s in extra_info; the C++ cases also record their speed-up over
the official style measured in the same run.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from taskadapter_fast.data import EpisodeSampler
from taskadapter_fast.data import sampler as sampler_module

NUM_CLASSES = 64
SEED = 2024
SHAPES = {"5way-1shot-1query": (5, 1, 1), "5way-5shot-1query": (5, 5, 1)}
# episodes per timed round, per provider
EPISODES_PER_ROUND = {"official": 100, "python": 5000, "cpp": 20000, "cpp_per_call": 2000}
ROUNDS = {"official": 5, "python": 10, "cpp": 20, "cpp_per_call": 10}
TARGET_SPEEDUP = 50.0

# official-style episodes/s per shape, filled by the "official" case and read by the C++ cases
_official_rate: dict[str, float] = {}


def dataset() -> list[list[int]]:
    """64 classes of 100-119 videos with global, non-contiguous video ids (an SSv2-Small-like train split)."""
    rng = np.random.default_rng(0)
    sizes = 100 + np.arange(NUM_CLASSES) % 20
    ids = rng.permutation(int(sizes.sum()))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [ids[bounds[c] : bounds[c + 1]].tolist() for c in range(NUM_CLASSES)]


class ClassVideos(Dataset):
    """One class's videos; the official code's per-class dataset (here it returns the index only)."""

    def __init__(self, videos: list[int]):
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, item: int) -> int:
        return self.videos[item]


class OfficialStyleSampler:
    def __init__(self, videos_per_class: list[list[int]], n_way: int, n_shot: int, n_query: int, seed: int):
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.generator = torch.Generator().manual_seed(seed)
        self.loaders = [
            DataLoader(ClassVideos(videos), batch_size=1, shuffle=True, generator=self.generator)
            for videos in videos_per_class
        ]

    def episode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        classes = torch.randperm(len(self.loaders), generator=self.generator)[: self.n_way]
        picked = []
        for cls in classes.tolist():
            batches = iter(self.loaders[cls])
            picked.append([int(next(batches)) for _ in range(self.n_shot + self.n_query)])
        picked = np.array(picked, dtype=np.int64)
        return classes.numpy(), picked[:, : self.n_shot], picked[:, self.n_shot :]

    def episodes(self, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [self.episode() for _ in range(count)]


def assert_valid(videos_per_class, classes, support, query) -> None:
    owner = {video: c for c, videos in enumerate(videos_per_class) for video in videos}
    for e in range(classes.shape[0]):
        assert len(set(classes[e].tolist())) == classes.shape[1]
        for c, cls in enumerate(classes[e].tolist()):
            videos = support[e, c].tolist() + query[e, c].tolist()
            assert len(set(videos)) == len(videos) and {owner[v] for v in videos} == {cls}


def make_sampler(monkeypatch, backend: str, shape: tuple[int, int, int]) -> EpisodeSampler:
    monkeypatch.setenv("TAF_SAMPLER_BACKEND", backend)
    sampler = EpisodeSampler(dataset(), *shape, SEED)
    assert sampler.backend == backend
    return sampler


def official_rate(shape: tuple[int, int, int], seconds: float = 1.0) -> float:
    sampler = OfficialStyleSampler(dataset(), *shape, SEED)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        sampler.episodes(20)
        done += 20
    return done / (time.perf_counter() - began)


def record(benchmark, provider: str, shape_name: str, device_name: str) -> float | None:
    benchmark.extra_info.update(
        provider=provider, shape=shape_name, device=device_name, cpu_threads=os.cpu_count(), num_classes=NUM_CLASSES
    )
    if benchmark.stats is None:  # --benchmark-disable
        return None
    rate = EPISODES_PER_ROUND[provider] / benchmark.stats.stats.median
    benchmark.extra_info["episodes_per_s"] = round(rate, 1)
    return rate


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("provider", ["official", "python", "cpp", "cpp_per_call"])
def test_episodes_per_second(benchmark, monkeypatch, device_name, provider, shape_name):
    shape = SHAPES[shape_name]
    videos_per_class = dataset()
    count = EPISODES_PER_ROUND[provider]
    if provider == "official":
        sampler = OfficialStyleSampler(videos_per_class, *shape, SEED)
        parts = zip(*sampler.episodes(50), strict=True)
        assert_valid(videos_per_class, *(np.stack(part) for part in parts))
        benchmark.pedantic(sampler.episodes, args=(count,), rounds=ROUNDS[provider], warmup_rounds=1)
        rate = record(benchmark, provider, shape_name, device_name)
        if rate is not None:
            _official_rate[shape_name] = rate
        return

    if provider != "python" and sampler_module._ext is None:
        pytest.skip("C++ extension taskadapter_fast._episodes not built")
    twin = make_sampler(monkeypatch, "python", shape)
    sampler = twin if provider == "python" else make_sampler(monkeypatch, "cpp", shape)
    checked = sampler.episodes(0, 500)
    assert_valid(videos_per_class, *checked)
    if sampler_module._ext is not None:  # C++ == Python twin on the same episodes
        monkeypatch.setenv("TAF_SAMPLER_BACKEND", "cpp")
        other = EpisodeSampler(videos_per_class, *shape, SEED) if sampler is twin else twin
        for mine, theirs in zip(checked, other.episodes(0, 500), strict=True):
            np.testing.assert_array_equal(mine, theirs)

    if provider == "cpp_per_call":

        def run() -> None:
            for index in range(count):
                sampler.episode(index)

        benchmark.pedantic(run, rounds=ROUNDS[provider], warmup_rounds=1)
    else:
        benchmark.pedantic(sampler.episodes, args=(0, count), rounds=ROUNDS[provider], warmup_rounds=1)
    rate = record(benchmark, provider, shape_name, device_name)
    if rate is None or provider == "python":
        return
    baseline = _official_rate.get(shape_name) or official_rate(shape)
    speedup = rate / baseline
    benchmark.extra_info["official_episodes_per_s"] = round(baseline, 1)
    benchmark.extra_info["speedup_vs_official"] = round(speedup, 1)
    assert speedup >= TARGET_SPEEDUP, f"{provider}: {rate:.0f} episodes/s is only {speedup:.1f}x the official style"
