"""The episode loader, the confidence interval, the frozen-prefix cache and evaluation (taskadapter_fast.evaluation).

Real files throughout: the synthetic dataset (JPEG frame folders and VP9 webm files) at 32x32 and
the tiny model preset.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from taskadapter_fast import create_model
from taskadapter_fast.data.corpus import load_corpus
from taskadapter_fast.data.decode import resize_size
from taskadapter_fast.data.episodes import EpisodeLoader, EpisodePlan, redraw_index
from taskadapter_fast.data.splits import read_split
from taskadapter_fast.data.synthetic import make_synthetic_dataset
from taskadapter_fast.evaluation import PrefixCache, evaluate, mean_ci95

T, S = 8, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine") / "synthetic"
    return make_synthetic_dataset(root=root, videos_per_class=3, min_frames=16, max_frames=21, size=32)


@pytest.fixture(scope="module")
def test_rows(dataset):
    return read_split(dataset.split_files["test"])


@pytest.fixture(scope="module")
def corpus(dataset):
    return load_corpus(dataset.corpus)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny")


def _loader(rows, train=False, prefetch=0, seed=7, n_way=5, n_shot=1, n_query=1):
    return EpisodeLoader(
        rows,
        n_way,
        n_shot,
        n_query,
        num_frames=T,
        image_size=S,
        train=train,
        seed=seed,
        prefetch=prefetch,
        decoder="pyav",
    )


def _same_episode(a, b):
    assert a.index == b.index
    assert a.class_names == b.class_names
    np.testing.assert_array_equal(a.support_rows, b.support_rows)
    np.testing.assert_array_equal(a.query_rows, b.query_rows)
    assert torch.equal(a.support_labels, b.support_labels) and torch.equal(a.query_labels, b.query_labels)
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)


# ------------------------------------------------------------------------------------------------ loader
@pytest.mark.parametrize("train", [False, True])
def test_episode_is_a_pure_function_of_seed_and_index(test_rows, train):
    ids = [0, 3, 1, 2]
    first = _loader(test_rows, train=train, prefetch=2)
    second = _loader(test_rows, train=train, prefetch=0)
    prefetched = list(first.iterate(0, 4))  # in order, decoded ahead in threads
    backwards = {i: second.episode(i) for i in reversed(ids)}  # another loader, another order
    for i, episode in enumerate(prefetched):
        _same_episode(episode, backwards[i])
    episode = prefetched[0]
    assert episode.support.shape == (5, T, 3, S, S) and episode.query.shape == (5, T, 3, S, S)
    assert episode.support.dtype == torch.float32
    assert episode.support_labels.tolist() == [0, 1, 2, 3, 4] and episode.query_labels.tolist() == [0, 1, 2, 3, 4]
    for label, row in zip(episode.query_labels.tolist(), episode.query_rows.tolist(), strict=True):
        assert test_rows[row].class_name == episode.class_names[label]
    assert set(episode.support_rows.tolist()).isdisjoint(episode.query_rows.tolist())
    other_seed = _loader(test_rows, train=train, seed=8).episode(0)
    assert not torch.equal(other_seed.query, episode.query)


def test_frame_indices_and_crops_follow_the_mode(test_rows):
    counts = np.array([test_rows[r].num_frames for r in range(len(test_rows))])
    plan = _loader(test_rows).plan(5)
    centre = [[int(n / T / 2 + n / T * s) for s in range(T)] for n in counts[plan.rows]]
    assert plan.frame_indices.tolist() == centre and plan.crop_offsets is None
    train_plans = [_loader(test_rows, train=True).plan(i) for i in range(4)]
    for plan in train_plans:
        avg = counts[plan.rows] // T
        offsets = plan.frame_indices - np.arange(T) * avg[:, None]
        assert ((offsets >= 0) & (offsets < avg[:, None])).all()
        assert ((plan.crop_offsets >= 0) & (plan.crop_offsets <= resize_size(S) - S)).all()
    assert len({p.frame_indices.tobytes() for p in train_plans}) == 4  # random offsets differ per draw


def test_multi_shot_episode_layout(test_rows):
    episode = _loader(test_rows, n_way=3, n_shot=2, n_query=1).episode(4)
    assert episode.support.shape[0] == 6 and episode.query.shape[0] == 3
    assert episode.support_labels.tolist() == [0, 0, 1, 1, 2, 2]
    for label, row in zip(episode.support_labels.tolist(), episode.support_rows.tolist(), strict=True):
        assert test_rows[row].class_name == episode.class_names[label]


def test_rows_without_frame_counts_are_probed_once(dataset):
    rows = read_split(dataset.video_dirs["test"])  # folder layout of webm files: no frame counts
    assert all(row.num_frames is None for row in rows)
    loader = _loader(rows)
    episode = loader.episode(0)
    assert episode.query.shape == (5, T, 3, S, S)
    by_path = {str(dataset.root / video["video"]): video["num_frames"] for video in dataset.videos}
    probed = [loader._frame_counts[r] for r in episode.query_rows.tolist()]
    assert probed == [by_path[rows[r].path] for r in episode.query_rows.tolist()]


@pytest.fixture(scope="module")
def corrupted(dataset, tmp_path_factory):
    """Copies of the test split with one unreadable video each: a wrecked webm file, a folder of non-JPEGs."""
    folder = tmp_path_factory.mktemp("corrupted")
    shutil.copytree(dataset.video_dirs["test"], folder / "videos")
    shutil.copytree(dataset.frame_dirs["test"], folder / "frames")
    video_rows, frame_rows = read_split(folder / "videos"), read_split(folder / "frames")
    with open(video_rows[4].path, "r+b") as handle:  # keep the EBML header, wreck the rest
        handle.seek(40)
        handle.write(b"\x00" * 4000)
    for jpeg in Path(frame_rows[7].path).glob("img_*.jpg"):
        jpeg.write_bytes(b"not a jpeg")
    return [(video_rows, video_rows[4].path), (frame_rows, frame_rows[7].path)]


def test_bad_videos_are_skipped_counted_and_redrawn(corrupted, caplog):
    for rows, bad in corrupted:
        bad_row = next(r for r, row in enumerate(rows) if row.path == bad)
        forward = _loader(rows, prefetch=2)
        with caplog.at_level(logging.WARNING):
            episodes = list(forward.iterate(0, 8))  # 5 of 5 classes, 2 of 3 videos each: the bad one is drawn
        assert forward.skipped.count == 1 and forward.skipped.bad_paths == {bad}
        assert bad in caplog.text
        redrawn = [e for e in episodes if e.plan.draw != e.index]
        assert redrawn, "the bad video was never drawn"
        assert all(bad_row not in e.plan.rows for e in episodes)
        backward = _loader(rows)
        for episode in reversed(episodes):  # the same episodes whatever the order of discovery
            _same_episode(backward.episode(episode.index), episode)
        assert backward.skipped.count == 1


def test_evaluation_skips_bad_videos_with_and_without_the_cache(corrupted, model, corpus):
    rows, bad = corrupted[1]
    ids = list(range(6))
    cached = evaluate(model, _loader(rows, prefetch=2), ids, corpus, cache=True, progress=False, keep_scores=True)
    plain = evaluate(model, _loader(rows), ids, corpus, cache=False, progress=False, keep_scores=True)
    assert cached.skipped == plain.skipped == 1 and cached.episode_ids == plain.episode_ids == ids
    assert [p.to_record() for p in cached.plans] == [p.to_record() for p in plain.plans]
    for a, b in zip(plain.scores, cached.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # A saved episode that holds an unreadable video is skipped (counted), not redrawn.
    fresh = _loader(rows)
    bad_row = next(r for r, row in enumerate(rows) if row.path == bad)
    with_bad = next(fresh.draw(i) for i in range(20) if bad_row in fresh.draw(i).rows)
    replay = evaluate(model, fresh, [with_bad, cached.plans[0]], corpus, progress=False)
    assert replay.episodes == 1 and replay.skipped == 1 and replay.per_episode == cached.per_episode[:1]


def test_redraw_indices_stay_clear_of_ordinary_episodes():
    assert redraw_index(12, 0) == 12
    drawn = {redraw_index(12, a) for a in range(1, 50)}
    assert len(drawn) == 49 and all(1 << 62 <= d < 1 << 63 for d in drawn)


def test_plans_round_trip_and_are_checked(test_rows):
    loader = _loader(test_rows)
    plan = loader.plan(3)
    again = EpisodePlan.from_record(plan.to_record())
    assert again.to_record() == plan.to_record()
    loader.check_plan(again)
    wrong = plan.to_record()
    wrong["classes"] = wrong["classes"][::-1]
    with pytest.raises(ValueError, match="another split"):
        loader.check_plan(EpisodePlan.from_record(wrong))


def test_loader_refusals_name_the_classes(test_rows):
    names = sorted({row.class_name for row in test_rows})
    with pytest.raises(ValueError, match=f"n_way = 9 is larger than the number of classes \\({len(names)}: ") as info:
        _loader(test_rows, n_way=9)
    assert all(name in str(info.value) for name in names)
    few = [row for row in test_rows if row.class_name != names[-1]] + [
        row for row in test_rows if row.class_name == names[-1]
    ][:1]
    with pytest.raises(ValueError, match=f"1 class\\(es\\) have fewer: '{names[-1]}' has 1"):
        _loader(few, n_way=2, n_shot=1, n_query=1)


def test_training_names_the_split_a_refusal_comes_from(test_rows):
    from taskadapter_fast.runconfig import resolve_run_config
    from taskadapter_fast.training import make_loader

    run = resolve_run_config(overrides=["data.n_way=9"])
    with pytest.raises(ValueError, match="^val split: n_way = 9"):
        make_loader(run, test_rows, "val", S, torch.device("cpu"))


# ------------------------------------------------------------------------------------------------ statistics
def test_mean_ci95():
    values = [40.0, 60.0, 80.0, 100.0]
    mean, ci = mean_ci95(values)
    assert mean == 70.0
    assert ci == pytest.approx(1.96 * math.sqrt(500.0) / 2.0)  # population std (ddof 0) = sqrt(500)
    assert mean_ci95([55.0]) == (55.0, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])


# ------------------------------------------------------------------------------------------------ evaluation
def test_cached_evaluation_equals_uncached_and_hits_the_cache(model, test_rows, corpus, tmp_path):
    loader = _loader(test_rows, prefetch=1)
    ids = [0, 1, 2, 3]
    plain = evaluate(model, loader, ids, corpus, cache=False, progress=False, keep_scores=True)
    cached = evaluate(model, loader, ids, corpus, cache=True, progress=False, keep_scores=True)
    for a, b in zip(plain.scores, cached.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert plain.per_episode == cached.per_episode
    distinct = len({int(r) for p in cached.plans for r in p.rows})
    assert cached.cache_misses == distinct and cached.cache_hits == 10 * len(ids) - distinct > 0
    assert plain.cache_hits == plain.cache_misses == 0

    disk = PrefixCache(directory=tmp_path / "prefix")
    evaluate(model, loader, ids, corpus, cache=disk, progress=False)
    reread = PrefixCache(directory=tmp_path / "prefix")  # a new process would start like this
    from_disk = evaluate(model, loader, ids, corpus, cache=reread, progress=False, keep_scores=True)
    assert from_disk.cache_misses == 0 and from_disk.cache_hits == 10 * len(ids)
    for a, b in zip(plain.scores, from_disk.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cache_is_invalidated_when_the_prefix_weights_change(test_rows, corpus):
    torch.manual_seed(1)
    model = create_model("tiny")
    loader = _loader(test_rows)
    cache = PrefixCache()
    evaluate(model, loader, [0], corpus, cache=cache, progress=False)
    assert len(cache) == 10
    with torch.no_grad():
        model.visual.temporal_embedding.normal_(std=0.5)  # trained: the prefix output changes
    cached = evaluate(model, loader, [0], corpus, cache=cache, progress=False, keep_scores=True)
    assert cached.cache_hits == 0
    plain = evaluate(model, loader, [0], corpus, cache=False, progress=False, keep_scores=True)
    torch.testing.assert_close(cached.scores[0], plain.scores[0], rtol=1e-5, atol=1e-6)


def test_cache_keys_change_when_a_video_is_replaced_at_the_same_path(tmp_path):
    video = tmp_path / "v.webm"
    video.write_bytes(b"first version")
    frames = tmp_path / "frames"
    frames.mkdir()
    for number in range(1, 4):
        (frames / f"img_{number:05d}.jpg").write_bytes(b"x" * number)
    indices = np.array([0, 2])
    before = [PrefixCache.key(str(path), indices, None, 32) for path in (video, frames)]
    time.sleep(0.01)  # a distinct modification time even on coarse clocks
    video.write_bytes(b"second, longer version")
    (frames / "img_00003.jpg").write_bytes(b"another frame")
    after = [PrefixCache.key(str(path), indices, None, 32) for path in (video, frames)]
    assert after[0] != before[0] and after[1] != before[1]
    assert PrefixCache.key(str(frames), np.array([0, 1]), None, 32) == PrefixCache.key(
        str(frames), np.array([0, 1]), None, 32
    )


def test_cache_keeps_bf16_and_fp32_tokens_apart(model, test_rows, corpus, tmp_path):
    loader = _loader(test_rows)
    ids = [0, 1]
    evaluate(model, loader, ids, corpus, cache=PrefixCache(directory=tmp_path / "prefix"), progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = evaluate(model, loader, ids, corpus, cache=False, progress=False, keep_scores=True)
        cached = evaluate(
            model, loader, ids, corpus, cache=PrefixCache(directory=tmp_path / "prefix"), progress=False,
            keep_scores=True,
        )  # fmt: skip
    assert cached.cache_hits == 10 * len(ids) - cached.cache_misses and cached.cache_misses > 0  # fp32 unused
    for a, b in zip(plain.scores, cached.scores, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_lru_cache_is_bounded_by_bytes():
    cache = PrefixCache(max_bytes=3 * 400)
    for i in range(5):
        cache.put(("video", i), torch.zeros(100))  # 400 bytes each
    assert len(cache) == 3 and cache.bytes == 1200
    assert ("video", 0) not in cache and ("video", 4) in cache


def test_inductive_mode(test_rows, corpus):
    loader = _loader(test_rows)
    ids = [0, 1]
    torch.manual_seed(0)
    model = create_model("tiny")
    with torch.no_grad():  # make the adapters matter (fc2 of A_t, A_s, A_mlp start at zero)
        for parameter in model.trainable_parameters():
            parameter.normal_(std=0.2)
    transductive = evaluate(model, loader, ids, corpus, progress=False, keep_scores=True)
    inductive = evaluate(model, loader, ids, corpus, inductive=True, progress=False, keep_scores=True)
    assert inductive.inductive and not transductive.inductive
    direct = evaluate(model, loader, ids, corpus, inductive=True, cache=False, progress=False, keep_scores=True)
    for cached_scores, direct_scores in zip(inductive.scores, direct.scores, strict=True):  # both feature sources
        torch.testing.assert_close(direct_scores, cached_scores, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(transductive.scores[0], inductive.scores[0], atol=1e-4)

    # With nothing that looks across queries (no Task-MSA, per-video alignment) both modes agree.
    torch.manual_seed(0)
    isolated = create_model("tiny", task_adapter=False, alignment_mode="per_video")
    a = evaluate(isolated, loader, [0], corpus, progress=False, keep_scores=True)
    b = evaluate(isolated, loader, [0], corpus, inductive=True, progress=False, keep_scores=True)
    for x, y in zip(a.scores, b.scores, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache", [True, False])
def test_inductive_evaluation_never_encodes_the_query_set_whole(model, test_rows, corpus, monkeypatch, cache):
    # 3-way 1-shot 2-query: the support set is 3 videos, the query set 6; inductively only sets of 1 and 3 are run.
    sizes = []
    for name in ("encode_videos", "encode_from_prefix"):
        original = getattr(model, name)
        monkeypatch.setattr(model, name, lambda x, *a, _f=original, **k: sizes.append(x.shape[0]) or _f(x, *a, **k))
    loader = _loader(test_rows, n_way=3, n_query=2)
    evaluate(model, loader, [0], corpus, inductive=True, cache=cache, progress=False)
    assert sorted(set(sizes)) == [1, 3] and sizes.count(1) == 6
    sizes.clear()
    evaluate(model, loader, [0], corpus, cache=cache, progress=False)
    assert sorted(set(sizes)) == [3, 6]


def test_evaluate_restores_the_training_mode_and_replays_plans(model, test_rows, corpus):
    loader = _loader(test_rows)
    model.train()
    result = evaluate(model, loader, [2, 5], corpus, progress=False)
    assert model.training
    assert result.episodes == 2 and result.episode_ids == [2, 5] and len(result.per_episode) == 2
    replayed = evaluate(model, _loader(test_rows, seed=99), result.plans, corpus, progress=False)
    assert replayed.per_episode == result.per_episode
    assert result.accuracy == pytest.approx(np.mean(result.per_episode))
    model.eval()
