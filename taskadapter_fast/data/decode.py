"""Clip decoding: video files and JPEG frame folders → normalised `[T, 3, S, S]` tensors (SPEC §1).

Pixels, for every decoder: resize each frame to a square of `int(1.15 * S)` (aspect ratio not kept,
bilinear), crop `S` (train: at `crop_offset` or a random offset, as RandomCrop; eval: centre, as
CenterCrop), scale to [0, 1] and normalise with the CLIP mean and std.

Decoders (`decoder=`):
- `"pyav"`: video files through PyAV (FFmpeg), JPEG frame folders through Pillow; the resize is
  torchvision's antialiased bilinear on uint8, within one grey level of the official Pillow loader.
- `"dali_cpu"`, `"dali_gpu"`: an NVIDIA DALI pipeline fed with the encoded bytes and the frame
  indices (external sources). Frame folders go through `decoders.image` (nvJPEG on the GPU), video
  files through `decoders.video` with explicit frame indices (NVDEC on the GPU; DALI's CPU variant
  decodes VP8, VP9 and MJPEG only, not H.264, HEVC or MPEG-4). Resize, crop and normalise run in
  the pipeline; on the GPU the output is handed to torch through DLPack, with no host round trip.
- `"auto"` (default): DALI-GPU when DALI and a CUDA device are there, else DALI-CPU where the
  codec allows, else PyAV; the choice is logged once per (decoder, input type). The environment
  variable `TAF_DECODER` replaces `"auto"` with a fixed decoder.

Frame indices are 0-based; frame folders hold 1-based `img_{:05d}.jpg` files (index i → file i+1).

Bad input raises a `VideoDecodeError` (a `ValueError`) naming the file:
- missing video, frame folder or frame file: `MissingVideoError` (also a `FileNotFoundError`);
- a codec the chosen decoder cannot decode: `UnsupportedCodecError`;
- corrupt or truncated data, no video stream, no decodable frame: `VideoDecodeError`.
Short videos: an index past the last frame is clamped to the last frame (the last frame is
repeated). A file whose container header promises more frames than it holds is truncated, not
short, and raises when a requested index falls in the missing part.
`SkipCounter` wraps the loaders for training: it skips a bad video with a warning and counts it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FRAME_NAME = "img_{:05d}.jpg"
FRAME_PATTERN = re.compile(r"img_\d+\.jpg")
DECODERS = ("auto", "pyav", "dali_cpu", "dali_gpu")
# Codec names as FFmpeg reports them. DALI's CPU video decoder is FFmpeg's software decoder limited
# to these; the mixed (GPU) one adds what NVDEC decodes.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"})

_DALI_VIDEO_BATCH = 16  # clips per DALI run
_DALI_IMAGE_BATCH = 128  # JPEG frames per DALI run


class VideoDecodeError(ValueError):
    """A video or frame folder that cannot be decoded; `path` names it and `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class MissingVideoError(VideoDecodeError, FileNotFoundError):
    """The video file, the frame folder or one of its frame files does not exist."""


class UnsupportedCodecError(VideoDecodeError):
    """The file's codec is one the requested decoder cannot decode."""


class DecoderUnavailableError(RuntimeError):
    """An explicitly requested decoder cannot run here (the message lists the reasons)."""


def resize_size(image_size: int) -> int:
    """Side of the square every frame is resized to before cropping: int(1.15 * S) (257 for 224)."""
    return int(1.15 * image_size)


def center_crop_offset(image_size: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop of S out of the resized square."""
    margin = resize_size(image_size) - image_size
    offset = int(round(margin / 2.0))
    return offset, offset


def video_kind(path: str | os.PathLike) -> str:
    """ "frames" for a JPEG frame folder, "video" for a video file.

    An existing folder is a frame folder whatever its name (HMDB51/UCF101 frame folders are often named
    after their video, `brush_hair_1.avi/`); otherwise a video extension or any suffix means a file.
    """
    path = Path(path)
    if path.is_dir():
        return "frames"
    return "video" if path.suffix else "frames"


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video file's first video stream."""

    codec: str  # FFmpeg codec name: "vp9", "h264", "mjpeg", "mpeg4", ...
    num_frames: int  # frames present in the file (demuxed packet count)
    expected_frames: int | None  # what the header promises (frame count, else duration × rate)
    width: int
    height: int

    @property
    def truncated(self) -> bool:
        """True when the file holds clearly fewer frames than its header promises."""
        if self.expected_frames is None:
            return False
        return self.num_frames + max(1, self.expected_frames // 20) < self.expected_frames


_probe_cache: dict[tuple[str, int, int], VideoInfo] = {}
_probe_lock = threading.Lock()


def _import_av():
    try:
        import av
    except ImportError as error:  # pragma: no cover - PyAV is a declared optional dependency
        raise ImportError("decoding video files needs PyAV: pip install av") from error
    return av


def _expected_frames(container, stream) -> int | None:
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000
    else:
        return None
    return int(round(seconds * float(rate))) or None


def _open_video(path: Path):
    av = _import_av()
    if not path.is_file():
        raise MissingVideoError(path, "video file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoDecodeError(path, f"cannot open the video container ({error})") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream in the file")
    stream = container.streams.video[0]
    if stream.codec_context is None or getattr(stream.codec_context, "codec", None) is None:
        container.close()
        raise VideoDecodeError(path, "the video stream has no usable codec (unknown codec or a damaged header)")
    return container, stream


def probe_video(path: str | os.PathLike, check_decode: bool = False) -> VideoInfo:
    """Codec and frame count of a video file, from a demux pass (no decoding). Cached per file version.

    `check_decode=True` also decodes the first frame, to catch files whose streams FFmpeg cannot decode.
    Raises `MissingVideoError` or `VideoDecodeError` naming the file.
    """
    av = _import_av()
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise MissingVideoError(path, "video file not found") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _probe_lock:
        cached = _probe_cache.get(key)
    if cached is not None and not check_decode:
        return cached
    container, stream = _open_video(path)
    try:
        codec = stream.codec_context.name
        expected = _expected_frames(container, stream)
        packets = 0
        decoded = not check_decode
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
            if not decoded:
                decoded = bool(stream.decode(packet))
        if not decoded and not stream.decode(None):  # flush: the first frame may come out last
            raise VideoDecodeError(path, "no decodable frame")
        info = VideoInfo(codec, packets, expected, stream.codec_context.width, stream.codec_context.height)
    except av.FFmpegError as error:
        raise VideoDecodeError(path, f"corrupt video data ({error})") from error
    finally:
        container.close()
    if packets == 0:
        raise VideoDecodeError(path, "the video stream holds no frames")
    with _probe_lock:
        _probe_cache[key] = info
    return info


def count_frame_files(folder: str | os.PathLike) -> int:
    """Number of `img_*.jpg` files in a frame folder.

    Raises `MissingVideoError` if it is not a folder, and `VideoDecodeError` if its frames are not named
    as the loader reads them (`img_00001.jpg` up to `img_{n:05d}.jpg`), e.g. `img_000001.jpg`.
    """
    folder = Path(folder)
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries if FRAME_PATTERN.fullmatch(entry.name)]
    except (FileNotFoundError, NotADirectoryError):
        raise MissingVideoError(folder, "frame folder not found") from None
    expected = {FRAME_NAME.format(1), FRAME_NAME.format(len(names))} if names else set()
    if not expected <= set(names):
        raise VideoDecodeError(
            folder,
            f"{len(names)} frame files, but not named {FRAME_NAME.format(1)} ... {FRAME_NAME.format(len(names))} "
            f"(1-based, 5 digits); found e.g. {min(names)}",
        )
    return len(names)


# --------------------------------------------------------------------------------------------
# Index and crop handling
# --------------------------------------------------------------------------------------------


def _as_index_array(frame_indices, what: str = "frame_indices") -> np.ndarray:
    indices = np.asarray(frame_indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {indices.dtype}")
    indices = indices.astype(np.int64)
    if indices.size and indices.min() < 0:
        raise ValueError(f"{what} must be >= 0 (0-based frame indices), got {indices.min()}")
    return indices


def _clamp(indices: np.ndarray, num_frames: int) -> np.ndarray:
    """The short-video rule: an index past the last frame reads the last frame."""
    return np.minimum(indices, num_frames - 1)


def _resolve_crop(image_size: int, train: bool, crop_offset) -> tuple[int, int]:
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    margin = resize_size(image_size) - image_size
    if not train:
        if crop_offset is not None:
            raise ValueError("crop_offset only applies to training crops (train=True); eval uses the centre crop")
        return center_crop_offset(image_size)
    if crop_offset is None:
        top, left = torch.randint(0, margin + 1, (2,)).tolist()
        return top, left
    top, left = (int(value) for value in crop_offset)
    if not (0 <= top <= margin and 0 <= left <= margin):
        raise ValueError(
            f"crop_offset (top, left) must lie in [0, {margin}] for image_size {image_size}, got {crop_offset}"
        )
    return top, left


# --------------------------------------------------------------------------------------------
# PyAV / torchvision path
# --------------------------------------------------------------------------------------------


def _decode_video_pyav(path: Path, indices: np.ndarray) -> np.ndarray:
    """RGB frames at `indices` (clamped to the last frame) → uint8 [T, H, W, 3]."""
    av = _import_av()
    container, stream = _open_video(path)
    stream.thread_type = "AUTO"
    wanted = set(indices.tolist())
    top = int(indices.max())
    decoded: dict[int, np.ndarray] = {}
    last_frame = None
    count = 0
    try:
        expected = _expected_frames(container, stream)
        for frame in container.decode(stream):
            if count in wanted:
                decoded[count] = frame.to_ndarray(format="rgb24")
            last_frame = frame
            count += 1
            if count > top:
                break
    except av.FFmpegError as error:
        raise VideoDecodeError(path, f"corrupt or truncated video data after {count} frames ({error})") from error
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(path, "no decodable frame")
    if top >= count:
        info = VideoInfo(stream.codec_context.name, count, expected, 0, 0)
        if info.truncated:
            raise VideoDecodeError(
                path, f"truncated video: {count} decodable frames, the header promises {expected} (frame {top} asked)"
            )
        decoded.setdefault(count - 1, last_frame.to_ndarray(format="rgb24"))
    return np.stack([decoded[int(i)] for i in _clamp(indices, count)])


_short_folders_reported: set[str] = set()


def _frame_file_paths(folder: Path, indices: np.ndarray) -> list[Path]:
    num_frames = count_frame_files(folder)
    if num_frames == 0:
        raise MissingVideoError(folder, "frame folder holds no img_*.jpg frames")
    if indices.size and int(indices.max()) >= num_frames and str(folder) not in _short_folders_reported:
        # Indices come from the split file's frame count; frame_indices never points past a true count.
        _short_folders_reported.add(str(folder))
        logger.warning(
            "%s holds %d frames but frame %d was asked (the split file counts more): reading the last frame instead",
            folder,
            num_frames,
            int(indices.max()) + 1,
        )
    return [folder / FRAME_NAME.format(int(i) + 1) for i in _clamp(indices, num_frames)]


def _read_frame_bytes(folder: Path, files: list[Path]) -> list[bytes]:
    data = []
    for file in files:
        try:
            data.append(file.read_bytes())
        except FileNotFoundError:
            raise MissingVideoError(folder, f"missing frame file {file.name}") from None
    return data


def _decode_frames_pillow(folder: Path, indices: np.ndarray) -> list[torch.Tensor]:
    """JPEG frames at `indices` → list of uint8 [3, H, W] (Pillow, as the official loader reads them)."""
    from PIL import Image, UnidentifiedImageError

    files = _frame_file_paths(folder, indices)
    images = []
    for file, data in zip(files, _read_frame_bytes(folder, files), strict=True):
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.array(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise VideoDecodeError(folder, f"corrupt JPEG frame {file.name} ({error})") from error
        images.append(torch.from_numpy(array).permute(2, 0, 1))
    return images


def normalize_frames(frames_T3HW: torch.Tensor, image_size: int, crop_offset: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, 3, H, W] → float32 [T, 3, S, S]: square resize (bilinear, on uint8 like Pillow), crop, normalise."""
    from torchvision.transforms.v2 import functional as tvf

    side = resize_size(image_size)
    top, left = crop_offset
    resized = tvf.resize(frames_T3HW, [side, side], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
    cropped = resized[..., top : top + image_size, left : left + image_size]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (cropped.float() / 255.0 - mean) / std


def _load_pyav(path: Path, kind: str, indices: np.ndarray, image_size: int, crop: tuple[int, int]) -> torch.Tensor:
    if kind == "video":
        frames = torch.from_numpy(_decode_video_pyav(path, indices)).permute(0, 3, 1, 2)
        return normalize_frames(frames, image_size, crop)
    images = _decode_frames_pillow(path, indices)
    if all(image.shape == images[0].shape for image in images):
        return normalize_frames(torch.stack(images), image_size, crop)
    return torch.cat([normalize_frames(image[None], image_size, crop) for image in images])


# --------------------------------------------------------------------------------------------
# DALI path
# --------------------------------------------------------------------------------------------

_dali_import_error: str | None = None
_dali_checked = False
_dali_broken: dict[str, str] = {}  # device → why its pipeline failed to build (auto then skips it)


def _dali_import_problem() -> str | None:
    global _dali_checked, _dali_import_error
    if not _dali_checked:
        try:
            import nvidia.dali  # noqa: F401
        except Exception as error:  # any import failure (missing package, broken CUDA libs) means "no DALI"
            _dali_import_error = f"nvidia.dali cannot be imported ({error}); install nvidia-dali-cuda120"
        _dali_checked = True
    return _dali_import_error


def dali_unavailable_reasons(device: str) -> list[str]:
    """Why the DALI decoder on `device` ("cpu" or "gpu") cannot run here; empty when it can."""
    reasons = []
    problem = _dali_import_problem()
    if problem:
        reasons.append(problem)
    if device == "gpu" and not torch.cuda.is_available():
        reasons.append("no CUDA device is visible to torch")
    if device in _dali_broken:
        reasons.append(_dali_broken[device])
    return reasons


class _DaliRunner:
    """One built DALI pipeline: `source` "video" (clips of frames) or "image" (single JPEG frames)."""

    def __init__(self, device: str, source: str, image_size: int, gpu_index: int | None):
        from nvidia.dali import fn, pipeline_def, types

        self.device = device
        self.source = source
        self.max_batch = _DALI_VIDEO_BATCH if source == "video" else _DALI_IMAGE_BATCH
        side = resize_size(image_size)
        decode_device = "mixed" if device == "gpu" else "cpu"
        mean = [255.0 * value for value in CLIP_MEAN]
        std = [255.0 * value for value in CLIP_STD]
        device_id = self.device_id = gpu_index  # None for the CPU pipeline

        # Synchronous execution: each run answers the batch just fed (no prefetch skew), and a
        # decode error belongs to that batch.
        @pipeline_def(
            batch_size=self.max_batch,
            num_threads=max(1, min(4, os.cpu_count() or 1)),
            device_id=device_id,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            crop = fn.external_source(name="crop", dtype=types.INT32, ndim=1)
            if source == "video":
                frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
                pixels = fn.decoders.video(encoded, frames=frames, device=decode_device)  # [F, H, W, 3]
                layout = "FCHW"
            else:
                pixels = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)  # [H, W, 3]
                layout = "CHW"
            pixels = fn.resize(pixels, size=[side, side], interp_type=types.INTERP_LINEAR, antialias=True)
            pixels = fn.slice(
                pixels,
                crop,
                np.array([image_size, image_size], np.int32),
                axis_names="HW",
                out_of_bounds_policy="error",
            )
            return fn.crop_mirror_normalize(pixels, dtype=types.FLOAT, output_layout=layout, mean=mean, std=std)

        self.pipe = pipeline()
        self.pipe.build()
        self.lock = threading.Lock()

    def run(self, encoded: list[np.ndarray], crops: list[np.ndarray], frames: list[np.ndarray] | None) -> torch.Tensor:
        """One batch → float32 [B, T, 3, S, S] (video) or [B, 3, S, S] (image), on the pipeline's device."""
        on_gpu = self.device == "gpu"
        # The pipeline's GPU, also in the loader's worker threads (a new thread's current CUDA device is 0).
        with self.lock, torch.cuda.device(self.device_id) if on_gpu else contextlib.nullcontext():
            self.pipe.feed_input("encoded", encoded)
            self.pipe.feed_input("crop", crops)
            if frames is not None:
                self.pipe.feed_input("frames", frames)
            # The stream is run()'s one positional argument (its keyword arguments name pipeline inputs):
            # the GPU output is ordered on torch's current stream; None makes the CPU run host-synchronous.
            (output,) = self.pipe.run(torch.cuda.current_stream().cuda_stream if on_gpu else None)
            if on_gpu:
                # DLPack keeps the batch on the GPU; clone because DALI reuses its output buffer.
                return torch.from_dlpack(output.as_tensor()).clone()
            return torch.from_numpy(np.array(output.as_tensor()))


_runners: dict[tuple[str, str, int, int | None], _DaliRunner] = {}
_runners_lock = threading.Lock()


def dali_gpu_index(target: torch.device | str | None) -> int:
    """The GPU dali_gpu decodes on for clips bound for `target`: its own index, else the current device.

    Explicit because the episode loader decodes in worker threads, whose current CUDA device is always 0:
    a rank training on cuda:3 must not decode on GPU 0.
    """
    target = None if target is None else torch.device(target)
    if target is not None and target.type == "cuda" and target.index is not None:
        return target.index
    return torch.cuda.current_device()


def _dali_runner(device: str, source: str, image_size: int, gpu_index: int | None) -> _DaliRunner:
    key = (device, source, image_size, gpu_index if device == "gpu" else None)
    with _runners_lock:
        runner = _runners.get(key)
        if runner is None:
            runner = _runners[key] = _DaliRunner(device, source, image_size, key[3])
        return runner


def _drop_runner(runner: _DaliRunner) -> None:
    """A DALI pipeline that raised is no longer valid; the next call builds a fresh one."""
    with _runners_lock:
        for key, value in list(_runners.items()):
            if value is runner:
                del _runners[key]


def _dali_error_text(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "rror" in line or "not supported" in line or "ailed" in line]
    return (useful[-1] if useful else lines[-1] if lines else type(error).__name__)[:300]


@dataclass
class _Job:
    """One clip to decode: where it goes in the batch and what to feed the decoder."""

    position: int
    path: Path
    kind: str
    indices: np.ndarray  # [T], clamped
    crop: tuple[int, int]
    encoded: list[np.ndarray] | None = None  # video: [file bytes]; frames: one array per frame


def _prepare_dali_job(job: _Job, device: str) -> None:
    if job.kind == "video":
        info = probe_video(job.path)
        supported = DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS
        if info.codec not in supported:
            raise UnsupportedCodecError(
                job.path, f"codec {info.codec!r} is not decodable by dali_{device} (it decodes {sorted(supported)})"
            )
        if int(job.indices.max()) >= info.num_frames and info.truncated:
            raise VideoDecodeError(
                job.path,
                f"truncated video: {info.num_frames} frames present, the header promises {info.expected_frames}",
            )
        job.indices = _clamp(job.indices, info.num_frames)
        job.encoded = [np.fromfile(job.path, dtype=np.uint8)]
    else:
        files = _frame_file_paths(job.path, job.indices)
        job.encoded = [np.frombuffer(data, dtype=np.uint8) for data in _read_frame_bytes(job.path, files)]


def _run_dali_jobs(jobs: list[_Job], device: str, image_size: int, gpu_index: int | None) -> list[torch.Tensor]:
    """Decode jobs of one kind through DALI → one [T, 3, S, S] tensor per job (same order)."""
    source = "video" if jobs[0].kind == "video" else "image"
    runner = _dali_runner(device, source, image_size, gpu_index)
    per_item = 1 if source == "video" else len(jobs[0].indices)
    jobs_per_run = max(1, runner.max_batch // per_item)
    results: list[torch.Tensor] = []
    for start in range(0, len(jobs), jobs_per_run):
        chunk = jobs[start : start + jobs_per_run]
        encoded = [array for job in chunk for array in job.encoded]
        crops = [np.asarray(job.crop, np.int32) for job in chunk for _ in job.encoded]
        frames = [job.indices.astype(np.int32) for job in chunk] if source == "video" else None
        try:
            batch = runner.run(encoded, crops, frames)
        except RuntimeError as error:
            _drop_runner(runner)
            if len(chunk) == 1:
                raise VideoDecodeError(
                    chunk[0].path, f"dali_{device} cannot decode it: {_dali_error_text(error)}"
                ) from error
            # Find which clip broke the batch: decode them one by one (each failure rebuilds the pipeline).
            for job in chunk:
                _run_dali_jobs([job], device, image_size, gpu_index)
            raise
        if source == "video":
            results.extend(batch.unbind(0))
        else:
            results.extend(batch.view(len(chunk), per_item, *batch.shape[1:]).unbind(0))
        runner = _dali_runner(device, source, image_size, gpu_index)
    return results


# --------------------------------------------------------------------------------------------
# Decoder choice and public loaders
# --------------------------------------------------------------------------------------------

_logged_choices: set[tuple[str, str]] = set()


def _log_choice(decoder: str, what: str, why: str) -> None:
    if (decoder, what) not in _logged_choices:
        _logged_choices.add((decoder, what))
        logger.info("decoder=auto picked %s for %s (%s)", decoder, what, why)


def _requested_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        forced = os.environ.get("TAF_DECODER", "auto")
        if forced not in DECODERS:
            raise ValueError(f"TAF_DECODER must be one of {DECODERS}, got {forced!r}")
        return forced
    if decoder.startswith("dali"):
        reasons = dali_unavailable_reasons(decoder.removeprefix("dali_"))
        if reasons:
            raise DecoderUnavailableError(f"decoder={decoder!r} cannot run here: " + "; ".join(reasons))
    return decoder


def _auto_decoder(path: Path, kind: str) -> str:
    for device in ("gpu", "cpu"):
        if dali_unavailable_reasons(device):
            continue
        if kind == "frames":
            _log_choice(f"dali_{device}", "JPEG frame folders", "DALI image decoder available")
            return f"dali_{device}"
        codec = probe_video(path).codec
        if codec in (DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS):
            _log_choice(f"dali_{device}", f"{codec} videos", f"DALI {device.upper()} decodes {codec}")
            return f"dali_{device}"
    why = "DALI unavailable or cannot decode it: " + "; ".join(dali_unavailable_reasons("cpu") or ["codec"])
    _log_choice("pyav", "JPEG frame folders" if kind == "frames" else "videos", why)
    return "pyav"


def choose_decoder(path: str | os.PathLike, decoder: str = "auto") -> str:
    """The decoder `load_clip(path, ..., decoder=decoder)` uses for this file ("auto" resolved)."""
    requested = _requested_decoder(decoder)
    return _auto_decoder(Path(path), video_kind(path)) if requested == "auto" else requested


def load_clips(
    paths: Sequence[str | os.PathLike],
    frame_indices,
    image_size: int = 224,
    train: bool = False,
    decoder: str = "auto",
    crop_offsets=None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decode V clips → `[V, T, 3, S, S]` (see `load_clip`; the batched form DALI runs best with).

    `frame_indices`: int [V, T], 0-based. `crop_offsets`: optional int [V, 2] (top, left) per clip,
    train only. `device`: where the result goes (default: where the decoder put it, the GPU for
    dali_gpu, else the CPU). `dtype`: result dtype (the model's).
    Raises `VideoDecodeError` naming a clip that cannot be decoded.
    """
    paths = [Path(path) for path in paths]
    indices_VT = _as_index_array(frame_indices)
    if indices_VT.ndim != 2 or indices_VT.shape[0] != len(paths) or indices_VT.shape[1] == 0:
        raise ValueError(f"frame_indices must be [V, T] with V = {len(paths)} clips and T >= 1, got {indices_VT.shape}")
    if crop_offsets is not None:
        crop_offsets = np.asarray(crop_offsets)
        if crop_offsets.shape != (len(paths), 2):
            raise ValueError(f"crop_offsets must be [V, 2] (top, left) with V = {len(paths)}, got {crop_offsets.shape}")
    requested = _requested_decoder(decoder)
    jobs_by_decoder: dict[str, list[_Job]] = {}
    for position, path in enumerate(paths):
        kind = video_kind(path)
        crop = _resolve_crop(image_size, train, None if crop_offsets is None else crop_offsets[position])
        chosen = _auto_decoder(path, kind) if requested == "auto" else requested
        jobs_by_decoder.setdefault(chosen, []).append(_Job(position, path, kind, indices_VT[position], crop))

    clips: list[torch.Tensor | None] = [None] * len(paths)
    for chosen, jobs in jobs_by_decoder.items():
        if chosen == "pyav":
            for job in jobs:
                clips[job.position] = _load_pyav(job.path, job.kind, job.indices, image_size, job.crop)
            continue
        dali_device = chosen.removeprefix("dali_")
        gpu_index = dali_gpu_index(device) if dali_device == "gpu" else None
        for job in jobs:
            _prepare_dali_job(job, dali_device)
        for kind in ("video", "frames"):
            group = [job for job in jobs if job.kind == kind]
            if not group:
                continue
            try:
                outputs = _run_dali_jobs(group, dali_device, image_size, gpu_index)
            except VideoDecodeError:
                raise
            except Exception as error:
                if requested != "auto":
                    raise
                # A DALI pipeline that cannot even be built here: auto falls back for the whole run.
                _dali_broken[dali_device] = f"the DALI pipeline failed: {_dali_error_text(error)}"
                logger.warning("dali_%s failed (%s); decoder=auto falls back to pyav", dali_device, error)
                outputs = [_load_pyav(job.path, job.kind, job.indices, image_size, job.crop) for job in group]
            for job, clip in zip(group, outputs, strict=True):
                clips[job.position] = clip
    if device is None:
        on_gpu = [clip.device for clip in clips if clip.device.type == "cuda"]
        device = on_gpu[0] if on_gpu else torch.device("cpu")
    return torch.stack([clip.to(device) for clip in clips]).to(dtype)


def load_clip(
    path: str | os.PathLike,
    frame_indices,
    image_size: int = 224,
    train: bool = False,
    decoder: str = "auto",
    crop_offset=None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decode one clip → float `[T, 3, S, S]`, normalised as SPEC §1 says.

    `path`: a video file (VIDEO_EXTENSIONS: .mp4, .webm, ...) or a JPEG frame folder (`img_00001.jpg`, ...).
    `frame_indices`: int [T], 0-based; an index past the last frame reads the last frame.
    `train`: random crop (at `crop_offset` = (top, left) when given) instead of the centre crop.
    `decoder`: "auto" | "pyav" | "dali_cpu" | "dali_gpu" (module docstring).
    """
    indices_T = _as_index_array(frame_indices)
    if indices_T.ndim != 1:
        raise ValueError(f"frame_indices must be a 1-D sequence of T indices, got shape {indices_T.shape}")
    crop_offsets = None if crop_offset is None else [crop_offset]
    return load_clips([path], indices_T[None], image_size, train, decoder, crop_offsets, device=device, dtype=dtype)[0]


class SkipCounter:
    """Loads clips for a training or evaluation loop, skipping bad videos instead of dying on one.

    A `VideoDecodeError` (missing, corrupt, truncated, unsupported codec) is logged as a warning
    naming the file, counted, and the call returns None; the loop draws another episode.
    Configuration errors (a decoder that cannot run here, bad arguments) still raise.
    """

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []  # (path, reason), in the order met

    @property
    def count(self) -> int:
        return len(self.skipped)

    @property
    def bad_paths(self) -> set[str]:
        return {path for path, _ in self.skipped}

    def _record(self, error: VideoDecodeError) -> None:
        self.skipped.append((error.path, error.reason))
        logger.warning("skipping unreadable video %s: %s (%d skipped so far)", error.path, error.reason, self.count)

    def load_clip(self, path, frame_indices, **kwargs) -> torch.Tensor | None:
        """`load_clip(path, frame_indices, **kwargs)`, or None (counted, warned) when the video is bad."""
        try:
            return load_clip(path, frame_indices, **kwargs)
        except VideoDecodeError as error:
            self._record(error)
            return None

    def load_clips(self, paths, frame_indices, **kwargs) -> torch.Tensor | None:
        """`load_clips(...)`, or None when any clip is bad; every bad clip of the batch is counted."""
        try:
            return load_clips(paths, frame_indices, **kwargs)
        except VideoDecodeError as error:
            self._record(error)
            first_bad = error.path
        # Count every other bad clip of the batch too, so one episode reports all of its bad files.
        checks = {key: value for key, value in kwargs.items() if key in ("image_size", "decoder")}
        for path, indices_T in zip(paths, _as_index_array(frame_indices), strict=True):
            if str(Path(path)) != first_bad:
                self.load_clip(path, indices_T, **checks)
        return None

    def summary(self) -> str:
        if not self.skipped:
            return "no video skipped"
        lines = [f"{self.count} unreadable video(s) skipped:"]
        lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)
