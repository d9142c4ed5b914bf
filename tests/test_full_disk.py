"""A full disk: every writer of the package names the file and the cause in one line, leaves nothing half-written,
and a training run resumes once space is freed; the optional prefix cache is given up with a warning instead.

The disk is real: a small tmpfs mounted for the test (root only; skipped with the reason elsewhere), filled up
with a filler file where a test needs it full at a given moment. The prefix cache's disk writers are also run
from two processes at once.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import small_overrides

from taskadapter_fast._atomic import WriteError, atomic_path, atomic_write_text
from taskadapter_fast.training.runlog import METRICS_FILE, RunLog
from taskadapter_fast.training.state import atomic_torch_save, load_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NO_SPACE = "no space left on device"


# ------------------------------------------------------------------------------------------------ the disk
@pytest.fixture
def small_disk(tmp_path):
    """`mount(size)` -> the folder of a fresh tmpfs of that size (e.g. "1m"), unmounted at the test's end."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
            )
        except FileNotFoundError:
            pytest.skip("no `mount` command here: a small tmpfs that fills up cannot be made")
        if done.returncode != 0:
            pytest.skip(f"a small tmpfs cannot be mounted here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    gc.collect()  # torch's own writer of a failed save, held by the caught exception's frames, keeps its file open
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)  # detached now, freed once unused


def fill(disk: Path, leave: int = 0) -> Path:
    """Take all of the disk's free space but `leave` bytes with a filler file (deleted to free the space)."""
    stat = os.statvfs(disk)
    filler = disk / f"filler{len(list(disk.glob('filler*')))}"
    size = max(stat.f_bavail * stat.f_frsize - leave, 0)
    with open(filler, "wb") as handle:
        handle.write(b"\0" * size)
    return filler


def no_temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ the writers
def _save_adapters(path: Path) -> None:
    from taskadapter_fast import create_model
    from taskadapter_fast.checkpoint import save_adapters

    save_adapters(create_model("tiny"), path)


WRITERS = {  # the package's writers of checkpoints, training states, and config / results / episodes files
    "safetensors": _save_adapters,
    "torch.save": lambda path: atomic_torch_save({"weights": torch.randn(100_000)}, path),
    "text": lambda path: atomic_write_text(path, "x" * 400_000),
    "png": lambda path: _save_png(path),
}


def _save_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from taskadapter_fast._atomic import atomic_savefig

    figure = plt.figure()
    try:
        atomic_savefig(figure, path)
    finally:
        plt.close(figure)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(kind, small_disk):
    disk = small_disk("2m")
    target = disk / "run" / "file.out"
    target.parent.mkdir()
    target.write_bytes(b"the old version")
    fill(disk)
    with pytest.raises(WriteError) as caught:
        WRITERS[kind](target)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert str(caught.value) == f"cannot write {target}: {NO_SPACE}"
    assert target.read_bytes() == b"the old version"
    assert no_temporaries(disk) == []


def test_a_library_that_hides_errno_is_read_from_the_disk(small_disk):
    """torch.save given a path reports a full disk as "unexpected pos": the full file system says why."""
    disk = small_disk("1m")
    fill(disk)
    target = disk / "state.pt"
    with pytest.raises(WriteError, match=f"cannot write {target}: {NO_SPACE}"), atomic_path(target) as temporary:
        torch.save({"weights": torch.randn(100_000)}, temporary)
    assert not target.exists() and no_temporaries(disk) == []


def test_metrics_lines_are_whole_or_absent_on_a_full_disk(small_disk):
    disk = small_disk("1m")
    run_dir = disk / "run"
    run_dir.mkdir()
    runlog = RunLog(run_dir)
    runlog.record("train", 1, {"note": "first"})
    fill(disk)
    with pytest.raises(WriteError) as caught:
        for step in range(2, 200):  # the first few may still fit in the file's last block
            runlog.record("train", step, {"note": "x" * 3000})
    runlog.close()
    assert str(caught.value) == f"cannot write {run_dir / METRICS_FILE}: {NO_SPACE}"
    text = (run_dir / METRICS_FILE).read_text()
    assert text.endswith("\n") and [json.loads(line)["episode"] for line in text.splitlines()][0] == 1


def test_tensorboard_on_a_full_disk_names_its_folder(small_disk):
    pytest.importorskip("torch.utils.tensorboard")
    disk = small_disk("1m")
    run_dir = disk / "run"
    run_dir.mkdir()
    fill(disk)
    with pytest.raises(WriteError) as caught:
        RunLog(run_dir)  # the event file's first record is refused
    assert str(caught.value) == f"cannot write {run_dir / 'tensorboard'}: {NO_SPACE}"


def test_run_cli_reports_any_exception_type_of_a_refused_write_in_one_line(small_disk, capsys, monkeypatch):
    """safetensors' own error type, met outside the package's writers, is one line too."""
    from safetensors.torch import save_file

    from taskadapter_fast.cli import run_cli

    monkeypatch.delenv("TAF_TRACEBACK", raising=False)
    disk = small_disk("1m")
    fill(disk)
    assert run_cli(None, lambda _args: save_file({"w": torch.randn(100_000)}, str(disk / "w.safetensors"))) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "No space left on device" in lines[0], lines


# ------------------------------------------------------------------------------------------------ train
def _train(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "taskadapter_fast.train", "--no-progress", "--device", "cpu", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _one_line_error(process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 1, process.stderr[-3000:]
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and process.stderr.rstrip().endswith(errors[0]), process.stderr[-3000:]
    return errors[0]


def test_train_stops_in_one_line_on_a_full_disk_and_resumes_once_space_is_freed(small_disk, tmp_path):
    disk = small_disk("4m")
    out = disk / "run"
    # Room for the start (config.yaml, untrained.safetensors ~170 KB, the first state.pt ~200 KB) with ~100 KB to
    # spare, not for the next state.pt beside the old one: the save at episode 2 (train.save_every) fails.
    filler = fill(disk, leave=500 << 10)
    failed = _train("--output-dir", str(out), *small_overrides(tmp_path / "data"))
    assert _one_line_error(failed) == f"error: cannot write {out / 'state.pt'}: {NO_SPACE}"
    assert no_temporaries(out) == []
    assert load_state(out)["counters"]["episode"] == 0  # the whole earlier state, not half of the new one
    assert all(json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines())

    # Resumed on a disk still full: the first write that meets it (TensorBoard's rebuilt event file is buffered in
    # its writer thread, so that may be metrics.jsonl, tensorboard or the next state.pt).
    still_full = fill(disk)
    refused = _train("--resume", str(out))
    assert re.fullmatch(f"error: cannot write {re.escape(str(out))}/(metrics.jsonl|tensorboard|state.pt): {NO_SPACE}",
                        _one_line_error(refused))  # fmt: skip

    filler.unlink()
    still_full.unlink()
    resumed = _train("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "results.json").is_file() and no_temporaries(out) == []
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["episode"] for r in records if r["kind"] == "train"] == list(range(1, 17))


def test_train_names_the_checkpoint_it_could_not_write(small_disk, tmp_path):
    disk = small_disk("1m")
    out = disk / "run"
    fill(disk, leave=64 << 10)  # config.yaml fits, untrained.safetensors (~170 KB) does not
    failed = _train("--output-dir", str(out), *small_overrides(tmp_path / "data"))
    assert _one_line_error(failed) == f"error: cannot write {out / 'untrained.safetensors'}: {NO_SPACE}"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # nothing to resume: the same command reruns


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny adapter checkpoint with its run config (synthetic data), as `train` writes them."""
    from taskadapter_fast import create_model
    from taskadapter_fast.checkpoint import save_adapters
    from taskadapter_fast.data.synthetic import make_synthetic_dataset
    from taskadapter_fast.runconfig import RunConfig

    folder = tmp_path_factory.mktemp("full_disk_evaluate")
    synthetic = {"videos_per_class": 3, "min_frames": 8, "max_frames": 10, "size": 32}
    dataset = make_synthetic_dataset(root=folder / "synthetic", **synthetic)
    run = RunConfig.from_dict(
        {
            "model": {"clip_model": "taf-tiny-ViT", "pretrained": None, "adapter_layers": 2, "text_adapter_layers": 1},
            "data": {"dataset": "synthetic", "root": str(dataset.root), "synthetic": synthetic, "decoder": "pyav"},
            "train": {"seed": 3, "eval_seed": 11, "test_episodes": 3},
        }
    )
    torch.manual_seed(3)
    model = create_model(run.model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return save_adapters(model, folder / "best.safetensors", {"run_config": run.to_json()})


def _evaluate(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "taskadapter_fast.evaluate", "--no-progress", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_evaluate_goes_on_without_a_cache_dir_on_a_full_disk(checkpoint, small_disk, tmp_path):
    disk = small_disk("1m")
    fill(disk)
    cache_dir = disk / "cache"
    full = _evaluate("--checkpoint", checkpoint, "--cache-dir", cache_dir, "--output", tmp_path / "full.json")
    assert full.returncode == 0, full.stderr[-3000:]
    warnings = [line for line in full.stderr.splitlines() if "prefix cache" in line]
    assert len(warnings) == 1 and str(cache_dir) in warnings[0] and NO_SPACE in warnings[0], full.stderr
    assert no_temporaries(disk) == []

    plain = _evaluate("--checkpoint", checkpoint, "--output", tmp_path / "plain.json")
    assert plain.returncode == 0, plain.stderr[-3000:]
    got, expected = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("full", "plain"))
    assert got["per_episode"] == expected["per_episode"] and got["accuracy"] == expected["accuracy"]


# ------------------------------------------------------------------------------------------------ two writers
WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from taskadapter_fast.evaluation.cache import PrefixCache

    cache = PrefixCache(max_bytes=0, directory=sys.argv[1])  # nothing kept in memory: every put writes the disk
    cache.fingerprint = "shared"
    for _ in range(int(sys.argv[2])):
        for index in range(8):
            cache.put(("video%d" % index, (0,), None, 32, ()), torch.full((256, 256), float(index)))
    """
)


def test_two_processes_writing_one_prefix_cache_never_leave_half_a_file(tmp_path):
    from taskadapter_fast.evaluation.cache import PrefixCache

    folder = tmp_path / "cache"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), "15"]) for _ in range(2)]
    reader = PrefixCache(max_bytes=0, directory=folder)
    reader.fingerprint = "shared"
    keys = [(f"video{index}", (0,), None, 32, ()) for index in range(8)]
    seen = 0
    try:
        while seen == 0 or any(writer.poll() is None for writer in writers):
            for index, key in enumerate(keys):
                file = reader._file(key)
                if file.is_file():  # a reader never sees half a file: whole, and this entry's value
                    assert torch.equal(torch.load(file, weights_only=True), torch.full((256, 256), float(index)))
                    seen += 1
            if all(writer.poll() is not None for writer in writers):
                break
    finally:
        for writer in writers:
            writer.wait(timeout=120)
    assert [writer.returncode for writer in writers] == [0, 0] and seen
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == sorted(reader._file(k).name for k in keys)
