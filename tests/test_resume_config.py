"""A run's config and its run directory: a setting that cannot work fails before anything is written (a rerun
into the same directory works), and `--resume` changes only the runtime-only settings, said and recorded,
whether given as overrides or edited into config.yaml; any other change is refused, naming the keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import small_overrides

from taskadapter_fast.runconfig import RUNTIME_KEYS, resolve_run_config
from taskadapter_fast.training import train
from taskadapter_fast.training.state import load_state

WRITTEN = ("config.yaml", "state.json", "state.pt", "metrics.jsonl", "untrained.safetensors", "tensorboard")


def _train(*args: str | Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "taskadapter_fast.train", "--no-progress", "--device", "cpu", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "TAF_TRACEBACK": ""})


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line a failed command printed (and that it printed exactly one)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _nothing_written(run_dir: Path) -> bool:
    """Nothing of a run there: no folder at all (a new run removes the folder it made), or only what was there."""
    return not run_dir.exists() or not any((run_dir / name).exists() for name in (*WRITTEN, ".lock"))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic") / "data"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_root):
    """(run directory, first attempt, it left nothing): a finished tiny run (data.decoder=pyav) and, on a machine
    without a GPU, the failed first attempt into the same directory with data.decoder=dali_gpu (else None)."""
    out = tmp_path_factory.mktemp("run") / "run"
    first, left_nothing = None, True
    if not torch.cuda.is_available():
        first = _train("--output-dir", out, *small_overrides(synthetic_root), "data.decoder=dali_gpu")
        left_nothing = _nothing_written(out)
    rerun = out if left_nothing else out.with_name("elsewhere")  # a bricked directory: the other tests run anyway
    done = _train("--output-dir", rerun, *small_overrides(synthetic_root), "data.decoder=pyav")
    assert done.returncode == 0, done.stderr[-3000:]
    return rerun, first, left_nothing


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    """A copy of the finished run to resume (resuming it tests it again)."""
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def _edit_config(run_dir: Path, section: str, key: str, value) -> None:
    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    tree[section][key] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


# ------------------------------------------------------------------------------------------------ late errors
def test_an_unavailable_decoder_fails_before_anything_is_written_and_a_rerun_works(finished):
    run_dir, first, left_nothing = finished
    if first is None:
        pytest.skip("dali_gpu may run on a machine with a CUDA GPU: the failure needs one without")
    assert "'dali_gpu' cannot run here" in _error_line(first)
    assert left_nothing, "the failed run wrote into its run directory"
    assert run_dir.name == "run"  # the rerun into the same directory trained
    assert json.loads((run_dir / "results.json").read_text())["config"]["data"]["decoder"] == "pyav"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.n_query=3"], "needs at least n_shot + n_query"),
        (["data.root={root}/nowhere"], "none of its"),
        (["data.corpus={tmp}/corpus.yaml"], "does not fit"),
    ],
    ids=["split-sizes", "root", "corpus-coverage"],
)
def test_a_setting_that_cannot_work_fails_before_anything_is_written(
    finished, synthetic_root, tmp_path, overrides, message
):
    (tmp_path / "corpus.yaml").write_text("a star appearing: [one, two, three]\n")
    own_splits = [f"data.{split}_split={synthetic_root}/{split}.txt" for split in ("train", "val", "test")]
    own_splits += [f"data.corpus={synthetic_root}/corpus.yaml", "data.dataset=splits", "data.format=official"]
    filled = [text.format(root=synthetic_root, tmp=tmp_path) for text in overrides]
    out = tmp_path / "out"
    proc = _train("--output-dir", out, *small_overrides(synthetic_root), *own_splits, *filled)
    assert message in _error_line(proc)
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # not even the folder


# ------------------------------------------------------------------------------------------------ resume
def test_resume_applies_runtime_only_overrides_and_says_so(finished, run_copy):
    before = json.loads((finished[0] / "results.json").read_text())
    proc = _train("--resume", run_copy, "data.decoder=auto", "data.prefetch=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "runtime-only" in line]
    assert len(said) == 1 and "data.decoder pyav -> auto" in said[0] and "data.prefetch 1 -> 0" in said[0]
    recorded = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert (recorded["data"]["decoder"], recorded["data"]["prefetch"]) == ("auto", 0)
    after = json.loads((run_copy / "results.json").read_text())
    assert (after["config"]["data"]["decoder"], after["config"]["data"]["prefetch"]) == ("auto", 0)
    assert after["test_per_episode"] == before["test_per_episode"]  # the same maths


@pytest.mark.parametrize("args, key", [(["train.lr=0.1"], "train.lr"), (["--seed", "3"], "train.seed")])
def test_resume_refuses_other_overrides_naming_them(run_copy, args, key):
    config = (run_copy / "config.yaml").read_bytes()
    line = _error_line(_train("--resume", run_copy, "data.prefetch=0", *args))
    assert key in line and "data.prefetch" not in line.split(";")[0]
    assert all(runtime in line for runtime in RUNTIME_KEYS)  # what can change is said
    assert (run_copy / "config.yaml").read_bytes() == config


def test_a_hand_edited_config_is_refused_naming_the_keys(run_copy):
    _edit_config(run_copy, "train", "lr", 0.07)
    _edit_config(run_copy, "data", "n_way", 4)
    results, state = (run_copy / "results.json").read_bytes(), (run_copy / "state.pt").read_bytes()
    line = _error_line(_train("--resume", run_copy))
    assert "config.yaml" in line and "data.n_way, train.lr;" in line
    assert (run_copy / "results.json").read_bytes() == results and (run_copy / "state.pt").read_bytes() == state


def test_a_hand_edited_runtime_setting_is_applied_and_said(run_copy):
    _edit_config(run_copy, "data", "prefetch", 0)
    proc = _train("--resume", run_copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.prefetch 1 -> 0 (runtime-only" in proc.stderr
    assert json.loads((run_copy / "results.json").read_text())["config"]["data"]["prefetch"] == 0


def test_train_refuses_a_changed_run_config_on_resume(run_copy, synthetic_root):
    stored = load_state(run_copy)["run_config"]
    changed = resolve_run_config(overrides=[*small_overrides(synthetic_root), "data.decoder=pyav", "train.lr=0.5"])
    assert json.loads(stored)["train"]["lr"] != changed.train.lr
    with pytest.raises(ValueError, match=r"the run config given differs .* in train\.lr;"):
        train(changed, resume=run_copy, device="cpu", progress=False)
