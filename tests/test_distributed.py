"""Data-parallel training: 2 real processes (torchrun, gloo on CPU) train exactly what one process
accumulating the same two episodes per step trains, also when they resume a run that one process
started and lost before its first periodic save."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import read_adapters, small_overrides

from taskadapter_fast.runconfig import resolve_run_config
from taskadapter_fast.training import recipe, train


def overrides(root) -> list[str]:
    """test_train's tiny dataset, one epoch of 6 episodes at a large learning rate (visible weight changes).

    The lr drops halfway through the epoch: after 3 episodes, which is optimizer step 2 of 3 with two
    episodes a step but step 3 of 6 with one. One validation episode: the second rank's share is empty.
    """
    keep = [o for o in small_overrides(root) if not o.startswith(("train.epochs=", "train.episodes_per_epoch="))]
    return [
        *keep,
        "train.epochs=1",
        "train.episodes_per_epoch=6",
        "train.schedule=step",
        "train.milestones=[0.5]",
        "train.gamma=0.2",
        "train.lr=0.5",
        "train.val_episodes=1",
    ]


@pytest.mark.slow
def test_two_ranks_equal_one_process_accumulating_two_episodes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    single = resolve_run_config(overrides=[*overrides(root), "train.accumulate=2"])
    train(single, tmp_path / "single", device="cpu", progress=False)  # also generates the dataset

    # One process starts the run and dies in its first step, before any periodic save (save_every=2).
    def dies(*args, **kwargs):
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(recipe, "train_step", dies)
    lost = resolve_run_config(overrides=[*overrides(root), "train.accumulate=1"])
    with pytest.raises(RuntimeError, match="went away"):
        train(lost, tmp_path / "ddp", device="cpu", progress=False)
    assert json.loads((tmp_path / "ddp" / "state.json").read_text())["episode"] == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=2",
        "-m",
        "taskadapter_fast.train",
        "--no-progress",
        "--device",
        "cpu",
        "--resume",
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    expected = read_adapters(tmp_path / "single" / "last.safetensors")
    got = read_adapters(tmp_path / "ddp" / "last.safetensors")
    assert set(expected) == set(got)
    moved = 0
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(tensor, read_adapters(tmp_path / "single" / "untrained.safetensors")[name])
    assert moved > 0  # the comparison is not between two untouched models

    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    assert ddp["world_size"] == 2 and ddp["optimizer_steps"] == one["optimizer_steps"] == 3
    assert ddp["train_episodes"] == 6
    # validation and test episodes are split over the ranks and merged back in order
    assert len(ddp["test_per_episode"]) == 3 and len(ddp["val_history"]) == 1
    assert ddp["test_per_episode"] == one["test_per_episode"]
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["episode"] for r in train_records] == [2, 4, 6]  # one writer: no duplicates
    # the schedule of two ranks, not the lost single-process run's (which would drop the lr one step later)
    assert [r["lr"] for r in train_records] == pytest.approx([0.5, 0.5, 0.1])
