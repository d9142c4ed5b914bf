"""`predict` at scale: queries stream in batches, results come out as they are ready, memory stays flat."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import termios

import av
import numpy as np
import pytest
from PIL import Image

from taskadapter_fast.data.corpus import save_corpus
from taskadapter_fast.predict import main

CLASSES = ("rising", "sinking")
FRAMES, SIZE = 8, 32  # tiny clips: 200 queries decode and encode in seconds on one core

# Runs `predict` with the arguments after -c and reports its own peak resident memory on the last stderr line.
PEAK_RSS = """
import resource, sys
from taskadapter_fast.predict import main
status = main(sys.argv[1:])
print(f"peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(status)
"""


def clip_frames(direction: int) -> np.ndarray:
    """A bright bar moving up (-1) or down (+1) over a dark background -> [F, H, W, 3] uint8."""
    frames = np.full((FRAMES, SIZE, SIZE, 3), 20, dtype=np.uint8)
    for index in range(FRAMES):
        row = (SIZE // 2 + direction * 3 * index) % (SIZE - 4)
        frames[index, row : row + 4] = 230
    return frames


def write_video(path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12, options={"q:v": "1"})
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    for direction, name in zip((-1, 1), CLASSES, strict=True):
        (folder / "support" / name).mkdir(parents=True)
        write_video(folder / "support" / name / "example.avi", clip_frames(direction))
    write_video(folder / "query.avi", clip_frames(1))
    save_corpus({name: [f"{name} starts.", f"{name} goes on.", f"{name} ends."] for name in CLASSES}, folder / "c.yml")
    base = ["--preset", "tiny", "--device", "cpu", "--decoder", "pyav", "--support", str(folder / "support"),
            "--corpus", str(folder / "c.yml"), "--json", "--no-progress"]  # fmt: skip
    return {"folder": folder, "query": str(folder / "query.avi"), "base": base}


def run_streaming(setup, count: int) -> tuple[list[dict], int, bool]:
    """`predict --json` on `count` queries in a fresh process -> (its JSON lines, its peak RSS in KiB, whether the
    first line came out alone: when it was read, the pipe held less than half of the other lines' bytes, so the
    rest had not been written yet)."""
    command = [sys.executable, "-c", PEAK_RSS, *setup["base"], *[setup["query"]] * count]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        fd = process.stdout.fileno()
        first = b""
        while not first.endswith(b"\n") and (byte := os.read(fd, 1)):  # unbuffered: the rest stays in the pipe
            first += byte
        pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        rest, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    peak = int(err.decode().strip().splitlines()[-1].removeprefix("peak_rss_kib="))
    lines = [first.decode(), *rest.decode().splitlines()]
    early = pending < len(rest) / 2  # `rest` holds every byte after the first line, the pending ones too
    return [json.loads(line) for line in lines if line.strip()], peak, early


def test_peak_memory_does_not_grow_with_the_number_of_queries(setup):
    few, few_peak, _ = run_streaming(setup, 20)
    many, many_peak, early = run_streaming(setup, 200)
    assert len(few) == 20 and len(many) == 200  # one JSON object per line, one line per query
    assert early, "the first result came out only when every query was done"
    assert {result["query"] for result in many} == {setup["query"]}
    assert all(result["scores"] == many[0]["scores"] and set(result["scores"]) == set(CLASSES) for result in many)
    # 180 more clips held at once are > 17 MiB (8 x 3 x 32 x 32 floats each, twice while stacked): 4% of ~850 MiB
    assert many_peak <= few_peak * 1.02, f"peak RSS {many_peak} KiB for 200 queries, {few_peak} KiB for 20"


def test_a_folder_query_stands_for_its_videos(setup, tmp_path, capsys, caplog):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("b.avi", "a.avi"):
        shutil.copy(setup["query"], clips / name)
    (clips / "c").mkdir()  # a JPEG frame folder among the video files
    for number, frame in enumerate(clip_frames(-1), start=1):
        Image.fromarray(frame).save(clips / "c" / f"img_{number:05d}.jpg")
    (clips / "notes.txt").write_text("not a video")
    (clips / "empty").mkdir()
    assert main([*setup["base"], str(clips), str(clips / "c"), setup["query"]]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [str(clips / "a.avi"), str(clips / "b.avi"), str(clips / "c"), str(clips / "c"), setup["query"]]
    assert [result["query"] for result in results] == expected  # sorted by name; a frame folder given is one video
    assert results[2]["scores"] == results[3]["scores"] and results[0]["scores"] == results[4]["scores"]
    assert "left out empty, notes.txt (neither a video file nor a frame folder)" in caplog.text

    (clips / "empty" / "notes.txt").write_text("")
    assert main([*setup["base"], str(clips / "empty")]) == 1
    assert "no videos in the folder" in capsys.readouterr().err
