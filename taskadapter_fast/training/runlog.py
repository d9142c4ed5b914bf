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

from .._atomic import as_write_error, atomic_savefig

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
    """metrics.jsonl + TensorBoard, written by rank 0 only (a no-op elsewhere).

    Opened as the run stood when its state was saved: metrics.jsonl is cut back to `metrics_bytes` (its length
    then; a new run's is 0) and the TensorBoard event files are rewritten from what is left of it, so a resumed
    run's logs hold exactly what an uninterrupted run's would.
    """

    def __init__(self, run_dir: Path | None, metrics_bytes: int = 0):
        self.run_dir = run_dir
        self.writer = None
        self.metrics = None
        if run_dir is None:
            return
        path = run_dir / METRICS_FILE
        if path.exists():
            # Lines written after the saved state belong to work that is now redone. (Never lengthened: a file
            # shorter than the state says, e.g. after a crash that lost its tail, would get NUL bytes.)
            with open(path, "r+b") as handle:
                handle.truncate(min(metrics_bytes, path.stat().st_size))
        self.metrics = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        try:
            self.writer = _tensorboard_writer(run_dir / "tensorboard", read_metrics(run_dir))
        except OSError as error:  # its event file's first records refused
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
                _add_scalars(self.writer, kind, step, values)
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


def _tensorboard_writer(log_dir: Path, records: list[dict[str, Any]]):
    """A SummaryWriter on `log_dir` holding the scalars of `records` (metrics.jsonl's) and nothing else yet,
    or None without the `tensorboard` package.

    Event files already in `log_dir` are replaced, not cut at a purge step: those of an interrupted session can
    hold scalars of work that is now redone and lack scalars logged before its state was saved (the writer
    buffers them; kill -9 loses the buffer), and the test's scalars share their step with the last epoch's, so
    no step separates what is redone from what is not. metrics.jsonl, flushed at every record and cut back
    to the saved state, is the exact record.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        warnings.warn(
            f"TensorBoard event files are not written: torch.utils.tensorboard needs the `tensorboard` package "
            f"(pip install tensorboard): {exc}",
            stacklevel=3,
        )
        return None
    earlier = list(log_dir.glob("events.out.tfevents.*"))
    # purge_step=0: a TensorBoard that has read the earlier files (a live view, or a crash before they are
    # deleted below) drops their scalars when it reaches this file.
    writer = SummaryWriter(log_dir=str(log_dir), purge_step=0 if earlier else None)
    for record in records:
        values = {key: value for key, value in record.items() if key not in ("kind", "episode", "time")}
        _add_scalars(writer, record["kind"], record["episode"], values, record.get("time"))
    writer.flush()
    for path in earlier:
        path.unlink(missing_ok=True)
    return writer


def _add_scalars(writer, kind: str, step: int, values: dict[str, Any], walltime: float | None = None) -> None:
    """The numbers of one record as TensorBoard scalars `kind/key` (the epoch and step counters are not curves)."""
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
            writer.add_scalar(f"{kind}/{key}", value, step, walltime=walltime)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl`, oldest first ([] where there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chance_level(run_dir: Path) -> float | None:
    """100 / way (%), the accuracy of guessing in a C-way episode, from the run's config.yaml (None without one)."""
    import yaml

    from .run_dir import CONFIG_FILE

    path = Path(run_dir) / CONFIG_FILE
    try:
        way = int(((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {}).get("n_way", 0))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return 100.0 / way if way > 0 else None


def _draw_chance(ax, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.4g} %)")


def val_accuracy_figure(val_rows: list[dict[str, Any]], chance: float | None):
    """The figure of val_accuracy.png: validation accuracy ± 95% CI per epoch (whole-number ticks), chance dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.5, 4))
    if val_rows:
        ax.errorbar(
            [r["epoch"] for r in val_rows],
            [r["accuracy"] for r in val_rows],
            yerr=[r["ci95"] for r in val_rows],
            marker="o",
            capsize=3,
            color="tab:green",
            label="validation",
        )
        _draw_chance(ax, chance)
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation ran", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy per epoch")
    fig.tight_layout()
    return fig


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
    chance = chance_level(run_dir)
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
    _draw_chance(ax_acc, chance)
    ax_acc.set(xlabel="training episode", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    written.append(run_dir / "curves.png")
    atomic_savefig(fig, written[-1], dpi=100)
    plt.close(fig)

    fig = val_accuracy_figure(val_rows, chance)
    written.append(run_dir / "val_accuracy.png")
    atomic_savefig(fig, written[-1], dpi=100)
    plt.close(fig)
    return written
