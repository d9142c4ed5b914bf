"""The NVIDIA DALI decoders `dali_cpu` and `dali_gpu` (what each decodes: `decode`'s docstring).

Availability checks, one built pipeline per (device, source, image size, GPU), the jobs fed to it: the
encoded bytes, the crop and, for videos, the frame indices (external sources).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import torch

from .decode_common import (
    CLIP_MEAN,
    CLIP_STD,
    ClipJob,
    UnsupportedCodecError,
    VideoDecodeError,
    clamp_indices,
    resize_size,
)
from .decode_frames import frame_file_paths, read_frame_bytes
from .decode_video import probe_video

# Codec names as FFmpeg reports them. DALI's CPU video decoder is FFmpeg's software decoder limited
# to these; the mixed (GPU) one adds what NVDEC decodes.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"})

_DALI_VIDEO_BATCH = 16  # clips per DALI run
_DALI_IMAGE_BATCH = 128  # JPEG frames per DALI run

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


def mark_dali_broken(device: str, why: str) -> None:
    """DALI on `device` failed to build a pipeline: `dali_unavailable_reasons` says `why` from now on."""
    _dali_broken[device] = why


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


def dali_error_text(error: Exception) -> str:
    """The line of a DALI exception that says what went wrong (its messages run to many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "rror" in line or "not supported" in line or "ailed" in line]
    return (useful[-1] if useful else lines[-1] if lines else type(error).__name__)[:300]


def prepare_dali_job(job: ClipJob, device: str) -> None:
    """Check `job` can go through dali_`device` (codec, truncation), clamp its indices, read its bytes."""
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
        job.indices = clamp_indices(job.indices, info.num_frames)
        job.encoded = [np.fromfile(job.path, dtype=np.uint8)]
    else:
        files = frame_file_paths(job.path, job.indices)
        job.encoded = [np.frombuffer(data, dtype=np.uint8) for data in read_frame_bytes(job.path, files)]


def run_dali_jobs(jobs: list[ClipJob], device: str, image_size: int, gpu_index: int | None) -> list[torch.Tensor]:
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
                    chunk[0].path, f"dali_{device} cannot decode it: {dali_error_text(error)}"
                ) from error
            # Find which clip broke the batch: decode them one by one (each failure rebuilds the pipeline).
            for job in chunk:
                run_dali_jobs([job], device, image_size, gpu_index)
            raise
        if source == "video":
            results.extend(batch.unbind(0))
        else:
            results.extend(batch.view(len(chunk), per_item, *batch.shape[1:]).unbind(0))
        runner = _dali_runner(device, source, image_size, gpu_index)
    return results
