"""The run directory: its file names, the default location, its lock (one writing process per run directory),
and the checks of `--output-dir`/`--resume` (rank 0 decides, every rank follows its answer)."""

from __future__ import annotations

import datetime
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._lock import FileLock, LockHeld
from ..config import load_config_file
from ..runconfig import (
    RunConfig,
    changed_keys,
    refuse_fixed_keys,
    resolve_run_config,
    run_config_from_json,
    with_runtime_settings,
)
from .distributed import DistInfo, broadcast
from .state import STATE_FILE, load_state

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
TEST_EPISODES_FILE = "test_episodes.json"
LOCK_FILE = ".lock"  # held by the process that writes the run directory, for as long as the run goes on


def default_output_dir() -> Path:
    """`runs/<YYYYmmdd-HHMMSS>-<6 random hex digits>`: runs started in the same second get different folders."""
    return Path("runs") / f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def prepare_run_dir(
    run_config: RunConfig | None, output_dir: str | os.PathLike | None, resume: str | os.PathLike | None
) -> tuple[RunConfig, Path, bool, dict[str, Any] | None]:
    """(run config, run directory, resuming, saved state): a new run's config and directory (no state), or a
    saved run's config and its state (`state.pt`, read once here)."""
    if resume is not None:
        run_dir = Path(resume)
        if output_dir is not None and Path(output_dir).absolute() != run_dir.absolute():
            raise ValueError(f"--resume {resume} continues that run directory; --output-dir {output_dir} differs")
        config, saved = resumed_config(run_dir, run_config)
        return config, run_dir, True, saved
    if run_config is None:
        raise ValueError("train() needs a run config (or resume=RUN_DIR)")
    run_dir = Path(output_dir)  # open_run_dir has named the default folder
    if (run_dir / STATE_FILE).exists() or (run_dir / RESULTS_FILE).exists():
        raise ValueError(f"--output-dir {run_dir} already holds a training run; use --resume {run_dir} or another dir")
    return run_config, run_dir, False, None


def read_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The run config of `run_dir/config.yaml`, with dotted `overrides` applied."""
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a training run directory?)")
    return resolve_run_config(tree=load_config_file(config_file), overrides=overrides)


def resumed_config(run_dir: Path, given: RunConfig | None) -> tuple[RunConfig, dict[str, Any]]:
    """The config a resumed run continues with: the one stored in its state (what it has been computing), with
    the runtime-only settings (`RUNTIME_KEYS`) of `given`, else of `config.yaml`. Any other difference, in
    `given` or in a hand-edited `config.yaml`, is refused naming the keys; a runtime-only change is said.
    Returns it with the run's state (`load_state`, read once here for the run to resume from)."""
    on_disk = read_run_config(run_dir)
    saved = load_state(run_dir)
    stored = run_config_from_json(saved["run_config"])
    where = f"--resume {run_dir}:"
    started = f"the run's own config (in {STATE_FILE})"
    refuse_fixed_keys(changed_keys(stored, on_disk), f"{where} {CONFIG_FILE} differs from {started} in")
    if given is not None:
        refuse_fixed_keys(changed_keys(stored, given), f"{where} the run config given differs from {started} in")
    config = with_runtime_settings(stored, given or on_disk)
    changes = changed_keys(stored, config)
    if changes:
        said = ", ".join(f"{key} {_setting(stored, key)} -> {_setting(config, key)}" for key in changes)
        print(f"{where} {said} (runtime-only: the run computes the same)", file=sys.stderr)
    return config, saved


def _setting(config: RunConfig, key: str):
    """The value of a runtime-only setting ("section.name")."""
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def open_run_dir(
    run_config: RunConfig | None,
    output_dir: str | os.PathLike | None,
    resume: str | os.PathLike | None,
    dist_info: DistInfo,
) -> tuple[RunConfig, Path, bool, dict[str, Any] | None, FileLock | None]:
    """`prepare_run_dir` on rank 0 (it alone writes the directory), its answer or its error on every rank.

    Rank 0 also takes the run directory's lock, which it holds for the whole run: the last value, to be
    released when the run ends (None on the other ranks). A directory another process writes is refused.
    """
    if output_dir is None and resume is None:
        output_dir = broadcast(str(default_output_dir()), dist_info)
    prepared, lock, problem = None, None, None
    if dist_info.is_main:
        try:
            prepared, lock = _prepare_locked(run_config, output_dir, resume)
        except (ValueError, FileNotFoundError, LockHeld) as exc:
            problem = exc
    problem_text = broadcast(None if problem is None else str(problem), dist_info)
    if problem is not None:
        raise problem
    if problem_text is not None:
        raise ValueError(problem_text)
    return (*broadcast(prepared, dist_info), lock)


def _prepare_locked(
    run_config: RunConfig | None, output_dir: str | os.PathLike | None, resume: str | os.PathLike | None
) -> tuple[tuple[RunConfig, Path, bool, dict[str, Any] | None], FileLock | None]:
    """`prepare_run_dir` checked under the run directory's lock (taken first, so no other process can start
    writing between the checks and this run), and the lock, held."""
    run_dir = Path(resume if resume is not None else output_dir)
    if resume is None and run_config is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    if not run_dir.is_dir():  # nothing to lock: prepare_run_dir says what is wrong
        return prepare_run_dir(run_config, output_dir, resume), None
    lock = FileLock(run_dir / LOCK_FILE, what=f"run directory {run_dir}")
    try:
        return prepare_run_dir(run_config, output_dir, resume), lock
    except BaseException:
        lock.release()
        raise


def write_config(run: RunConfig, run_dir: Path, resuming: bool, dist_info: DistInfo) -> None:
    """Write the resolved run config into the run directory (rank 0; `open_run_dir` made the folder). A resumed
    run's file is rewritten only when a runtime-only setting changed (`resumed_config`)."""
    if dist_info.is_main:
        if not resuming or read_run_config(run_dir).to_dict() != run.to_dict():
            atomic_write_text(run_dir / CONFIG_FILE, run.to_yaml())
