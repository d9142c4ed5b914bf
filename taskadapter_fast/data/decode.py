"""Clip decoding: video files and JPEG frame folders → normalised `[T, 3, S, S]` tensors (docs/method.md §1.3).

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

This module picks the decoder and is the one to import from; the decoders live beside it:
`decode_video` (video files through PyAV, probing), `decode_frames` (JPEG frame folders, Pillow),
`decode_dali` (the DALI pipelines), and `decode_common` what they share (errors, resize/crop/normalise).

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

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..runconfig import DECODERS  # the one list of decoder names
from .decode_common import (
    CLIP_MEAN,
    CLIP_STD,
    ClipJob,
    DecoderUnavailableError,
    MissingVideoError,
    UnsupportedCodecError,
    VideoDecodeError,
    center_crop_offset,
    normalize_frames,
    resize_size,
)
from .decode_dali import (
    DALI_CPU_CODECS,
    DALI_GPU_CODECS,
    dali_error_text,
    dali_gpu_index,
    dali_unavailable_reasons,
    mark_dali_broken,
    prepare_dali_job,
    run_dali_jobs,
)
from .decode_frames import FRAME_NAME, FRAME_PATTERN, count_frame_files, load_frames_pillow
from .decode_video import VIDEO_EXTENSIONS, VideoInfo, load_video_pyav, probe_video

__all__ = [  # the public decoding API, wherever each name is defined
    "CLIP_MEAN",
    "CLIP_STD",
    "DALI_CPU_CODECS",
    "DALI_GPU_CODECS",
    "DECODERS",
    "FRAME_NAME",
    "FRAME_PATTERN",
    "VIDEO_EXTENSIONS",
    "DecoderUnavailableError",
    "MissingVideoError",
    "SkipCounter",
    "UnsupportedCodecError",
    "VideoDecodeError",
    "VideoInfo",
    "center_crop_offset",
    "choose_decoder",
    "count_frame_files",
    "dali_gpu_index",
    "dali_unavailable_reasons",
    "load_clip",
    "load_clips",
    "normalize_frames",
    "probe_video",
    "resize_size",
    "video_kind",
]

logger = logging.getLogger(__name__)


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


def _load_pyav(job: ClipJob, image_size: int) -> torch.Tensor:
    """The "pyav" decoder: video files through PyAV, frame folders through Pillow."""
    load = load_video_pyav if job.kind == "video" else load_frames_pillow
    return load(job.path, job.indices, image_size, job.crop)


def _load_dali(
    jobs: list[ClipJob], dali_device: str, image_size: int, device: torch.device | str | None, fallback: bool
) -> list[torch.Tensor]:
    """The "dali_cpu" / "dali_gpu" decoder → one clip per job, in order.

    `fallback` (decoder=auto): a pipeline that cannot even be built here sends these clips, and the rest
    of the run, to pyav.
    """
    gpu_index = dali_gpu_index(device) if dali_device == "gpu" else None
    for job in jobs:
        prepare_dali_job(job, dali_device)
    clips: dict[int, torch.Tensor] = {}  # by job position
    for kind in ("video", "frames"):
        group = [job for job in jobs if job.kind == kind]
        if not group:
            continue
        try:
            outputs = run_dali_jobs(group, dali_device, image_size, gpu_index)
        except VideoDecodeError:
            raise
        except Exception as error:
            if not fallback:
                raise
            # A DALI pipeline that cannot even be built here: auto falls back for the whole run.
            mark_dali_broken(dali_device, f"the DALI pipeline failed: {dali_error_text(error)}")
            logger.warning("dali_%s failed (%s); decoder=auto falls back to pyav", dali_device, error)
            outputs = [_load_pyav(job, image_size) for job in group]
        clips.update((job.position, clip) for job, clip in zip(group, outputs, strict=True))
    return [clips[job.position] for job in jobs]


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
    jobs_by_decoder: dict[str, list[ClipJob]] = {}
    for position, path in enumerate(paths):
        kind = video_kind(path)
        crop = _resolve_crop(image_size, train, None if crop_offsets is None else crop_offsets[position])
        chosen = _auto_decoder(path, kind) if requested == "auto" else requested
        jobs_by_decoder.setdefault(chosen, []).append(ClipJob(position, path, kind, indices_VT[position], crop))

    clips: list[torch.Tensor | None] = [None] * len(paths)
    for chosen, jobs in jobs_by_decoder.items():
        if chosen == "pyav":
            outputs = [_load_pyav(job, image_size) for job in jobs]
        else:
            outputs = _load_dali(jobs, chosen.removeprefix("dali_"), image_size, device, fallback=requested == "auto")
        for job, clip in zip(jobs, outputs, strict=True):
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
    """Decode one clip → float `[T, 3, S, S]`, normalised as docs/method.md §1.3 says.

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
