"""The run directory: its file names, the default location, and the checks of `--output-dir`/`--resume`
(rank 0 decides, every rank follows its answer)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from .._atomic import atomic_write_text
from ..runconfig import RunConfig
from .distributed import DistInfo, broadcast
from .state import STATE_FILE

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
TEST_EPISODES_FILE = "test_episodes.json"


def default_output_dir() -> Path:
    return Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(
    run_config: RunConfig | None, output_dir: str | os.PathLike | None, resume: str | os.PathLike | None
) -> tuple[RunConfig, Path, bool]:
    """(run config, run directory, resuming): a new run's config and directory, or a saved run's config."""
    if resume is not None:
        run_dir = Path(resume)
        if output_dir is not None and Path(output_dir).absolute() != run_dir.absolute():
            raise ValueError(f"--resume {resume} continues that run directory; --output-dir {output_dir} differs")
        config_file = run_dir / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a training run directory?)")
        from ..config import load_config_file

        saved = RunConfig.from_dict(load_config_file(config_file))
        if run_config is not None and run_config.to_dict() != saved.to_dict():
            raise ValueError(f"--resume {run_dir}: the run's config ({config_file}) cannot be changed on resume")
        return saved, run_dir, True
    if run_config is None:
        raise ValueError("train() needs a run config (or resume=RUN_DIR)")
    run_dir = Path(output_dir) if output_dir is not None else default_output_dir()
    if (run_dir / STATE_FILE).exists() or (run_dir / RESULTS_FILE).exists():
        raise ValueError(f"--output-dir {run_dir} already holds a training run; use --resume {run_dir} or another dir")
    return run_config, run_dir, False


def open_run_dir(
    run_config: RunConfig | None,
    output_dir: str | os.PathLike | None,
    resume: str | os.PathLike | None,
    dist_info: DistInfo,
) -> tuple[RunConfig, Path, bool]:
    """`prepare_run_dir` on rank 0 (it alone writes the directory), its answer or its error on every rank."""
    if dist_info.enabled and output_dir is None and resume is None:
        output_dir = broadcast(str(default_output_dir()), dist_info)
    prepared, problem = None, None
    if dist_info.is_main:
        try:
            prepared = prepare_run_dir(run_config, output_dir, resume)
        except (ValueError, FileNotFoundError) as exc:
            problem = exc
    problem_text = broadcast(None if problem is None else str(problem), dist_info)
    if problem is not None:
        raise problem
    if problem_text is not None:
        raise ValueError(problem_text)
    return broadcast(prepared, dist_info)


def write_config(run: RunConfig, run_dir: Path, resuming: bool, dist_info: DistInfo) -> None:
    """Create the run directory and write the resolved run config into it (rank 0; a resumed run keeps its own)."""
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            atomic_write_text(run_dir / CONFIG_FILE, run.to_yaml())
