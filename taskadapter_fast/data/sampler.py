"""Episode sampling, TSN frame indices and crop offsets: the C++ core and its pure-Python twin.

Every random number here is a pure function of (seed, stream, key, slot): episode ``i`` can be
made by any worker or distributed rank on its own, a run can resume at episode ``i``, and a list
of test episodes can be replayed. The C++ extension ``taskadapter_fast._episodes`` (csrc/) and
the numpy twin below compute the same algorithm bit for bit; the twin runs only when the
extension is missing (with a one-line warning) or when ``TAF_SAMPLER_BACKEND=python`` forces it
(``TAF_SAMPLER_BACKEND=cpp`` forces the extension and fails if it is missing).

The algorithm (all arithmetic on unsigned 64-bit integers, modulo 2**64)::

    G = 0x9E3779B97F4A7C15
    mix64(z):  z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31
    stream_key(seed, salt, key) = mix64(mix64(seed ^ salt) + key * G)
    word(k, slot, attempt)      = mix64(k + G * (1 + slot + attempt * 2**32))
    bounded(k, slot, range):    # unbiased integer in [0, range), Lemire's multiply-shift on 32 bits
        for attempt = 0, 1, ...: m = (word(k, slot, attempt) >> 32) * range
                                 if m % 2**32 >= (2**32 - range) % range: return m >> 32

    salts: episodes 0x5441462D45504953 ("TAF-EPIS"), frames 0x5441462D4652414D ("TAF-FRAM"),
           crops 0x5441462D43524F50 ("TAF-CROP")

    episode i (C classes, K shots, Q queries, D = K + Q), k = stream_key(seed, episodes salt, i):
        a = [0 .. num_classes); for j < C: r = j + bounded(k, j, num_classes - j); swap a[j], a[r]
        classes = a[:C]                                  # in drawn order
        for class position c, n = its number of videos:
            b = [0 .. n); for m < D: r = m + bounded(k, C + c * D + m, n - m); swap b[m], b[r]
            support[c] = videos[class][b[:K]], query[c] = videos[class][b[K:D]]

    frame indices of a video with n frames, T segments, key = keys[v] (or its position v):
        train and n > T: avg = n // T; idx_s = s * avg + bounded(stream_key(seed, frames salt, key), s, avg)
        otherwise:       tick = n / T; idx_s = int(tick / 2 + tick * s)   (IEEE double, no fused multiply-add)

    crop offsets (top, left) of video key, span = resized - crop + 1:
        train: k = stream_key(seed, crops salt, key); (bounded(k, 0, span), bounded(k, 1, span))
        eval:  both int(round((resized - crop) / 2.0)), Python's round as torchvision's CenterCrop uses it

Both partial Fisher-Yates shuffles are computed sparsely (only moved positions are stored), so
an episode costs O(C**2 + C * D**2) whatever the dataset size; the result equals the dense shuffle.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence

import numpy as np

try:
    from taskadapter_fast import _episodes as _ext

    _EXT_ERROR: str | None = None
except ImportError as exc:  # not built (TAF_BUILD_EXT=0) or built for another interpreter
    _ext = None
    _EXT_ERROR = str(exc)

__all__ = ["EpisodeSampler", "frame_indices", "crop_offsets"]

BACKEND_ENV = "TAF_SAMPLER_BACKEND"

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX_A = _U64(0xBF58476D1CE4E5B9)
_MIX_B = _U64(0x94D049BB133111EB)
_SALT_EPISODES = 0x5441462D45504953
_SALT_FRAMES = 0x5441462D4652414D
_SALT_CROPS = 0x5441462D43524F50
_LOW32 = _U64(0xFFFFFFFF)
_TWO32 = _U64(1 << 32)
_SHIFT_HI = _U64(32)
# Ranges are drawn from 32 random bits; csrc/rng.h has the same limit.
_MAX_RANGE = (1 << 31) - 1
_MAX_U64 = (1 << 64) - 1
_MAX_I64 = (1 << 63) - 1
_MAX_LISTED = 20

_warned_missing_ext = False


# ----------------------------------------------------------------------------------------------
# Backend choice


def _backend() -> str:
    """The backend for this call: the extension unless TAF_SAMPLER_BACKEND says otherwise."""
    global _warned_missing_ext
    choice = os.environ.get(BACKEND_ENV, "").strip().lower()
    if choice not in ("", "cpp", "python"):
        raise ValueError(f"{BACKEND_ENV} must be 'cpp' or 'python' (or unset), got {choice!r}")
    if choice == "python":
        return "python"
    if _ext is not None:
        return "cpp"
    if choice == "cpp":
        raise RuntimeError(
            f"{BACKEND_ENV}=cpp but the C++ extension taskadapter_fast._episodes is not available ({_EXT_ERROR}); "
            "build it with `pip install .` (TAF_BUILD_EXT=1, the default)"
        )
    if not _warned_missing_ext:
        _warned_missing_ext = True
        warnings.warn(
            "taskadapter_fast._episodes (C++) is not built; using the slower bit-identical Python sampler",
            RuntimeWarning,
            stacklevel=3,
        )
    return "python"


# ----------------------------------------------------------------------------------------------
# Argument checks shared by both backends


def _check_int(name: str, value, minimum: int, maximum: int) -> int:
    if type(value) is not int:  # the common case skips the slow abstract-class check
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        value = int(value)
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return value


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) <= _MAX_U64:
        raise ValueError(f"seed must be in [0, 2**64), got {int(seed)}")
    return int(seed)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def format_listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown}, ... ({len(items)} in all)"


def _int_array(name: str, values, minimum: int, maximum: int, dtype) -> np.ndarray:
    """values as a 1-D array of `dtype`, every element an int in [minimum, maximum]."""
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nesting, e.g. [[1], [2, 3]]
        raise ValueError(f"{name} must be a 1-D sequence of ints ({error})") from None
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=dtype)
    if array.dtype.kind not in "iu":
        # Scan what the caller gave: numpy turns [2, "a"] into strings and [1, 2**64 - 1] into floats.
        items = list(values) if isinstance(values, Sequence) else array.tolist()
        for position, item in enumerate(items):
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
                raise TypeError(f"{name}[{position}] = {item!r} is not an int ({type(item).__name__})")
            if not minimum <= int(item) <= maximum:
                raise ValueError(f"{name}[{position}] must be in [{minimum}, {maximum}], got {int(item)}")
        return np.array([int(item) for item in items], dtype=dtype)
    # Bounds clipped to the array's own dtype, so the comparisons never overflow.
    info = np.iinfo(array.dtype)
    lowest, highest = max(minimum, int(info.min)), min(maximum, int(info.max))
    bad_positions = np.flatnonzero((array < lowest) | (array > highest))
    if bad_positions.size:
        listed = format_listing([f"{name}[{p}] = {array[p]}" for p in bad_positions.tolist()])
        raise ValueError(f"{name} must be in [{minimum}, {maximum}]; got {listed}")
    return np.ascontiguousarray(array, dtype=dtype)


def _keys_array(keys, count: int) -> np.ndarray | None:
    if keys is None:
        return None
    keys = _int_array("keys", keys, 0, _MAX_U64, np.uint64)
    if keys.shape[0] != count:
        raise ValueError(f"keys must have one entry per video ({count}), got {keys.shape[0]}")
    return keys


# ----------------------------------------------------------------------------------------------
# The Python twin of csrc/ (vectorised with numpy; see the module docstring for the algorithm)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> _U64(30))) * _MIX_A
    z = (z ^ (z >> _U64(27))) * _MIX_B
    return z ^ (z >> _U64(31))


def _stream_keys(seed: int, salt: int, keys: np.ndarray) -> np.ndarray:
    base = _mix64(np.array([seed ^ salt], dtype=np.uint64))
    return _mix64(base + keys.astype(np.uint64) * _GOLDEN)


def _bounded(keys: np.ndarray, slots: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Unbiased integers in [0, ranges) for 1-D uint64 keys, slots, ranges of one length."""
    out = np.empty(keys.shape[0], dtype=np.uint64)
    threshold = (_TWO32 - ranges) % ranges
    todo = np.arange(keys.shape[0])
    attempt = 0
    while todo.size:
        counters = slots[todo] + _U64(1 + (attempt << 32))
        drawn = (_mix64(keys[todo] + _GOLDEN * counters) >> _SHIFT_HI) * ranges[todo]
        accepted = (drawn & _LOW32) >= threshold[todo]
        out[todo[accepted]] = drawn[accepted] >> _SHIFT_HI
        todo = todo[~accepted]
        attempt += 1
    return out


def _partial_shuffles(keys: np.ndarray, slot_base: np.ndarray, sizes: np.ndarray, draws: int) -> np.ndarray:
    """[R, draws] uint64: the first `draws` entries of a Fisher-Yates shuffle of [0, sizes[r]) per row."""
    rows = keys.shape[0]
    out = np.empty((rows, draws), dtype=np.uint64)
    moved_pos = np.empty((rows, draws), dtype=np.uint64)  # moved_pos[:, j] now holds moved_val[:, j]
    moved_val = np.empty((rows, draws), dtype=np.uint64)
    for m in range(draws):
        step = _U64(m)
        r = step + _bounded(keys, slot_base + step, sizes - step)
        at_r = r.copy()
        at_m = np.full(rows, step, dtype=np.uint64)
        for j in range(m):  # later moves overwrite earlier ones
            at_r = np.where(moved_pos[:, j] == r, moved_val[:, j], at_r)
            at_m = np.where(moved_pos[:, j] == step, moved_val[:, j], at_m)
        out[:, m] = at_r
        moved_pos[:, m] = r
        moved_val[:, m] = at_m
    return out


def _py_sample_episodes(
    offsets: np.ndarray, videos: np.ndarray, n_way: int, n_shot: int, n_query: int, seed: int, start: int, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    per_class = n_shot + n_query
    num_classes = offsets.shape[0] - 1
    keys = _stream_keys(seed, _SALT_EPISODES, np.arange(count, dtype=np.uint64) + _U64(start))
    classes = _partial_shuffles(
        keys, np.zeros(count, dtype=np.uint64), np.full(count, num_classes, dtype=np.uint64), n_way
    ).astype(np.int64)  # [E, C]
    flat_classes = classes.reshape(-1)  # [E*C]
    slot_base = _U64(n_way) + np.tile(np.arange(n_way, dtype=np.uint64) * _U64(per_class), count)
    sizes = (offsets[flat_classes + 1] - offsets[flat_classes]).astype(np.uint64)
    picks = _partial_shuffles(np.repeat(keys, n_way), slot_base, sizes, per_class).astype(np.int64)  # [E*C, D]
    chosen = videos[offsets[flat_classes][:, None] + picks].reshape(count, n_way, per_class)
    return classes, np.ascontiguousarray(chosen[:, :, :n_shot]), np.ascontiguousarray(chosen[:, :, n_shot:])


def _py_frame_indices(
    num_frames: np.ndarray, num_segments: int, train: bool, seed: int, keys: np.ndarray | None
) -> np.ndarray:
    out = np.empty((num_frames.shape[0], num_segments), dtype=np.int64)
    segments = np.arange(num_segments, dtype=np.int64)
    random_rows = (num_frames > num_segments) if train else np.zeros(num_frames.shape[0], dtype=bool)
    centre_rows = ~random_rows
    tick = num_frames[centre_rows].astype(np.float64)[:, None] / float(num_segments)  # [V', 1]
    out[centre_rows] = (tick / 2.0 + tick * segments.astype(np.float64)).astype(np.int64)
    if random_rows.any():
        avg = num_frames[random_rows] // num_segments  # [V'']
        video_keys = keys[random_rows] if keys is not None else np.flatnonzero(random_rows).astype(np.uint64)
        stream = _stream_keys(seed, _SALT_FRAMES, video_keys)
        offsets = _bounded(
            np.repeat(stream, num_segments),
            np.tile(segments.astype(np.uint64), avg.shape[0]),
            np.repeat(avg.astype(np.uint64), num_segments),
        ).reshape(-1, num_segments)
        out[random_rows] = segments * avg[:, None] + offsets.astype(np.int64)
    return out


def _py_crop_offsets(
    count: int, resized: int, crop: int, train: bool, seed: int, keys: np.ndarray | None
) -> np.ndarray:
    if not train:
        return np.full((count, 2), int(round((resized - crop) / 2.0)), dtype=np.int64)
    stream = _stream_keys(seed, _SALT_CROPS, keys if keys is not None else np.arange(count, dtype=np.uint64))
    span = np.full(count, resized - crop + 1, dtype=np.uint64)
    top = _bounded(stream, np.zeros(count, dtype=np.uint64), span)
    left = _bounded(stream, np.ones(count, dtype=np.uint64), span)
    return np.stack([top, left], axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Public API


class EpisodeSampler:
    """C-way K-shot episodes with Q queries per class, episode ``i`` a pure function of (seed, i).

    Args:
        videos_per_class: one list of video indices (ints >= 0, distinct within a class) per class.
        n_way: classes per episode (C). n_shot: support videos per class (K).
        n_query: query videos per class (Q). seed: int in [0, 2**64).

    ``episode(i)`` returns ``(classes [C], support [C, K], query [C, Q])`` int64 numpy arrays:
    classes in drawn order (query labels 0..C-1 follow it), then K + Q distinct videos of each
    class, the first K support. ``episodes(start, count)`` stacks episodes start..start+count-1.
    ``backend`` is ``"cpp"`` or ``"python"`` (both give the same episodes).
    """

    def __init__(self, videos_per_class: Sequence[Sequence[int]], n_way: int, n_shot: int, n_query: int, seed: int):
        # Read-only (properties below): they were checked against the classes here, once.
        self._n_way = _check_int("n_way", n_way, 1, _MAX_RANGE)
        self._n_shot = _check_int("n_shot", n_shot, 1, _MAX_RANGE)
        self._n_query = _check_int("n_query", n_query, 1, _MAX_RANGE)
        self._seed = _check_seed(seed)
        per_class = self.n_shot + self.n_query
        if self.n_way * (1 + per_class) > _MAX_RANGE:
            raise ValueError(
                f"n_way * (1 + n_shot + n_query) must stay below 2**31, got n_way = {self.n_way}, "
                f"n_shot + n_query = {per_class}"
            )
        if isinstance(videos_per_class, (str, bytes)) or not isinstance(videos_per_class, Sequence | np.ndarray):
            raise TypeError(
                f"videos_per_class must be a list of lists of video indices, got {type(videos_per_class).__name__}"
            )
        class_videos = [self._class_array(c, videos) for c, videos in enumerate(videos_per_class)]
        self.num_classes = len(class_videos)
        if self.n_way > self.num_classes:
            raise ValueError(f"n_way = {self.n_way} is larger than the number of classes ({self.num_classes})")
        sizes = np.array([v.shape[0] for v in class_videos], dtype=np.int64)
        too_small = np.flatnonzero(sizes < per_class)
        if too_small.size:
            listed = format_listing([f"class {c} has {sizes[c]}" for c in too_small.tolist()])
            raise ValueError(
                f"every class needs at least n_shot + n_query = {self.n_shot} + {self.n_query} = {per_class} "
                f"videos; {too_small.size} class(es) have fewer: {listed}"
            )
        too_big = np.flatnonzero(sizes > _MAX_RANGE)
        if too_big.size:
            c = int(too_big[0])
            raise ValueError(f"class {c} has {sizes[c]} videos, more than the supported {_MAX_RANGE}")
        self._offsets = np.zeros(self.num_classes + 1, dtype=np.int64)  # CSR: class c owns videos[o[c]:o[c+1]]
        np.cumsum(sizes, out=self._offsets[1:])
        self._videos = np.concatenate(class_videos) if class_videos else np.zeros(0, dtype=np.int64)
        self.backend = _backend()

    @staticmethod
    def _class_array(c: int, videos) -> np.ndarray:
        if isinstance(videos, (str, bytes)) or not isinstance(videos, Sequence | np.ndarray | range):
            raise TypeError(
                f"videos_per_class[{c}] must be a list of video indices, got {type(videos).__name__} {videos!r}"
            )
        array = _int_array(f"videos_per_class[{c}]", videos, 0, _MAX_I64, np.int64)
        unique, counts = np.unique(array, return_counts=True)
        if (counts > 1).any():
            repeated = format_listing([str(v) for v in unique[counts > 1].tolist()])
            raise ValueError(f"videos_per_class[{c}] lists video(s) more than once: {repeated}")
        return array

    n_way = property(lambda self: self._n_way, doc="classes per episode (C)")
    n_shot = property(lambda self: self._n_shot, doc="support videos per class (K)")
    n_query = property(lambda self: self._n_query, doc="query videos per class (Q)")
    seed = property(lambda self: self._seed, doc="the episode stream's seed")

    def episode(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episode ``index`` -> (classes [C], support [C, K], query [C, Q]), int64."""
        index = _check_int("index", index, 0, _MAX_I64 - 1)  # episodes index..index+1 must stay in int64
        classes, support, query = self._sample(index, 1)
        return classes[0], support[0], query[0]

    def episodes(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episodes start..start+count-1 -> (classes [count, C], support [count, C, K], query [count, C, Q])."""
        start = _check_int("start", start, 0, _MAX_I64)
        count = _check_int("count", count, 0, _MAX_I64 - start)
        return self._sample(start, count)

    def _sample(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.backend == "cpp":
            return _ext.sample_episodes(
                self._offsets, self._videos, self.n_way, self.n_shot, self.n_query, self.seed, start, count
            )
        return _py_sample_episodes(
            self._offsets, self._videos, self.n_way, self.n_shot, self.n_query, self.seed, start, count
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler(num_classes={self.num_classes}, n_way={self.n_way}, n_shot={self.n_shot}, "
            f"n_query={self.n_query}, seed={self.seed}, backend={self.backend!r})"
        )


def frame_indices(num_frames, num_segments: int = 8, train: bool = False, seed: int = 0, keys=None) -> np.ndarray:
    """TSN frame indices (docs/method.md §1.2), 0-based, for a batch of videos.

    Args:
        num_frames: (V,) int frame counts, each >= 1 (a single int is treated as V = 1).
        num_segments: T. train: random offset inside each segment when n > T, else segment centres.
        seed: int in [0, 2**64).
        keys: optional (V,) ints in [0, 2**64): the random stream of each video (default: its position).
            Pass keys derived from the video's identity (e.g. episode index * videos per episode +
            position in the episode) so its indices do not depend on which worker computes them.

    Returns:
        [V, T] int64 array.
    """
    num_frames = _int_array("num_frames", num_frames, 1, _MAX_RANGE, np.int64)
    num_segments = _check_int("num_segments", num_segments, 1, _MAX_RANGE)
    train = _check_bool("train", train)
    seed = _check_seed(seed)
    keys = _keys_array(keys, num_frames.shape[0])
    if _backend() == "cpp":
        return _ext.frame_indices(num_frames, num_segments, train, seed, keys)
    return _py_frame_indices(num_frames, num_segments, train, seed, keys)


def crop_offsets(count: int, resized: int, crop: int, train: bool = False, seed: int = 0, keys=None) -> np.ndarray:
    """(top, left) crop offsets for `count` videos resized to a `resized` square and cropped to `crop`.

    Train: uniform in [0, resized - crop] per video (RandomCrop); eval: the centre, as torchvision's
    CenterCrop computes it. seed and keys as in :func:`frame_indices`. Returns [count, 2] int64.
    """
    count = _check_int("count", count, 0, _MAX_I64 // 2)
    resized = _check_int("resized", resized, 1, _MAX_RANGE - 1)
    crop = _check_int("crop", crop, 1, resized)
    train = _check_bool("train", train)
    seed = _check_seed(seed)
    keys = _keys_array(keys, count)
    if _backend() == "cpp":
        return _ext.crop_offsets(count, resized, crop, train, seed, keys)
    return _py_crop_offsets(count, resized, crop, train, seed, keys)
