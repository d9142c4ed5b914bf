"""Test helpers shared by several test modules: tiny episodes and corpora for the model, and a small
training run's overrides. Test modules import from here, never from each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

T = 8  # frames a video (ModelConfig's default num_frames)
S = 32  # height and width of a frame (the tiny preset's input size)


def make_corpus(num_classes: int) -> dict[str, list[str]]:
    return {
        f"class {c}": [f"the {c} thing begins", f"the {c} thing goes on", f"the {c} thing ends"]
        for c in range(num_classes)
    }


def make_episode(num_classes=3, shots=2, queries=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    support = torch.randn(num_classes * shots, T, 3, S, S, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(shots)
    query = torch.randn(num_classes * queries, T, 3, S, S, generator=gen)
    query_labels = torch.arange(num_classes).repeat_interleave(queries)
    names = [f"class {c}" for c in range(num_classes)]
    return support, labels, query, query_labels, names


def randomize_adapters(model, seed=1, scale=0.05):
    """Zero-initialised fc2s make adapters the identity; give them values so the tests see them work."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def small_overrides(root: Path) -> list[str]:
    """A tiny synthetic dataset (3 videos a class, 8-10 frames, no distractors) and a short protocol."""
    return [
        "model.clip_model=taf-tiny-ViT",
        f"data.root={root}",
        "data.synthetic.videos_per_class=3",
        "data.synthetic.min_frames=8",
        "data.synthetic.max_frames=10",
        "data.synthetic.size=32",
        "data.synthetic.distractors=0",
        "data.prefetch=1",
        "train.warmup_epochs=0",
        "train.cpu_threads=1",
        "train.epochs=2",
        "train.episodes_per_epoch=8",
        "train.val_episodes=2",
        "train.test_episodes=3",
        "train.save_every=2",
        "train.log_every=1",
        "train.schedule=cosine",
        "train.lr=0.05",
    ]


def read_adapters(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------ split files
def make_frame_folder(path, num_frames: int) -> None:
    path.mkdir(parents=True)
    for number in range(1, num_frames + 1):
        (path / f"img_{number:05d}.jpg").write_bytes(b"")  # read_split and prepare only count names


def write_lines(path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def run_prepare(*args):
    return subprocess.run(
        [sys.executable, "-m", "taskadapter_fast.data", "prepare", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_main(main, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """A command's `main(args)` in this process -> (returncode, stdout, stderr), argparse's exits included; `cwd`
    and `env` (added to the environment) hold while it runs."""
    import contextlib
    import io
    import os
    import types

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                returncode = main(list(args))
            except SystemExit as exc:  # argparse
                returncode = exc.code
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return types.SimpleNamespace(returncode=returncode, stdout=stdout.getvalue(), stderr=stderr.getvalue())


CODECS = {  # name: (file suffix, FFmpeg encoder, pixel format, encoder options)
    "vp9": (".webm", "libvpx-vp9", "yuv420p", {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "h264": (".mp4", "libx264", "yuv420p", {"crf": "0", "preset": "ultrafast"}),
    "mjpeg": (".avi", "mjpeg", "yuvj420p", {"q:v": "2"}),
    "mpeg4": (".avi", "mpeg4", "yuv420p", {"q:v": "1"}),
}


def write_video(path, codec: str, frames_FHW3) -> None:
    """Encode uint8 frames [F, H, W, 3] with PyAV (a real file of the codec named in CODECS)."""
    import av

    _, encoder, pix_fmt, options = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=12, options=options)
        stream.width, stream.height, stream.pix_fmt = frames_FHW3.shape[2], frames_FHW3.shape[1], pix_fmt
        for frame in frames_FHW3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
