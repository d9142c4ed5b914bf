"""What a training run reports as it goes: `metrics.jsonl` (one JSON line per record) and TensorBoard
event files, both from rank 0 only, and the plots drawn from `metrics.jsonl` at the end."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .._atomic import as_write_error

METRICS_FILE = "metrics.jsonl"


def _tensorboard_thread_errors(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread dies on a write the disk refuses, and TensorBoard raises that error again in the
    thread that writes next (where `RunLog` names the folder): printed from the thread too, it would be a traceback
    before the one-line error."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
        return
    _previous_excepthook(args)


_previous_excepthook, threading.excepthook = threading.excepthook, _tensorboard_thread_errors


class RunLog:
    """metrics.jsonl + TensorBoard, written by rank 0 only (a no-op elsewhere)."""

    def __init__(self, run_dir: Path | None, purge_step: int | None = None, metrics_bytes: int | None = None):
        self.run_dir = run_dir
        self.writer = None
        self.metrics = None
        if run_dir is None:
            return
        path = run_dir / METRICS_FILE
        if metrics_bytes is not None and path.exists():
            # Lines written after the saved state belong to work that is now redone.
            with open(path, "r+b") as handle:
                handle.truncate(metrics_bytes)
        self.metrics = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            warnings.warn(
                f"TensorBoard event files are not written: torch.utils.tensorboard needs the `tensorboard` package "
                f"(pip install tensorboard): {exc}",
                stacklevel=2,
            )
        else:
            try:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
            except OSError as error:  # its event file's first record refused
                raise as_write_error(run_dir / "tensorboard", error) from error

    @property
    def metrics_bytes(self) -> int:
        if self.metrics is None:
            return 0
        self.metrics.flush()
        return self.metrics.tell()

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if self.metrics is None:
            return
        line = {"kind": kind, "episode": step, **values, "time": round(time.time(), 3)}
        self._append(json.dumps(line) + "\n")
        if self.writer is not None:
            try:
                for key, value in values.items():
                    if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
                        self.writer.add_scalar(f"{kind}/{key}", value, step)
            except OSError as error:  # its writer thread's failure, met at the next call
                raise as_write_error(self.run_dir / "tensorboard", error) from error

    def _append(self, text: str) -> None:
        """One whole line onto metrics.jsonl; where the disk refuses it, none of it, and a `WriteError`."""
        assert self.metrics is not None and self.run_dir is not None
        start = self.metrics.tell()
        try:
            self.metrics.write(text)
            self.metrics.flush()
        except OSError as error:
            # Closed first (its flush of the rest fails again or lands; either way nothing is written later), then
            # cut back to the last whole line (truncating needs no space).
            path, handle, self.metrics = self.run_dir / METRICS_FILE, self.metrics, None
            with contextlib.suppress(OSError):
                handle.close()
            with contextlib.suppress(OSError):
                os.truncate(path, start)
            raise as_write_error(path, error) from error

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as error:
                raise as_write_error(self.run_dir / "tensorboard", error) from error


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl`, oldest first ([] where there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_plots(run_dir: Path) -> list[Path]:
    """curves.png (training loss and accuracy per episode, validation accuracy) and val_accuracy.png."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        warnings.warn(f"plots are not written: they need matplotlib (pip install matplotlib): {exc}", stacklevel=2)
        return []
    records = read_metrics(run_dir)
    train_rows = [r for r in records if r["kind"] == "train"]
    val_rows = [r for r in records if r["kind"] == "val"]
    written = []

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    episodes = [r["episode"] for r in train_rows]
    ax_loss.plot(episodes, [r["loss"] for r in train_rows], color="tab:red")
    ax_loss.set(xlabel="training episode", ylabel="loss", title="training loss")
    ax_acc.plot(episodes, [r["accuracy"] for r in train_rows], label="train (log interval)", color="tab:blue")
    if val_rows:
        ax_acc.errorbar(
            [r["episode"] for r in val_rows],
            [r["accuracy"] for r in val_rows],
            yerr=[r["ci95"] for r in val_rows],
            label="validation",
            color="tab:green",
            marker="o",
            capsize=3,
        )
    ax_acc.set(xlabel="training episode", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    written.append(run_dir / "curves.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    if val_rows:
        ax.errorbar(
            [r["epoch"] for r in val_rows],
            [r["accuracy"] for r in val_rows],
            yerr=[r["ci95"] for r in val_rows],
            marker="o",
            capsize=3,
            color="tab:green",
        )
    else:
        ax.text(0.5, 0.5, "no validation ran", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy per epoch")
    fig.tight_layout()
    written.append(run_dir / "val_accuracy.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
