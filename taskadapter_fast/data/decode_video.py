"""Video files through PyAV (FFmpeg): open, probe (codec, frame count), decode the requested frames.

Also the probe the DALI decoders and the split preparation rely on (`probe_video`, cached per file version).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .decode_common import MissingVideoError, VideoDecodeError, clamp_indices, normalize_frames

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


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
    return np.stack([decoded[int(i)] for i in clamp_indices(indices, count)])


def load_video_pyav(path: Path, indices: np.ndarray, image_size: int, crop: tuple[int, int]) -> torch.Tensor:
    """A video file's frames at `indices` → normalised float32 [T, 3, S, S] cropped at `crop` (top, left)."""
    frames = torch.from_numpy(_decode_video_pyav(path, indices)).permute(0, 3, 1, 2)
    return normalize_frames(frames, image_size, crop)
