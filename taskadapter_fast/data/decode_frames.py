"""JPEG frame folders: the `img_00001.jpg` naming, counting and reading frame files, Pillow decoding.

Frame indices are 0-based; a folder holds 1-based `img_{:05d}.jpg` files (index i → file i+1). The DALI
decoders read the same files through `frame_file_paths` and `read_frame_bytes`.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from .decode_common import MissingVideoError, VideoDecodeError, clamp_indices, normalize_frames

# The decoders' one logger: the short-folder warning keeps the name the data CLI prints and log filters use.
logger = logging.getLogger(f"{__package__}.decode")

FRAME_NAME = "img_{:05d}.jpg"
FRAME_PATTERN = re.compile(r"img_\d+\.jpg")


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


_short_folders_reported: set[str] = set()


def frame_file_paths(folder: Path, indices: np.ndarray) -> list[Path]:
    """The frame files at `indices` (clamped to the folder's last frame, warned once per folder)."""
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
    return [folder / FRAME_NAME.format(int(i) + 1) for i in clamp_indices(indices, num_frames)]


def read_frame_bytes(folder: Path, files: list[Path]) -> list[bytes]:
    """The encoded bytes of each frame file; a missing one raises `MissingVideoError` naming the folder."""
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

    files = frame_file_paths(folder, indices)
    images = []
    for file, data in zip(files, read_frame_bytes(folder, files), strict=True):
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.array(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise VideoDecodeError(folder, f"corrupt JPEG frame {file.name} ({error})") from error
        images.append(torch.from_numpy(array).permute(2, 0, 1))
    return images


def load_frames_pillow(folder: Path, indices: np.ndarray, image_size: int, crop: tuple[int, int]) -> torch.Tensor:
    """A frame folder's frames at `indices` → normalised float32 [T, 3, S, S] cropped at `crop` (top, left)."""
    images = _decode_frames_pillow(folder, indices)
    if all(image.shape == images[0].shape for image in images):
        return normalize_frames(torch.stack(images), image_size, crop)
    return torch.cat([normalize_frames(image[None], image_size, crop) for image in images])
