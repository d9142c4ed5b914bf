"""Episode sampler, frame indices and crop offsets: C++ against its Python twin, against a scalar
restatement of the documented algorithm, purity, validity, statistics and every refused input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from taskadapter_fast.data import EpisodeSampler, crop_offsets, frame_indices
from taskadapter_fast.data import sampler as sampler_module

EXT_MISSING = sampler_module._ext is None
NEEDS_EXT = pytest.mark.skipif(
    EXT_MISSING, reason="C++ extension taskadapter_fast._episodes not built (TAF_BUILD_EXT=0 install)"
)
BACKENDS = [pytest.param("cpp", marks=NEEDS_EXT), "python"]

# Seeds at the edges of the 64-bit range and a few ordinary ones.
SEEDS = [0, 1, 7, 12345, 2**32 - 1, 2**32, 2**63 - 1, 2**63 + 11, 2**64 - 1]


def uneven_classes(num_classes: int = 64, smallest: int = 6, seed: int = 0) -> list[list[int]]:
    """Class c owns a shuffled run of global video ids; sizes differ between classes."""
    rng = np.random.default_rng(seed)
    sizes = smallest + rng.integers(0, 40, num_classes)
    ids = rng.permutation(int(sizes.sum())) + 1000
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [ids[bounds[c] : bounds[c + 1]].tolist() for c in range(num_classes)]


def using(monkeypatch, backend: str, fn, *args, **kwargs):
    """fn(*args, **kwargs) with TAF_SAMPLER_BACKEND=backend."""
    with monkeypatch.context() as patch:
        patch.setenv("TAF_SAMPLER_BACKEND", backend)
        return fn(*args, **kwargs)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    monkeypatch.setenv("TAF_SAMPLER_BACKEND", request.param)
    return request.param


# ------------------------------------------------------------------------------------------------
# The algorithm of sampler.py's docstring, restated with plain Python ints and dense shuffles.

MASK64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15
SALT_EPISODES, SALT_FRAMES, SALT_CROPS = 0x5441462D45504953, 0x5441462D4652414D, 0x5441462D43524F50


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, salt: int, key: int) -> int:
    return mix64((mix64(seed ^ salt) + key * GOLDEN) & MASK64)


def bounded(key: int, slot: int, size: int, attempts: list[int] | None = None) -> int:
    attempt = 0
    while True:
        m = (mix64((key + GOLDEN * (1 + slot + attempt * 2**32)) & MASK64) >> 32) * size
        if m % 2**32 >= (2**32 - size) % size:
            if attempts is not None:
                attempts.append(attempt)
            return m >> 32
        attempt += 1


def spec_episode(videos_per_class, n_way, n_shot, n_query, seed, index):
    key = stream_key(seed, SALT_EPISODES, index)
    order = list(range(len(videos_per_class)))
    for j in range(n_way):
        r = j + bounded(key, j, len(order) - j)
        order[j], order[r] = order[r], order[j]
    classes = order[:n_way]
    per_class = n_shot + n_query
    picked = []
    for c, cls in enumerate(classes):
        positions = list(range(len(videos_per_class[cls])))
        for m in range(per_class):
            r = m + bounded(key, n_way + c * per_class + m, len(positions) - m)
            positions[m], positions[r] = positions[r], positions[m]
        picked.append([videos_per_class[cls][p] for p in positions[:per_class]])
    return classes, [row[:n_shot] for row in picked], [row[n_shot:] for row in picked]


def spec_frames(n: int, segments: int, train: bool, seed: int, key: int, attempts=None) -> list[int]:
    if train and n > segments:
        avg = n // segments
        k = stream_key(seed, SALT_FRAMES, key)
        return [s * avg + bounded(k, s, avg, attempts) for s in range(segments)]
    tick = n / segments
    return [int(tick / 2 + tick * s) for s in range(segments)]


def spec_crop(resized: int, crop: int, train: bool, seed: int, key: int, attempts=None) -> list[int]:
    if not train:
        return [int(round((resized - crop) / 2.0))] * 2
    k = stream_key(seed, SALT_CROPS, key)
    return [bounded(k, 0, resized - crop + 1, attempts), bounded(k, 1, resized - crop + 1, attempts)]


# ------------------------------------------------------------------------------------------------
# The extension and the backend switch


def test_extension_present_when_required():
    if os.environ.get("TAF_REQUIRE_EXT") == "1":
        assert not EXT_MISSING, f"TAF_REQUIRE_EXT=1 but the C++ extension failed to import: {sampler_module._EXT_ERROR}"
    elif EXT_MISSING:
        pytest.skip("C++ extension not built and TAF_REQUIRE_EXT is not 1")


@NEEDS_EXT
def test_source_checkout_still_gets_the_built_extension_and_kernels():
    """The README runs `python -m taskadapter_fast.train` in the repository root after `pip install .`: Python then
    imports the source tree, which has no built extension and no taskadapter_fast.kernels (setup.py maps kernels/
    there); both must come from the installed copy instead of silently falling back."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "setup.py").is_file():
        pytest.skip(f"the tests are not in a source checkout ({repo} has no setup.py)")
    code = (
        "import taskadapter_fast, taskadapter_fast.data.sampler as s, importlib.util as u;"
        "print(taskadapter_fast.__file__); print(s._ext is not None);"
        "print(u.find_spec('taskadapter_fast.kernels') is not None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    location, has_ext, has_kernels = proc.stdout.split()
    assert Path(location).resolve().is_relative_to(repo), location  # the source tree was imported
    assert has_ext == "True" and has_kernels == "True", proc.stdout


@NEEDS_EXT
def test_default_backend_is_cpp(monkeypatch):
    monkeypatch.delenv("TAF_SAMPLER_BACKEND", raising=False)
    assert EpisodeSampler(uneven_classes(8), 5, 1, 1, 0).backend == "cpp"


def test_backend_env_forces_python_and_rejects_unknown(monkeypatch):
    monkeypatch.setenv("TAF_SAMPLER_BACKEND", "python")
    assert EpisodeSampler(uneven_classes(8), 5, 1, 1, 0).backend == "python"
    monkeypatch.setenv("TAF_SAMPLER_BACKEND", "gpu")
    with pytest.raises(ValueError, match="'gpu'"):
        EpisodeSampler(uneven_classes(8), 5, 1, 1, 0)


def test_missing_extension_warns_once_and_cpp_request_fails(monkeypatch):
    monkeypatch.setattr(sampler_module, "_ext", None)
    monkeypatch.setattr(sampler_module, "_EXT_ERROR", "No module named 'taskadapter_fast._episodes'")
    monkeypatch.setattr(sampler_module, "_warned_missing_ext", False)
    monkeypatch.delenv("TAF_SAMPLER_BACKEND", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert EpisodeSampler(uneven_classes(8), 5, 1, 1, 0).backend == "python"
        frame_indices([10, 20])
        crop_offsets(2, 257, 224)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "not built" in messages[0] and "\n" not in messages[0]
    monkeypatch.setenv("TAF_SAMPLER_BACKEND", "cpp")
    with pytest.raises(RuntimeError, match="TAF_SAMPLER_BACKEND=cpp.*No module named"):
        EpisodeSampler(uneven_classes(8), 5, 1, 1, 0)


# ------------------------------------------------------------------------------------------------
# C++ == Python twin == the documented algorithm


@NEEDS_EXT
@pytest.mark.parametrize(("n_way", "n_shot", "n_query"), [(5, 1, 1), (5, 5, 1), (3, 2, 4), (1, 1, 1), (64, 1, 5)])
def test_cpp_and_python_episodes_identical(monkeypatch, n_way, n_shot, n_query):
    classes = uneven_classes(64)
    for seed in SEEDS:
        for start in (0, 977, 2**62):
            cpp = using(monkeypatch, "cpp", EpisodeSampler, classes, n_way, n_shot, n_query, seed)
            py = using(monkeypatch, "python", EpisodeSampler, classes, n_way, n_shot, n_query, seed)
            assert (cpp.backend, py.backend) == ("cpp", "python")
            for a, b in zip(cpp.episodes(start, 50), py.episodes(start, 50), strict=True):
                assert a.dtype == b.dtype == np.int64
                np.testing.assert_array_equal(a, b)


def test_backends_follow_the_documented_algorithm(backend):
    classes = uneven_classes(20, smallest=7, seed=3)
    for seed in (0, 99, 2**64 - 1):
        sampler = EpisodeSampler(classes, 5, 3, 2, seed)
        got_classes, got_support, got_query = sampler.episodes(40, 12)
        for e in range(12):
            want = spec_episode(classes, 5, 3, 2, seed, 40 + e)
            assert got_classes[e].tolist() == want[0]
            assert got_support[e].tolist() == want[1]
            assert got_query[e].tolist() == want[2]


@NEEDS_EXT
@pytest.mark.parametrize("train", [False, True])
def test_cpp_and_python_frames_and_crops_identical(monkeypatch, train):
    rng = np.random.default_rng(5)
    num_frames = np.concatenate([np.arange(1, 70), rng.integers(1, 5000, 500), [2**31 - 1]])
    keys = rng.integers(0, 2**63, num_frames.size, dtype=np.uint64) * np.uint64(2)
    for seed in SEEDS:
        for segments in (1, 3, 8, 16):
            for key_arg in (None, keys):
                cpp = using(monkeypatch, "cpp", frame_indices, num_frames, segments, train, seed, key_arg)
                py = using(monkeypatch, "python", frame_indices, num_frames, segments, train, seed, key_arg)
                np.testing.assert_array_equal(cpp, py)
        for resized, crop in ((257, 224), (256, 224), (224, 224), (10, 3)):
            cpp = using(monkeypatch, "cpp", crop_offsets, 300, resized, crop, train, seed, keys[:300])
            py = using(monkeypatch, "python", crop_offsets, 300, resized, crop, train, seed, keys[:300])
            np.testing.assert_array_equal(cpp, py)


def test_frames_and_crops_follow_the_documented_algorithm(backend):
    num_frames = [1, 5, 8, 9, 16, 20, 100, 257, 4093]
    keys = [3, 2**64 - 1, 0, 17, 2**40, 5, 6, 7, 8]
    for train in (False, True):
        got = frame_indices(num_frames, 8, train, 31, keys)
        assert got.tolist() == [spec_frames(n, 8, train, 31, k) for n, k in zip(num_frames, keys, strict=True)]
        crops = crop_offsets(len(keys), 257, 224, train, 31, keys)
        assert crops.tolist() == [spec_crop(257, 224, train, 31, k) for k in keys]


def test_rejected_draws_match(backend):
    """Ranges near 2**32 / 3 reject about a third of the 32-bit draws, exercising the retry path."""
    size = 1431655766  # 2**32 % size = size - 2, so draws below it are rejected
    attempts: list[int] = []
    want = [spec_frames(size, 1, True, 4, k, attempts) for k in range(200)]
    assert max(attempts) >= 2  # retries did happen, some more than once
    got = frame_indices(np.full(200, size), 1, True, 4, np.arange(200))
    assert got.tolist() == want
    attempts.clear()
    want = [spec_crop(size, 1, True, 9, k, attempts) for k in range(100)]
    assert max(attempts) >= 1
    assert crop_offsets(100, size, 1, True, 9, np.arange(100)).tolist() == want


# ------------------------------------------------------------------------------------------------
# Purity and validity


def test_episode_is_a_pure_function_of_seed_and_index(backend):
    classes = uneven_classes(30)
    sampler = EpisodeSampler(classes, 5, 2, 3, 2024)
    batch = sampler.episodes(100, 40)
    order = np.random.default_rng(0).permutation(40)
    for e in order:  # any call order, any object
        single = sampler.episode(100 + int(e))
        for part_batch, part_single in zip(batch, single, strict=True):
            np.testing.assert_array_equal(part_batch[e], part_single)
    again = EpisodeSampler(classes, 5, 2, 3, 2024).episodes(120, 20)  # resume at episode 120
    for a, b in zip(batch, again, strict=True):
        np.testing.assert_array_equal(a[20:], b)
    shipped = pickle.loads(pickle.dumps(sampler))  # as a DataLoader worker or another rank receives it
    for a, b in zip(batch, shipped.episodes(100, 40), strict=True):
        np.testing.assert_array_equal(a, b)
    other_seed = EpisodeSampler(classes, 5, 2, 3, 2025).episodes(100, 40)
    assert not np.array_equal(batch[0], other_seed[0])
    empty = sampler.episodes(7, 0)
    assert [part.shape for part in empty] == [(0, 5), (0, 5, 2), (0, 5, 3)]


def test_episodes_are_valid(backend):
    videos_per_class = uneven_classes(64, smallest=6)
    owner = {video: c for c, videos in enumerate(videos_per_class) for video in videos}
    n_way, n_shot, n_query = 5, 3, 3  # 6 = the smallest class: every video of it is drawn
    sampler = EpisodeSampler(videos_per_class, n_way, n_shot, n_query, 11)
    classes, support, query = sampler.episodes(0, 1000)
    assert classes.shape == (1000, n_way) and support.shape == (1000, n_way, n_shot)
    assert query.shape == (1000, n_way, n_query)
    assert all(arr.dtype == np.int64 and arr.flags.c_contiguous for arr in (classes, support, query))
    for e in range(1000):
        assert len(set(classes[e].tolist())) == n_way
        for c in range(n_way):
            videos = support[e, c].tolist() + query[e, c].tolist()
            assert len(set(videos)) == n_shot + n_query  # distinct, so support and query are disjoint
            assert {owner[v] for v in videos} == {classes[e, c]}


def test_class_and_video_frequencies_are_uniform(backend):
    num_classes, size, n_way, n_shot, n_query, episodes = 64, 10, 5, 1, 1, 20000
    videos_per_class = [list(range(c * size, (c + 1) * size)) for c in range(num_classes)]
    classes, support, query = EpisodeSampler(videos_per_class, n_way, n_shot, n_query, 77).episodes(0, episodes)

    def chi_square(counts: np.ndarray) -> float:
        expected = counts.sum() / counts.size
        return float(((counts - expected) ** 2 / expected).sum())

    def bound(dof: int) -> float:  # mean + 6 standard deviations of a chi-square with dof degrees
        return dof + 6 * (2 * dof) ** 0.5

    assert chi_square(np.bincount(classes.ravel(), minlength=num_classes)) < bound(num_classes - 1)
    assert chi_square(np.bincount(classes[:, 0], minlength=num_classes)) < bound(num_classes - 1)
    assert chi_square(np.bincount(classes[:, -1], minlength=num_classes)) < bound(num_classes - 1)
    within_class = np.stack([support[..., 0] % size, query[..., 0] % size])  # position inside its class
    assert chi_square(np.bincount(within_class[0].ravel(), minlength=size)) < bound(size - 1)
    assert chi_square(np.bincount(within_class[1].ravel(), minlength=size)) < bound(size - 1)


def test_large_class_lists_are_sampled_sparsely(backend):
    # one class of a million videos: the cost of an episode does not depend on the class size
    sampler = EpisodeSampler([list(range(10**6)), [10**6, 10**6 + 1]], 2, 1, 1, 3)
    classes, support, query = sampler.episodes(0, 200)
    big = np.where(classes == 0, support[..., 0], -1)
    assert (support[..., 0] != query[..., 0]).all() and len(set(big[big >= 0].tolist())) > 90


# ------------------------------------------------------------------------------------------------
# Frame indices and crop offsets: docs/method.md §1.2–§1.3 on hand-checked cases

EVAL_CASES = {
    1: [0, 0, 0, 0, 0, 0, 0, 0],
    5: [0, 0, 1, 2, 2, 3, 4, 4],  # tick 0.625
    8: [0, 1, 2, 3, 4, 5, 6, 7],
    16: [1, 3, 5, 7, 9, 11, 13, 15],
    20: [1, 3, 6, 8, 11, 13, 16, 18],  # tick 2.5
    100: [6, 18, 31, 43, 56, 68, 81, 93],  # tick 12.5
}


def test_eval_frame_indices_hand_checked(backend):
    got = frame_indices(np.array(list(EVAL_CASES)), 8)
    assert got.dtype == np.int64 and got.shape == (len(EVAL_CASES), 8)
    assert got.tolist() == list(EVAL_CASES.values())
    # train falls back to the centres when a video has no more frames than segments
    assert frame_indices([1, 5, 8], 8, train=True, seed=3).tolist() == [EVAL_CASES[n] for n in (1, 5, 8)]
    assert frame_indices(7, 3).tolist() == [[1, 3, 5]]  # a single count; tick 7/3


def test_train_frame_indices_stay_in_their_segment(backend):
    num_frames = np.array([9, 16, 17, 20, 23, 100, 301])
    seen = {n: set() for n in num_frames.tolist()}
    for seed in range(60):
        got = frame_indices(num_frames, 8, train=True, seed=seed)
        for n, row in zip(num_frames.tolist(), got.tolist(), strict=True):
            avg = n // 8
            assert all(s * avg <= idx < (s + 1) * avg for s, idx in enumerate(row)), (n, row)
            seen[n].update(idx - s * avg for s, idx in enumerate(row))
    assert seen[20] == {0, 1} and seen[23] == {0, 1}  # avg 2: both offsets occur
    assert seen[100] == set(range(12))  # avg 12: every offset occurs
    assert seen[9] == {0}  # avg 1: the only choice


def test_frame_indices_follow_keys_not_positions(backend):
    num_frames = np.array([40, 90, 33, 250, 64])
    keys = np.array([11, 2**64 - 2, 5, 12, 2**33], dtype=np.uint64)
    whole = frame_indices(num_frames, 8, True, 5, keys)
    order = np.array([3, 0, 4, 2, 1])
    np.testing.assert_array_equal(frame_indices(num_frames[order], 8, True, 5, keys[order]), whole[order])
    np.testing.assert_array_equal(frame_indices(num_frames[2:4], 8, True, 5, keys[2:4]), whole[2:4])
    # without keys a video's stream is its position
    np.testing.assert_array_equal(
        frame_indices(num_frames, 8, True, 5), frame_indices(num_frames, 8, True, 5, range(5))
    )
    assert not np.array_equal(frame_indices(num_frames, 8, True, 6, keys), whole)


def test_crop_offsets_eval_match_torchvision_center_crop(backend):
    functional = pytest.importorskip("torchvision.transforms.functional")
    torch = pytest.importorskip("torch")
    for resized, crop in ((257, 224), (256, 224), (259, 224), (226, 224), (224, 224), (9, 4)):
        image = torch.arange(resized * resized).reshape(1, resized, resized)
        corner = int(functional.center_crop(image, [crop, crop])[0, 0, 0])
        want = [corner // resized, corner % resized]
        assert crop_offsets(3, resized, crop).tolist() == [want] * 3, (resized, crop)


def test_crop_offsets_train_cover_the_range(backend):
    got = crop_offsets(4000, 10, 7, train=True, seed=8)
    assert got.shape == (4000, 2) and got.dtype == np.int64
    assert got.min() == 0 and got.max() == 3
    for column in got.T:
        counts = np.bincount(column, minlength=4)
        assert (np.abs(counts - 1000) < 150).all(), counts
    assert not np.array_equal(got[:, 0], got[:, 1])
    assert (crop_offsets(5, 224, 224, train=True, seed=8) == 0).all()
    assert crop_offsets(0, 257, 224, train=True).shape == (0, 2)


# ------------------------------------------------------------------------------------------------
# Refused input: every message names the offending value


def test_class_with_too_few_videos_is_refused(backend):
    with pytest.raises(ValueError) as info:
        EpisodeSampler([[0, 1, 2], [3], [4, 5, 6], [], [7, 8]], 2, 1, 2, 0)
    message = str(info.value)
    assert "1 + 2 = 3" in message and "class 1 has 1" in message and "class 3 has 0" in message
    assert "class 4 has 2" in message and "class 0" not in message


@pytest.mark.parametrize(
    ("args", "error", "needle"),
    [
        (([[0, 1], [2, 3]], 3, 1, 1, 0), ValueError, "n_way = 3 is larger than the number of classes (2)"),
        (([], 1, 1, 1, 0), ValueError, "number of classes (0)"),
        (([[0, 1], [2, 3]], 0, 1, 1, 0), ValueError, "n_way must be in [1, 2147483647], got 0"),
        (([[0, 1], [2, 3]], 2, 0, 1, 0), ValueError, "n_shot must be in [1, 2147483647], got 0"),
        (([[0, 1], [2, 3]], 2, 1, 0, 0), ValueError, "n_query must be in [1, 2147483647], got 0"),
        (([[0, 1], [2, 3]], 2, 1, -4, 0), ValueError, "got -4"),
        (([[0, 1], [2, 3]], 2.0, 1, 1, 0), TypeError, "n_way must be an int, got float 2.0"),
        (([[0, 1], [2, 3]], True, 1, 1, 0), TypeError, "n_way must be an int, got bool True"),
        (([[0, 1], [2, 3]], 2, 1, 1, -1), ValueError, "seed must be in [0, 2**64), got -1"),
        (([[0, 1], [2, 3]], 2, 1, 1, 2**64), ValueError, f"got {2**64}"),
        (([[0, 1], [2, 3.5, 4]], 2, 1, 1, 0), TypeError, "videos_per_class[1][1] = 3.5 is not an int"),
        (([[0, 1], [2, "a"]], 2, 1, 1, 0), TypeError, "videos_per_class[1][1] = 'a' is not an int (str)"),
        (([[0, 1], [True, False]], 2, 1, 1, 0), TypeError, "videos_per_class[1][0] = True"),
        (([[0, 1], [2, None]], 2, 1, 1, 0), TypeError, "videos_per_class[1][1] = None"),
        (([[0, 1], [2, -3]], 2, 1, 1, 0), ValueError, "videos_per_class[1][1] = -3"),
        (([[0, 1], [2, 2**70]], 2, 1, 1, 0), ValueError, f"got {2**70}"),
        (([[0, 1], [5, 6, 5]], 2, 1, 1, 0), ValueError, "videos_per_class[1] lists video(s) more than once: 5"),
        (([[0, 1], 7], 2, 1, 1, 0), TypeError, "videos_per_class[1] must be a list of video indices, got int 7"),
        (("ab", 1, 1, 1, 0), TypeError, "got str"),
    ],
)
def test_bad_sampler_arguments_are_refused(backend, args, error, needle):
    with pytest.raises(error) as info:
        EpisodeSampler(*args)
    assert needle in str(info.value)


def test_bad_episode_indices_are_refused(backend):
    sampler = EpisodeSampler([[0, 1], [2, 3]], 2, 1, 1, 0)
    with pytest.raises(ValueError, match="index must be in .*got -1"):
        sampler.episode(-1)
    with pytest.raises(TypeError, match="index must be an int, got float 1.5"):
        sampler.episode(1.5)
    with pytest.raises(ValueError, match="count must be in .*got -2"):
        sampler.episodes(0, -2)
    with pytest.raises(ValueError, match="start must be in .*got -5"):
        sampler.episodes(-5, 1)
    with pytest.raises(ValueError, match=f"index must be in \\[0, {2**63 - 2}\\], got {2**63 - 1}"):
        sampler.episode(2**63 - 1)  # the last int64: episode index..index+1 would leave the range
    for name in ("n_way", "n_shot", "n_query", "seed"):  # checked against the classes once: read-only
        with pytest.raises(AttributeError):
            setattr(sampler, name, 3)


def test_bad_frame_counts_are_refused(backend):
    with pytest.raises(ValueError) as info:
        frame_indices([10, 0, 5, -2], 8)
    assert "num_frames[1] = 0" in str(info.value) and "num_frames[3] = -2" in str(info.value)
    with pytest.raises(TypeError, match=r"num_frames\[1\] = 10.5 is not an int"):
        frame_indices([4, 10.5])
    with pytest.raises(ValueError, match=r"num_frames must be 1-D, got shape \(2, 2\)"):
        frame_indices([[4, 5], [6, 7]])
    with pytest.raises(ValueError, match=r"num_frames must be a 1-D sequence of ints"):
        frame_indices([[1], [2, 3]])
    with pytest.raises(ValueError, match=r"num_frames\[0\] must be in \[1, 2147483647\], got 2361183241434822606848"):
        frame_indices([2**71])
    with pytest.raises(ValueError, match="num_segments must be in .*got 0"):
        frame_indices([10], 0)
    with pytest.raises(TypeError, match="train must be a bool, got str 'yes'"):
        frame_indices([10], 8, "yes")
    with pytest.raises(ValueError, match="seed must be in .*got -3"):
        frame_indices([10], 8, True, -3)
    with pytest.raises(ValueError, match=r"keys must have one entry per video \(2\), got 3"):
        frame_indices([10, 20], 8, True, 0, [1, 2, 3])
    with pytest.raises(ValueError, match=r"keys\[1\] = -1"):
        frame_indices([10, 20], 8, True, 0, [1, -1])


def test_bad_crop_arguments_are_refused(backend):
    with pytest.raises(ValueError, match=r"crop must be in \[1, 257\], got 300"):
        crop_offsets(4, 257, 300)
    with pytest.raises(ValueError, match="resized must be in .*got 0"):
        crop_offsets(4, 0, 1)
    with pytest.raises(ValueError, match="count must be in .*got -1"):
        crop_offsets(-1, 257, 224)
    with pytest.raises(ValueError, match=r"keys must have one entry per video \(4\), got 2"):
        crop_offsets(4, 257, 224, True, 0, [1, 2])


@NEEDS_EXT
def test_bindings_validate_and_name_their_arguments():
    ext = sampler_module._ext
    offsets = np.array([0, 2, 4], dtype=np.int64)
    videos = np.arange(4, dtype=np.int64)
    with pytest.raises(
        TypeError, match="offsets must be a C-contiguous dtype\\('int64'\\) array, got dtype\\('float64'\\)"
    ):
        ext.sample_episodes(offsets.astype(float), videos, 2, 1, 1, 0, 0, 1)
    with pytest.raises(ValueError, match=r"offsets must be non-decreasing, got offsets\[2\] = 1"):
        ext.sample_episodes(np.array([0, 3, 1], dtype=np.int64), videos, 1, 1, 1, 0, 0, 1)
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal len\(videos\) = 3, got 4"):
        ext.sample_episodes(offsets, videos[:3], 1, 1, 1, 0, 0, 1)
    with pytest.raises(ValueError, match=r"n_way must be in \[1, 2\], got 3"):
        ext.sample_episodes(offsets, videos, 3, 1, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="n_shot \\+ n_query = 3 videos: class 0 has 2, class 1 has 2"):
        ext.sample_episodes(offsets, videos, 2, 2, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="seed must be in \\[0, 2\\*\\*64\\), got -1"):
        ext.sample_episodes(offsets, videos, 2, 1, 1, -1, 0, 1)
    with pytest.raises(TypeError, match="count must be an int, got float 1.0"):
        ext.sample_episodes(offsets, videos, 2, 1, 1, 0, 0, 1.0)
    with pytest.raises(TypeError, match="videos must be a numpy array, got list"):
        ext.sample_episodes(offsets, [0, 1, 2, 3], 2, 1, 1, 0, 0, 1)
    with pytest.raises(ValueError, match=r"num_frames\[1\] must be in \[1, 2147483647\], got 0"):
        ext.frame_indices(np.array([5, 0], dtype=np.int64), 8, False, 0, None)
    with pytest.raises(
        TypeError, match="keys must be a C-contiguous dtype\\('uint64'\\) array, got dtype\\('int64'\\)"
    ):
        ext.frame_indices(np.array([5, 9], dtype=np.int64), 8, True, 0, np.array([1, 2]))
    with pytest.raises(ValueError, match="keys must have length 2, got 1"):
        ext.frame_indices(np.array([5, 9], dtype=np.int64), 8, True, 0, np.array([1], dtype=np.uint64))
    with pytest.raises(TypeError, match="train must be a bool, got int 1"):
        ext.frame_indices(np.array([5], dtype=np.int64), 8, 1, 0, None)
    with pytest.raises(ValueError, match=r"crop must be in \[1, 257\], got 300"):
        ext.crop_offsets(3, 257, 300, False, 0, None)
