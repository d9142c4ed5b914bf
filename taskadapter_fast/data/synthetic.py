"""The built-in synthetic dataset: procedurally rendered shape videos, small enough for tests and demos.

Twenty classes of one bright shape (square, circle, triangle, star, cross) that moves, grows,
rotates or fades over a noisy, textured background with small moving distractor shapes. As in
SSv2, some classes differ only by temporal order — "moving a square from left to right" is
"moving a square from right to left" played backwards, "a circle growing" is "a circle shrinking"
backwards — and some only by appearance ("moving a square ..." vs "moving a circle ...").
Train/val/test is a CLASS split, 10/5/5, each split holding order pairs and appearance pairs.
Each class has a name and three sub-action stages of its own, written as the official YAML corpus.

Layout of the dataset folder:
    dataset.json                       parameters, classes per split, every video's seed and length
    train.txt, val.txt, test.txt       official lists: `frames/<split>/<class>/<id> <num frames> <label id>`
    corpus.yaml                        sub-actions, official YAML format (docs/method.md §4.1)
    frames/<split>/<class>/<id>/img_00001.jpg ...   JPEG frame folders (4:4:4, quality 95)
    videos/<split>/<class>/<id>.webm   the same frames as VP9 webm (folder-per-class layout)

Everything is a pure function of the parameters: the same seed gives the same pixels and, with
this FFmpeg build, the same bytes (bit-exact muxing, single-threaded encoding). The dataset is
written once into a cache folder, atomically (a temporary folder renamed into place), so an
interrupted run never leaves half a dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._lock import FileLock, LockHeld

FORMAT_VERSION = 1  # bump when rendering or layout changes, so cached datasets are not reused
SPLITS = ("train", "val", "test")
FRAME_RATE = 12  # frames per second written into the webm files (SSv2's rate)


@dataclass(frozen=True)
class SyntheticClass:
    """One class: a shape, a motion, and whether the motion plays backwards."""

    name: str
    shape: str  # "square" | "circle" | "triangle" | "star" | "cross"
    motion: str  # "left_to_right" | "upwards" | "grow" | "rotate_clockwise" | "fade_in"
    reverse: bool  # True: the forward rendering played backwards
    split: str

    @property
    def forward(self) -> SyntheticClass:
        """The same class played forwards (itself when it is not reversed)."""
        return SyntheticClass(self.name, self.shape, self.motion, False, self.split) if self.reverse else self


def _cls(name: str, shape: str, motion: str, reverse: bool, split: str) -> SyntheticClass:
    return SyntheticClass(name, shape, motion, reverse, split)


SYNTHETIC_CLASSES: tuple[SyntheticClass, ...] = (
    _cls("moving a square from left to right", "square", "left_to_right", False, "train"),
    _cls("moving a square from right to left", "square", "left_to_right", True, "train"),
    _cls("moving a circle from left to right", "circle", "left_to_right", False, "train"),
    _cls("a circle growing", "circle", "grow", False, "train"),
    _cls("a circle shrinking", "circle", "grow", True, "train"),
    _cls("rotating a triangle clockwise", "triangle", "rotate_clockwise", False, "train"),
    _cls("rotating a triangle counterclockwise", "triangle", "rotate_clockwise", True, "train"),
    _cls("a triangle growing", "triangle", "grow", False, "train"),
    _cls("a star appearing", "star", "fade_in", False, "train"),
    _cls("a star disappearing", "star", "fade_in", True, "train"),
    _cls("moving a circle up", "circle", "upwards", False, "val"),
    _cls("moving a circle down", "circle", "upwards", True, "val"),
    _cls("moving a square up", "square", "upwards", False, "val"),
    _cls("a square growing", "square", "grow", False, "val"),
    _cls("a square shrinking", "square", "grow", True, "val"),
    _cls("moving a triangle from left to right", "triangle", "left_to_right", False, "test"),
    _cls("moving a triangle from right to left", "triangle", "left_to_right", True, "test"),
    _cls("moving a cross from left to right", "cross", "left_to_right", False, "test"),
    _cls("rotating a cross clockwise", "cross", "rotate_clockwise", False, "test"),
    _cls("rotating a cross counterclockwise", "cross", "rotate_clockwise", True, "test"),
)

# Three stages (beginning, process, end) of each motion played forwards and backwards.
_STAGES = {
    ("left_to_right", False): (
        "a {shape} rests near the left edge",
        "the {shape} slides across the middle towards the right",
        "the {shape} stops near the right edge",
    ),
    ("left_to_right", True): (
        "a {shape} rests near the right edge",
        "the {shape} slides across the middle towards the left",
        "the {shape} stops near the left edge",
    ),
    ("upwards", False): (
        "a {shape} sits near the bottom",
        "the {shape} rises through the middle",
        "the {shape} ends near the top",
    ),
    ("upwards", True): (
        "a {shape} sits near the top",
        "the {shape} sinks through the middle",
        "the {shape} ends near the bottom",
    ),
    ("grow", False): (
        "a small {shape} is in the scene",
        "the {shape} expands steadily",
        "the {shape} is large and fills much of the frame",
    ),
    ("grow", True): (
        "a large {shape} fills much of the frame",
        "the {shape} contracts steadily",
        "the {shape} ends small",
    ),
    ("rotate_clockwise", False): (
        "a {shape} is still at its starting angle",
        "the {shape} turns clockwise",
        "the {shape} comes to rest turned to the right",
    ),
    ("rotate_clockwise", True): (
        "a {shape} is still at its starting angle",
        "the {shape} turns counterclockwise",
        "the {shape} comes to rest turned to the left",
    ),
    ("fade_in", False): (
        "only the background is visible",
        "a {shape} slowly becomes visible",
        "the {shape} is fully visible",
    ),
    ("fade_in", True): (
        "a {shape} is fully visible",
        "the {shape} slowly fades away",
        "only the background is visible",
    ),
}


def sub_actions(cls: SyntheticClass) -> list[str]:
    """The class's three sub-action stages."""
    return [stage.format(shape=cls.shape) for stage in _STAGES[(cls.motion, cls.reverse)]]


def synthetic_class(name: str) -> SyntheticClass:
    """The class called `name`."""
    for cls in SYNTHETIC_CLASSES:
        if cls.name == name:
            return cls
    raise ValueError(f"no synthetic class named {name!r}; classes: {[cls.name for cls in SYNTHETIC_CLASSES]}")


def order_pairs() -> list[tuple[str, str]]:
    """(forward, backward) class-name pairs that differ only in temporal order."""
    forward = {(cls.shape, cls.motion): cls.name for cls in SYNTHETIC_CLASSES if not cls.reverse}
    return [(forward[(cls.shape, cls.motion)], cls.name) for cls in SYNTHETIC_CLASSES if cls.reverse]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

# Shapes as unions of convex polygons in unit coordinates (None: the unit circle), and the
# rotational symmetry that bounds how far a rotation may turn before it looks like the other way.
_SQUARE = np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
_TRIANGLE = np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad([-90.0, 30.0, 150.0])])
_BAR = np.array([[-1.0, -0.33], [1.0, -0.33], [1.0, 0.33], [-1.0, 0.33]])
_SHAPES: dict[str, list[np.ndarray] | None] = {
    "square": [_SQUARE],
    "circle": None,
    "triangle": [_TRIANGLE],
    "star": [_TRIANGLE, -_TRIANGLE],
    "cross": [_BAR, _BAR[:, ::-1]],
}
_SYMMETRY = {"square": 4, "circle": 1, "triangle": 3, "star": 6, "cross": 4}


def _polygon_distance(local_FP2: np.ndarray, vertices_K2: np.ndarray) -> np.ndarray:
    """Signed distance-like value (> 0 outside) of points to a convex polygon, in its own units → [F, P]."""
    edges = np.roll(vertices_K2, -1, axis=0) - vertices_K2
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cross = vertices_K2[:, 0] * np.roll(vertices_K2[:, 1], -1) - np.roll(vertices_K2[:, 0], -1) * vertices_K2[:, 1]
    if cross.sum() < 0:  # clockwise vertex order: flip to outward normals
        normals = -normals
    normals = normals.astype(np.float32)
    return (local_FP2 @ normals.T - np.sum(vertices_K2 * normals, axis=1, dtype=np.float32)).max(axis=-1)


def _coverage(shape: str, points_P2: np.ndarray, center_F2, radius_F, angle_F) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape per frame (centre and radius in pixels, angle in radians) → [F, P]."""
    center_F2 = np.asarray(center_F2, dtype=np.float32)
    radius_F = np.asarray(radius_F, dtype=np.float32)
    angle_F = np.asarray(angle_F, dtype=np.float32)
    offset_FP2 = points_P2[None] - center_F2[:, None]
    polygons = _SHAPES[shape]
    if polygons is None:
        distance_FP = np.linalg.norm(offset_FP2, axis=-1) - radius_F[:, None]
    else:
        # Points into the shape's own frame: undo the rotation, divide by the radius. y points down in
        # images, so a positive angle turns the shape clockwise on screen.
        cos, sin = np.cos(angle_F)[:, None], np.sin(angle_F)[:, None]
        local_FP2 = (
            np.stack(
                [
                    cos * offset_FP2[..., 0] + sin * offset_FP2[..., 1],
                    -sin * offset_FP2[..., 0] + cos * offset_FP2[..., 1],
                ],
                axis=-1,
            )
            / radius_F[:, None, None]
        )
        distance_FP = (
            np.min([_polygon_distance(local_FP2, polygon) for polygon in polygons], axis=0) * radius_F[:, None]
        )
    return np.clip(0.5 - distance_FP, 0.0, 1.0)


def _main_track(cls: SyntheticClass, rng: np.random.Generator, num_frames: int, size: int):
    """Per-frame (centre x, centre y, radius, angle, opacity) of the main shape, played forwards."""
    t = np.linspace(0.0, 1.0, num_frames)
    cx = np.full(num_frames, rng.uniform(0.35, 0.65) * size)
    cy = np.full(num_frames, rng.uniform(0.35, 0.65) * size)
    radius = np.full(num_frames, rng.uniform(0.13, 0.18) * size)
    angle = np.full(num_frames, rng.uniform(0.0, 2.0 * np.pi / _SYMMETRY[cls.shape]))
    opacity = np.ones(num_frames)
    if cls.motion == "left_to_right":
        cx = rng.uniform(0.18, 0.3) * size + t * rng.uniform(0.4, 0.55) * size
    elif cls.motion == "upwards":
        cy = rng.uniform(0.7, 0.82) * size - t * rng.uniform(0.4, 0.55) * size
    elif cls.motion == "grow":
        radius = rng.uniform(0.05, 0.08) * size + t * rng.uniform(0.18, 0.24) * size
    elif cls.motion == "rotate_clockwise":
        radius = np.full(num_frames, rng.uniform(0.24, 0.3) * size)
        angle = angle + t * rng.uniform(0.4, 0.45) * 2.0 * np.pi / _SYMMETRY[cls.shape]
    elif cls.motion == "fade_in":
        opacity = np.clip(t * 1.2 - 0.1, 0.0, 1.0)
    else:
        raise ValueError(f"unknown motion {cls.motion!r}")
    return cx, cy, radius, angle, opacity


def render_video(
    cls: SyntheticClass | str,
    num_frames: int,
    size: int = 64,
    seed: int | Sequence[int] = 0,
    noise: float = 8.0,
    distractors: int = 2,
) -> np.ndarray:
    """Render one video of `cls` → uint8 [F, size, size, 3] RGB.

    A reversed class is rendered forwards with the same random draws and then played backwards,
    so `render_video(b, n, seed=s) == render_video(a, n, seed=s)[::-1]` for an order pair (a, b).
    """
    if isinstance(cls, str):
        cls = synthetic_class(cls)
    if num_frames < 2 or size < 16:
        raise ValueError(f"need num_frames >= 2 and size >= 16, got {num_frames} and {size}")
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    points_P2 = np.stack([xs.ravel(), ys.ravel()], axis=1)

    # Background: a dark colour with a soft gradient, the same in every frame.
    base = rng.uniform(20.0, 90.0, size=3)
    direction = rng.normal(size=2)
    ramp = (points_P2 @ (direction / np.linalg.norm(direction)) / size).reshape(size, size, 1)
    background = base + 30.0 * ramp * rng.uniform(0.5, 1.0, size=3)

    colour = rng.uniform(150.0, 255.0, size=3)
    colour[rng.integers(3)] = rng.uniform(40.0, 120.0)  # keep it saturated, not white
    track = _main_track(cls.forward, rng, num_frames, size)

    distractor_tracks = []
    for _ in range(distractors):
        start = rng.uniform(0.1, 0.9, size=2) * size
        velocity = rng.normal(scale=0.25, size=2) * size / num_frames
        distractor_tracks.append(
            (rng.choice(["circle", "square"]), start, velocity, rng.uniform(0.05, 0.08) * size, rng.uniform(60, 200, 3))
        )

    image_FHW3 = np.broadcast_to(background, (num_frames, size, size, 3))
    frame_numbers = np.arange(num_frames)[:, None]
    for shape, start, velocity, radius, tint in distractor_tracks:
        centers = start + velocity * frame_numbers
        cover = _coverage(shape, points_P2, centers, np.full(num_frames, radius), np.zeros(num_frames))
        cover = cover.reshape(num_frames, size, size, 1)
        image_FHW3 = image_FHW3 * (1 - cover) + tint * cover
    cx, cy, radius, angle, opacity = track
    cover = _coverage(cls.shape, points_P2, np.stack([cx, cy], axis=1), radius, angle)
    cover = (opacity[:, None] * cover).reshape(num_frames, size, size, 1)
    image_FHW3 = image_FHW3 * (1 - cover) + colour * cover
    if noise > 0:
        image_FHW3 = image_FHW3 + rng.normal(scale=noise, size=image_FHW3.shape)
    frames = np.clip(np.rint(image_FHW3), 0, 255).astype(np.uint8)
    return frames[::-1].copy() if cls.reverse else frames


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticDataset:
    """What `make_synthetic_dataset` wrote (all paths absolute)."""

    root: Path
    split_files: dict[str, Path]  # split → official list `<frame folder> <num frames> <label id>`
    video_dirs: dict[str, Path]  # split → folder-per-class directory of webm files
    frame_dirs: dict[str, Path]  # split → folder-per-class directory of JPEG frame folders
    corpus: Path  # official YAML sub-action corpus
    classes: dict[str, list[str]]  # split → class names, in label id order
    order_pairs: list[tuple[str, str]]  # (forward, backward): classes that differ only in temporal order
    params: dict  # the generation parameters (what the cache folder's hash covers)
    videos: list[dict]  # per video: split, class_name, label, id, num_frames, seed, frames, video


def _cache_root() -> Path:
    return Path(os.environ.get("TAF_CACHE_DIR") or Path.home() / ".cache" / "taskadapter_fast")


def _params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _write_webm(path: Path, frames_FHW3: np.ndarray) -> None:
    import av

    # Bit-exact muxing and one encoder thread make the bytes a function of the pixels.
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(
            "libvpx-vp9", rate=FRAME_RATE, options={"crf": "18", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        )
        stream.width = frames_FHW3.shape[2]
        stream.height = frames_FHW3.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames_FHW3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_jpegs(folder: Path, frames_FHW3: np.ndarray, quality: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for number, frame in enumerate(frames_FHW3, start=1):
        Image.fromarray(frame).save(folder / f"img_{number:05d}.jpg", quality=quality, subsampling=0)


def _load(root: Path) -> SyntheticDataset:
    info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    return SyntheticDataset(
        root=root,
        split_files={split: root / f"{split}.txt" for split in SPLITS},
        video_dirs={split: root / "videos" / split for split in SPLITS},
        frame_dirs={split: root / "frames" / split for split in SPLITS},
        corpus=root / "corpus.yaml",
        classes=info["classes"],
        order_pairs=[tuple(pair) for pair in info["order_pairs"]],
        params=info["params"],
        videos=info["videos"],
    )


def _generate(folder: Path, params: dict) -> None:
    from .corpus import save_corpus

    seed = params["seed"]
    classes = {split: [cls for cls in SYNTHETIC_CLASSES if cls.split == split] for split in SPLITS}
    videos = []
    for split in SPLITS:
        lines = []
        for label, cls in enumerate(classes[split]):
            class_index = SYNTHETIC_CLASSES.index(cls)
            (folder / "videos" / split / cls.name).mkdir(parents=True)
            for video_index in range(params["videos_per_class"]):
                length_rng = np.random.default_rng([seed, class_index, video_index, 0])
                num_frames = int(length_rng.integers(params["min_frames"], params["max_frames"] + 1))
                video_seed = [seed, class_index, video_index, 1]
                frames = render_video(
                    cls, num_frames, params["size"], video_seed, params["noise"], params["distractors"]
                )
                video_id = f"{class_index:02d}{video_index:04d}"
                frame_folder = Path("frames") / split / cls.name / video_id
                video_file = Path("videos") / split / cls.name / f"{video_id}.webm"
                _write_jpegs(folder / frame_folder, frames, params["jpeg_quality"])
                _write_webm(folder / video_file, frames)
                lines.append(f"{frame_folder.as_posix()} {num_frames} {label}\n")
                videos.append(
                    {
                        "split": split,
                        "class_name": cls.name,
                        "label": label,
                        "id": video_id,
                        "num_frames": num_frames,
                        "seed": video_seed,
                        "frames": frame_folder.as_posix(),
                        "video": video_file.as_posix(),
                    }
                )
        (folder / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    save_corpus({cls.name: sub_actions(cls) for cls in SYNTHETIC_CLASSES}, folder / "corpus.yaml")
    info = {
        "format_version": FORMAT_VERSION,
        "params": params,
        "classes": {split: [cls.name for cls in classes[split]] for split in SPLITS},
        "order_pairs": order_pairs(),
        "videos": videos,
    }
    # dataset.json is written last: its presence marks a complete dataset.
    (folder / "dataset.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def make_synthetic_dataset(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    videos_per_class: int = 8,
    min_frames: int = 16,
    max_frames: int = 24,
    size: int = 64,
    noise: float = 8.0,
    distractors: int = 2,
    jpeg_quality: int = 95,
) -> SyntheticDataset:
    """Generate (once) and describe the synthetic dataset.

    root: the dataset folder. Default: `<cache>/synthetic-<hash of the parameters>`, where
        `<cache>` is `$TAF_CACHE_DIR` or `~/.cache/taskadapter_fast`. An existing complete dataset
        made with the same parameters is reused as it is; a folder holding anything else is an error.
    videos_per_class, min_frames..max_frames (per-video length, inclusive), size (square frames,
    pixels), noise (Gaussian, grey levels), distractors (small moving shapes per video),
    jpeg_quality: scale the dataset up or down. The defaults (20 classes x 8 videos of 16-24
    frames at 64x64) generate in a few seconds on 2 CPU cores.
    """
    if videos_per_class < 1:
        raise ValueError(f"videos_per_class must be >= 1, got {videos_per_class}")
    if not 2 <= min_frames <= max_frames:
        raise ValueError(f"need 2 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (VP9 4:2:0 frames), got {size}")
    if noise < 0 or distractors < 0 or not 1 <= jpeg_quality <= 100:
        raise ValueError(
            f"need noise >= 0, distractors >= 0, 1 <= jpeg_quality <= 100; got {noise}, {distractors}, {jpeg_quality}"
        )
    params = {
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "videos_per_class": int(videos_per_class),
        "min_frames": int(min_frames),
        "max_frames": int(max_frames),
        "size": int(size),
        "noise": float(noise),
        "distractors": int(distractors),
        "jpeg_quality": int(jpeg_quality),
    }
    folder = Path(root) if root is not None else _cache_root() / f"synthetic-{_params_hash(params)}"
    folder = folder.expanduser().absolute()
    if (folder / "dataset.json").is_file():
        return _checked(folder, params)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not a synthetic dataset (no dataset.json); choose another root")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    temporary = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex}")
    # The generator holds a lock on <temporary>.lock while it works: others know it is alive by the lock, not
    # by a process id (which says nothing across containers or hosts sharing the cache).
    with FileLock(_lock_file(temporary)):  # deletes the lock file when done
        try:
            temporary.mkdir()
            _generate(temporary, params)
            try:
                os.rename(temporary, folder)  # atomic; replaces an empty folder
            except OSError:
                if not (folder / "dataset.json").is_file():  # not a concurrent generator that finished first
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return _checked(folder, params)


def _lock_file(temporary: Path) -> Path:
    return temporary.with_name(temporary.name + ".lock")


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete what generators that were killed left: temporary folders whose lock nobody holds."""
    for candidate in folder.parent.glob(f".{folder.name}.tmp-*"):
        if candidate.name.endswith(".lock"):
            continue
        try:
            with FileLock(_lock_file(candidate)):  # taken: its generator is gone
                shutil.rmtree(candidate, ignore_errors=True)
        except LockHeld:
            continue  # a live generator holds it
        except OSError:
            continue


def _checked(folder: Path, params: dict) -> SyntheticDataset:
    dataset = _load(folder)
    if dataset.params != params:
        raise ValueError(
            f"{folder} holds a synthetic dataset made with other parameters ({dataset.params}); "
            f"asked for {params}. Use another root, or the default cache folder"
        )
    return dataset


__all__ = [
    "SYNTHETIC_CLASSES",
    "SyntheticClass",
    "SyntheticDataset",
    "make_synthetic_dataset",
    "order_pairs",
    "render_video",
    "sub_actions",
    "synthetic_class",
]
