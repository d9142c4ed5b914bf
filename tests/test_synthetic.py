"""The built-in synthetic dataset: deterministic, classes that really differ, readable by the data API."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from taskadapter_fast.data import load_clip, load_corpus, make_synthetic_dataset, read_split
from taskadapter_fast.data import synthetic as synthetic_module
from taskadapter_fast.data.decode import probe_video
from taskadapter_fast.data.synthetic import SYNTHETIC_CLASSES, order_pairs, render_video, synthetic_class

SMALL = dict(videos_per_class=2, min_frames=8, max_frames=10, size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TAF_CACHE_DIR", str(cache))
        made = make_synthetic_dataset(seed=3, **SMALL)
    assert made.root.parent == cache and made.root.name.startswith("synthetic-")
    return made


def files_of(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def read_jpegs(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("img_*.jpg"))])


# ------------------------------------------------------------------------------------------ determinism and cache


def test_same_seed_gives_the_same_bytes_and_pixels(dataset, tmp_path):
    again = make_synthetic_dataset(tmp_path / "again", seed=3, **SMALL)
    assert files_of(again.root) == files_of(dataset.root)
    for relative in files_of(dataset.root):
        assert (again.root / relative).read_bytes() == (dataset.root / relative).read_bytes(), relative
    video = dataset.videos[0]
    first = load_clip(dataset.root / video["video"], [0, 3], image_size=32, decoder="pyav")
    second = load_clip(again.root / video["video"], [0, 3], image_size=32, decoder="pyav")
    assert torch.equal(first, second)
    other = make_synthetic_dataset(tmp_path / "other", seed=4, **SMALL)
    assert not np.array_equal(
        read_jpegs(other.root / other.videos[0]["frames"]), read_jpegs(dataset.root / video["frames"])
    )


def test_generated_once_into_the_cache(dataset, monkeypatch):
    monkeypatch.setenv("TAF_CACHE_DIR", str(dataset.root.parent))
    stamp = (dataset.root / "dataset.json").stat().st_mtime_ns
    again = make_synthetic_dataset(seed=3, **SMALL)
    assert again.root == dataset.root and (dataset.root / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        make_synthetic_dataset(dataset.root, seed=5, **SMALL)


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write(path, frames):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(synthetic_module, "_write_webm", failing_write)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []
    # A generator killed outright leaves its temporary folder (and lock file, nobody's lock now); the next run
    # removes them. One whose lock is held is alive (perhaps in another container or on another host sharing
    # the cache, where its process id would say nothing): left alone.
    leftover = tmp_path / ".data.tmp-0badf00d"
    (leftover / "frames").mkdir(parents=True)
    (tmp_path / ".data.tmp-0badf00d.lock").write_text("")
    alive = tmp_path / ".data.tmp-a11ve"
    (alive / "frames").mkdir(parents=True)
    monkeypatch.undo()
    with open(tmp_path / ".data.tmp-a11ve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = make_synthetic_dataset(tmp_path / "data", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.tmp-a11ve", ".data.tmp-a11ve.lock", "data"]
    assert made.root == tmp_path / "data"


def test_bad_parameters_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_synthetic_dataset(tmp_path / "a", size=33)
    with pytest.raises(ValueError, match="min_frames"):
        make_synthetic_dataset(tmp_path / "a", min_frames=10, max_frames=9)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        make_synthetic_dataset(tmp_path / "busy", **SMALL)


# ------------------------------------------------------------------------------------------ classes


def foreground(cls, num_frames=12, size=64, seed=0) -> np.ndarray:
    """Coverage of the main shape per frame (clean render: no noise, no distractors) → float [F, H, W]."""
    frames = render_video(cls, num_frames, size, seed, noise=0.0, distractors=0).astype(np.float64)
    # The background comes first from the seed, so it is the same for every class; the first frame
    # of a fade-in shows it alone.
    empty = render_video(synthetic_class("a star appearing"), num_frames, size, seed, noise=0.0, distractors=0)[0]
    return np.abs(frames - empty.astype(np.float64)).sum(axis=-1) / 255.0


def centroid(mask_HW: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0 : mask_HW.shape[0], 0 : mask_HW.shape[1]]
    total = mask_HW.sum()
    return float((xs * mask_HW).sum() / total), float((ys * mask_HW).sum() / total)


def orientation(mask_HW: np.ndarray, fold: int) -> float:
    """Angle (radians, y down) of a `fold`-symmetric shape from its complex moment of that order."""
    cx, cy = centroid(mask_HW)
    ys, xs = np.mgrid[0 : mask_HW.shape[0], 0 : mask_HW.shape[1]]
    moment = ((xs - cx + 1j * (ys - cy)) ** fold * mask_HW).sum()
    return float(np.angle(moment)) / fold


@pytest.mark.parametrize("cls", SYNTHETIC_CLASSES, ids=lambda cls: cls.name)
def test_every_class_shows_its_motion(cls):
    mask = foreground(cls)
    first, last = mask[0], mask[-1]
    sign = -1 if cls.reverse else 1
    if cls.motion == "left_to_right":
        assert sign * (centroid(last)[0] - centroid(first)[0]) > 64 * 0.3
    elif cls.motion == "upwards":
        assert sign * (centroid(first)[1] - centroid(last)[1]) > 64 * 0.3
    elif cls.motion == "grow":
        ratio = last.sum() / first.sum()
        assert (ratio if sign > 0 else 1 / ratio) > 4
    elif cls.motion == "fade_in":
        assert sign * (last.sum() - first.sum()) > 0.5 * max(first.sum(), last.sum())
    elif cls.motion == "rotate_clockwise":
        fold = {"triangle": 3, "cross": 4}[cls.shape]
        angles = np.unwrap([orientation(m, fold) * fold for m in mask]) / fold
        assert sign * (angles[-1] - angles[0]) > np.deg2rad(25)  # y down: a growing angle turns clockwise
        assert abs(mask[-1].sum() - mask[0].sum()) < 0.05 * mask[0].sum()


def test_order_pairs_are_exact_time_reverses_and_appearance_pairs_differ():
    pairs = order_pairs()
    assert len(pairs) == sum(cls.reverse for cls in SYNTHETIC_CLASSES) == 8
    for forward, backward in pairs:
        assert np.array_equal(
            render_video(backward, 10, 32, seed=[7, 1]), render_video(forward, 10, 32, seed=[7, 1])[::-1]
        )
    square = foreground(synthetic_class("moving a square from left to right"))
    circle = foreground(synthetic_class("moving a circle from left to right"))
    assert abs(square[0].sum() - circle[0].sum()) > 0.1 * circle[0].sum()  # 2.56 r² vs π r²
    assert np.abs(square - circle).mean() > 0.02


def test_splits_hold_order_and_appearance_pairs():
    splits = {split: [cls for cls in SYNTHETIC_CLASSES if cls.split == split] for split in ("train", "val", "test")}
    assert [len(classes) for classes in splits.values()] == [10, 5, 5]
    assert len({cls.name for cls in SYNTHETIC_CLASSES}) == 20
    for classes in splits.values():
        motions = [(cls.shape, cls.motion) for cls in classes]
        assert len(motions) > len(set(motions)), "each split has a pair that differs only in order"
        by_motion = {}
        for cls in classes:
            by_motion.setdefault((cls.motion, cls.reverse), set()).add(cls.shape)
        assert any(len(shapes) > 1 for shapes in by_motion.values()), "each split has a pair that differs in shape only"


# ------------------------------------------------------------------------------------------ the files


def test_split_files_parse_and_match_the_description(dataset):
    for split, classes in dataset.classes.items():
        rows = read_split(dataset.split_files[split])
        assert len(rows) == len(classes) * SMALL["videos_per_class"]
        assert [(r.class_name, r.label) for r in rows[:: SMALL["videos_per_class"]]] == [
            (c, i) for i, c in enumerate(classes)
        ]
        assert {r.split for r in rows} == {split} and {r.kind for r in rows} == {"frames"}
        for row in rows:
            assert len(list(Path(row.path).glob("img_*.jpg"))) == row.num_frames
            assert SMALL["min_frames"] <= row.num_frames <= SMALL["max_frames"]
        videos = read_split(dataset.video_dirs[split])
        assert {r.kind for r in videos} == {"video"} and sorted({r.class_name for r in videos}) == sorted(classes)
        frames = read_split(dataset.frame_dirs[split])
        assert sorted(r.path for r in frames) == sorted(r.path for r in rows)


def test_videos_and_frame_folders_hold_the_same_rendered_frames(dataset):
    for video in dataset.videos[:: SMALL["videos_per_class"] * 5]:
        rendered = render_video(video["class_name"], video["num_frames"], SMALL["size"], video["seed"])
        jpegs = read_jpegs(dataset.root / video["frames"])
        assert jpegs.shape == rendered.shape
        assert np.abs(jpegs.astype(float) - rendered).mean() < 5.0  # JPEG q95 on sigma-8 pixel noise
        assert probe_video(dataset.root / video["video"]).num_frames == video["num_frames"]
        indices = list(range(video["num_frames"]))
        from_video = load_clip(dataset.root / video["video"], indices, image_size=32, decoder="pyav")
        from_jpeg = load_clip(dataset.root / video["frames"], indices, image_size=32, decoder="pyav")
        assert (from_video - from_jpeg).abs().mean() < 0.1  # normalised units: about 7 grey levels


def test_reversed_class_files_play_the_forward_rendering_backwards(dataset):
    forward_of = dict((backward, forward) for forward, backward in dataset.order_pairs)
    checked = 0
    for video in dataset.videos:
        if video["class_name"] in forward_of:
            forward = render_video(forward_of[video["class_name"]], video["num_frames"], SMALL["size"], video["seed"])
            jpegs = read_jpegs(dataset.root / video["frames"]).astype(float)
            backwards_error = np.abs(jpegs - forward[::-1]).mean()
            assert backwards_error < 5.0 and np.abs(jpegs - forward).mean() > backwards_error + 2.0
            checked += 1
    assert checked == 8 * SMALL["videos_per_class"]


def test_corpus_loads_with_three_stages_per_class(dataset):
    corpus = load_corpus(dataset.corpus)
    names = [name for split in ("train", "val", "test") for name in dataset.classes[split]]
    assert sorted(corpus) == sorted(names)
    assert all(len(stages) == 3 and all(stages) for stages in corpus.values())
    forward, backward = dataset.order_pairs[0]
    assert corpus[forward] != corpus[backward]


@pytest.mark.slow
def test_default_dataset_generates_well_under_a_minute(tmp_path):
    start = time.perf_counter()
    made = make_synthetic_dataset(tmp_path / "default")
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"default synthetic dataset took {elapsed:.1f} s"
    assert len(made.videos) == 20 * 8 and sum(len(c) for c in made.classes.values()) == 20
