"""One process per run directory (and per `evaluate --output` file), default run names that never collide, and
TensorBoard after a resume: real `python -m taskadapter_fast...` processes, stopped and killed with signals."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import small_overrides

from taskadapter_fast.runconfig import resolve_run_config
from taskadapter_fast.training import train

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _train_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskadapter_fast.train", "--no-progress", "--device", "cpu", *args]


def _one_line_error(process: subprocess.CompletedProcess) -> str:
    err = process.stderr.strip()
    assert process.returncode != 0 and "Traceback" not in err, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run directory, read back from its event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _assert_same_scalars(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in got[tag]] == [step for step, _ in points], tag
        if not tag.endswith("episodes_per_s"):  # a speed, not a result
            assert got[tag] == points, tag


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic") / "data"


@pytest.fixture(scope="module")
def reference_run(synthetic_root, tmp_path_factory) -> Path:
    """An uninterrupted run (it also generates the synthetic dataset the subprocesses use)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    train(resolve_run_config(overrides=small_overrides(synthetic_root)), out, device="cpu", progress=False)
    return out


def _stop_when(proc: subprocess.Popen, state_file: Path, ready, timeout: float = 120) -> dict:
    """SIGSTOP `proc` as soon as its state.json satisfies `ready`; that state (the process is stopped, alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if ready(state):
                proc.send_signal(signal.SIGSTOP)
                return state
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the run ended before it reached the state wanted: {proc.communicate()[1].decode()[-2000:]}")


def test_a_running_directory_is_refused_and_a_killed_one_resumes_with_exact_tensorboard(
    reference_run, synthetic_root, tmp_path
):
    out = tmp_path / "run"
    first = subprocess.Popen(
        _train_cli("--output-dir", str(out), *small_overrides(synthetic_root)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Just after the first epoch's validation was recorded and its state saved: the step of that state is
        # logged (train/*, val/*) and will not be logged again after the resume.
        state = _stop_when(first, out / "state.json", lambda state: state["epochs_done"] == 1)
        assert state["episode"] >= 8
        for args in (["--output-dir", str(out), *small_overrides(synthetic_root)], ["--resume", str(out)]):
            started = time.monotonic()
            second = subprocess.run(_train_cli(*args), env=ENV, capture_output=True, text=True, timeout=120)
            err = _one_line_error(second)
            assert f"run directory {out} is in use by pid {first.pid} on " in err, err
            assert time.monotonic() - started < 60 and first.poll() is None  # refused while the first one runs
    finally:
        first.send_signal(signal.SIGKILL)  # a stopped process dies of SIGKILL too
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert (out / ".lock").is_file()  # what kill -9 leaves: a file, not a held lock

    resumed = subprocess.run(_train_cli("--resume", str(out)), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and not (out / ".lock").exists()
    expected = _scalars(reference_run)
    assert [step for step, _ in expected["val/accuracy"]] == [8, 16]
    _assert_same_scalars(_scalars(out), expected)


def test_a_resume_that_redoes_only_the_test_keeps_tensorboard_exact(reference_run, tmp_path):
    # A run killed while testing: its state is the last epoch's, whose step the test's scalars share.
    out = tmp_path / "killed_while_testing"
    shutil.copytree(reference_run, out)
    (out / "results.json").unlink()
    train(None, resume=out, device="cpu", progress=False)
    _assert_same_scalars(_scalars(out), _scalars(reference_run))
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_run_that_fails_releases_its_directory(reference_run, synthetic_root, tmp_path, monkeypatch):
    from taskadapter_fast._lock import FileLock
    from taskadapter_fast.training import recipe

    def fails(*args, **kwargs):
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(recipe, "train_step", fails)
    with pytest.raises(RuntimeError, match="went away"):
        train(resolve_run_config(overrides=small_overrides(synthetic_root)), tmp_path, device="cpu", progress=False)
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(ValueError, match="already holds a training run"):  # refused under the lock, which it frees
        train(resolve_run_config(overrides=small_overrides(synthetic_root)), reference_run, progress=False)
    FileLock(reference_run / ".lock").release()  # free, in this very process too


def test_default_run_directories_started_together_differ(reference_run, synthetic_root, tmp_path):
    short = ["train.epochs=1", "train.episodes_per_epoch=2", "train.val_episodes=1", "train.test_episodes=1"]
    argv = _train_cli(*small_overrides(synthetic_root), *short)
    runs = [subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"]
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2, folders
    for folder in folders:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", folder.name), folder.name
        assert json.loads((folder / "results.json").read_text())["output_dir"] == f"runs/{folder.name}"
        assert sum(1 for line in (folder / "metrics.jsonl").read_text().splitlines() if '"kind": "test"' in line) == 1


def test_evaluate_output_held_by_another_process_is_refused(reference_run, tmp_path):
    output = tmp_path / "report.json"
    argv = [sys.executable, "-m", "taskadapter_fast.evaluate", "--checkpoint", str(reference_run / "best.safetensors")]
    argv += ["--episodes", "1", "--no-progress", "--output", str(output)]
    with open(tmp_path / "report.json.lock", "w") as holder:  # this process writes report.json
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write(f"pid {os.getpid()} on here\n")
        holder.flush()
        refused = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)
    err = _one_line_error(refused)
    assert f"--output {output} is in use by pid {os.getpid()} on here" in err, err
    assert not output.exists()

    written = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)  # released: it runs
    assert written.returncode == 0, written.stderr[-3000:]
    assert json.loads(output.read_text())["episodes"] == 1
    assert not (tmp_path / "report.json.lock").exists()
