"""Decoding throughput: frames/s into normalised 224x224 tensors, on the same files, in one run.

Cases (eval crops, T = 8 frames per clip, 8 clips per pass over 320x240 sources):
- `official`: the official loader's style, Pillow open → Resize((257, 257)) → CenterCrop(224) →
  ToTensor → Normalize per JPEG frame, in 2 DataLoader workers (persistent, so worker start-up is
  not timed). This is the reference output for the JPEG cases.
- `pyav`: this package's fallback, single process, on the JPEG folders and on VP9 webm files.
- `dali_cpu` / `dali_gpu`: the DALI pipelines on the JPEG folders and on VP9 webm (skipped, with
  the reason, where DALI or a GPU is missing).
Each case first checks its output against the reference on the same clips: JPEG cases against
`official` (at most 1 grey level apart), video cases against the `pyav` decode of the same webm
(mean <= 2.5 grey levels, 99th percentile <= 16: DALI and FFmpeg upsample 4:2:0 chroma differently).

Run: `pytest benchmarks/test_bench_decode.py --benchmark-only`; frames/s and the device are in
each case's `extra_info` (and `--benchmark-json`). Numbers depend on the machine: compare cases of
one run only.
"""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from taskadapter_fast.data import frame_indices
from taskadapter_fast.data.decode import CLIP_MEAN, CLIP_STD, dali_unavailable_reasons, load_clips, resize_size

IMAGE_SIZE = 224
NUM_CLIPS, NUM_SOURCE_FRAMES, T = 8, 32, 8
WIDTH, HEIGHT = 320, 240
FRAMES_PER_PASS = NUM_CLIPS * T
# Eval TSN indices (docs/method.md §1.2): segment centres of a 32-frame video, from the episode sampler.
INDICES = frame_indices([NUM_SOURCE_FRAMES], T)[0]

_MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _levels(clips: torch.Tensor) -> torch.Tensor:
    return (clips.float().cpu() * _STD + _MEAN) * 255.0


def _frames(seed: int) -> np.ndarray:
    """Smooth moving colour patterns with a bright disc: realistic work for JPEG and VP9."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    out = np.empty((NUM_SOURCE_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    for f in range(NUM_SOURCE_FRAMES):
        image = np.stack([128 + 100 * np.sin(xs / 23 + ys / 31 + p + f / 5) for p in phase], axis=-1)
        disc = (xs - 40 - 7 * f) ** 2 + (ys - 120) ** 2 < 900
        image[disc] = (240, 60, 50)
        out[f] = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode_bench")
    folders, videos = [], []
    for clip in range(NUM_CLIPS):
        frames = _frames(clip)
        folder = root / f"frames_{clip}"
        folder.mkdir()
        for number, frame in enumerate(frames, start=1):
            Image.fromarray(frame).save(folder / f"img_{number:05d}.jpg", quality=90)
        video = root / f"video_{clip}.webm"
        with av.open(str(video), "w") as container:
            stream = container.add_stream(
                "libvpx-vp9", rate=12, options={"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
            )
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        folders.append(folder)
        videos.append(video)
    return {"frames": folders, "video": videos}


class OfficialStyleClips(Dataset):
    """The official loader's per-frame work: Pillow open, square resize, centre crop, normalise."""

    def __init__(self, folders):
        self.folders = folders
        self.transform = transforms.Compose(
            [
                transforms.Resize((resize_size(IMAGE_SIZE), resize_size(IMAGE_SIZE))),
                transforms.CenterCrop(IMAGE_SIZE),
                transforms.ToTensor(),
                transforms.Normalize(CLIP_MEAN, CLIP_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, index: int) -> torch.Tensor:
        frames = []
        for i in INDICES:
            image = Image.open(self.folders[index] / f"img_{i + 1:05d}.jpg").convert("RGB")
            frames.append(self.transform(image))
        return torch.stack(frames)


@pytest.fixture(scope="module")
def official_loader(media):
    loader = DataLoader(
        OfficialStyleClips(media["frames"]), batch_size=NUM_CLIPS, num_workers=2, persistent_workers=True
    )
    yield loader
    del loader


@pytest.fixture(scope="module")
def reference(media, official_loader):
    """Reference outputs: official style for the JPEG folders, PyAV for the webm files."""
    return {
        "frames": next(iter(official_loader)),
        "video": load_clips(media["video"], np.tile(INDICES, (NUM_CLIPS, 1)), IMAGE_SIZE, decoder="pyav"),
    }


def _check(output: torch.Tensor, expected: torch.Tensor, source: str) -> None:
    assert output.shape == expected.shape == (NUM_CLIPS, T, 3, IMAGE_SIZE, IMAGE_SIZE)
    difference = (_levels(output.flatten(0, 1)) - _levels(expected.flatten(0, 1))).abs()
    if source == "frames":
        assert difference.max() <= 1.01, f"max difference {difference.max():.2f} grey levels"
    else:
        assert difference.mean() <= 2.5, f"mean difference {difference.mean():.2f} grey levels"
        assert torch.quantile(difference.flatten()[::7], 0.99) <= 16.0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "cpu")
    except OSError:
        model = "cpu"
    return f"{model} ({len(os.sched_getaffinity(0))} cores usable)"


def _record(benchmark, name: str, source: str, device_name: str) -> None:
    """Throughput from the median round; the device is the GPU only for dali_gpu."""
    if benchmark.stats is None:  # --benchmark-disable: the case ran once, untimed
        return
    device_name = device_name if name == "dali_gpu" else _cpu_name()
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "case": name,
            "source": "JPEG frame folders" if source == "frames" else "VP9 webm",
            "frames_per_s": round(FRAMES_PER_PASS / seconds, 1),
            "frames_per_pass": FRAMES_PER_PASS,
            "image_size": IMAGE_SIZE,
            "device": device_name,
        }
    )


def test_official_style_pillow_dataloader(benchmark, official_loader, reference, device_name):
    _check(next(iter(official_loader)), reference["frames"], "frames")
    benchmark.group = "decode frames"
    benchmark.pedantic(lambda: [batch for batch in official_loader], rounds=10, warmup_rounds=1)
    _record(benchmark, "official (Pillow, 2 DataLoader workers)", "frames", device_name)


def _decoder_case(benchmark, media, reference, decoder: str, source: str, device_name: str) -> None:
    indices = np.tile(INDICES, (NUM_CLIPS, 1))

    def run():
        clips = load_clips(media[source], indices, IMAGE_SIZE, decoder=decoder)
        if clips.is_cuda:
            torch.cuda.synchronize()
        return clips

    _check(run(), reference[source], source)
    benchmark.group = "decode frames" if source == "frames" else "decode webm"
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    _record(benchmark, decoder, source, device_name)


@pytest.mark.parametrize("source", ["frames", "video"])
def test_pyav_fallback(benchmark, media, reference, source, device_name):
    _decoder_case(benchmark, media, reference, "pyav", source, device_name)


@pytest.mark.dali
@pytest.mark.skipif(bool(dali_unavailable_reasons("cpu")), reason="; ".join(dali_unavailable_reasons("cpu")) or "-")
@pytest.mark.parametrize("source", ["frames", "video"])
def test_dali_cpu(benchmark, media, reference, source, device_name):
    _decoder_case(benchmark, media, reference, "dali_cpu", source, device_name)


@pytest.mark.dali
@pytest.mark.gpu
@pytest.mark.skipif(bool(dali_unavailable_reasons("gpu")), reason="; ".join(dali_unavailable_reasons("gpu")) or "-")
@pytest.mark.parametrize("source", ["frames", "video"])
def test_dali_gpu(benchmark, media, reference, source, device_name):
    _decoder_case(benchmark, media, reference, "dali_gpu", source, device_name)
