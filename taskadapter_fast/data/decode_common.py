"""What every decoder shares: the errors, the pixel rule (resize, crop, CLIP normalisation), a clip job.

The decoders live in `decode_video` (PyAV), `decode_frames` (JPEG folders, Pillow) and `decode_dali`;
`decode` picks one and is the module to import from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def clamp_indices(indices: np.ndarray, num_frames: int) -> np.ndarray:
    """The short-video rule: an index past the last frame reads the last frame."""
    return np.minimum(indices, num_frames - 1)


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


@dataclass
class ClipJob:
    """One clip to decode: where it goes in the batch and what to feed the decoder."""

    position: int
    path: Path
    kind: str
    indices: np.ndarray  # [T], clamped
    crop: tuple[int, int]
    encoded: list[np.ndarray] | None = None  # video: [file bytes]; frames: one array per frame
