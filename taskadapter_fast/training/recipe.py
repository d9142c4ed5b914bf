"""Episodic training of Task-Adapter++ (docs/method.md §7): train, validate, keep the best, test once.

`train(run_config, output_dir)` runs the whole protocol and returns the results dictionary it also
writes to `output_dir/results.json`:

1. data: the built-in synthetic dataset (generated once into a cache) or the user's split files;
2. model: `create_model(run.model)` after `torch.manual_seed(train.seed)` (a random backbone comes from
   `model.init_seed`, the adapters' initialisation from `train.seed`);
3. training: SGD over episodes drawn by index from the sampler (rank r of W takes the global
   episodes i*W + r; `train.accumulate` episodes per rank and optimizer step; gradients averaged
   over all of them), validation on the val classes after the warm-up epochs, the best validation
   checkpoint kept (`best.safetensors`), `last.safetensors` at every epoch end;
4. test: the best checkpoint and the untrained adapters on the same test episodes (touched once,
   at the end), accuracy ± 95% CI for both.

Run directory: `config.yaml` (the resolved run config), `metrics.jsonl`, `tensorboard/`,
`untrained.safetensors`, `best.safetensors`, `last.safetensors`, `state.pt` + `state.json`
(resumable state), `test_episodes.json`, `curves.png`, `val_accuracy.png`, `results.json`; while the run goes
on, `.lock`, locked by the process writing the directory (another `train` into it or `--resume` of it is refused).

Resume: `state.pt` holds the adapters, optimizer, scheduler, RNG states and the episode counter;
it is written atomically (temporary file + `os.replace`) every `train.save_every` episodes and at
every epoch end. Because episodes are a pure function of (seed, index) and nothing else in a
training step draws random numbers, a resumed run computes exactly what an uninterrupted run
would have: on CPU its weights are bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write_text
from ..data.setup import SPLITS
from ..devices import describe_device, resolve_device
from ..runconfig import RunConfig, TrainConfig
from .distributed import (
    DistInfo,
    barrier,
    broadcast_parameters,
    episode_indices,
    init_distributed,
    sharded_evaluate,
)
from .preflight import preflight
from .run_dir import RESULTS_FILE, TEST_EPISODES_FILE, open_run_dir, write_config
from .runlog import RunLog, write_plots
from .state import TrainState, apply_state, save_state
from .steps import (
    RunData,
    amp_context,
    build_model,
    build_optimizer,
    build_scheduler,
    enable_grad_checkpointing,
    make_loader,
    prepare_data,
    schedule_at,
    train_step,
)


def train(
    run_config: RunConfig | None,
    output_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, validate, keep the best checkpoint and test it (module docstring). Returns the results dict.

    run_config: the resolved run (see `taskadapter_fast.runconfig.resolve_run_config`). With `resume`: None (the
    run's own config), or the run's config with only runtime-only settings changed (`runconfig.RUNTIME_KEYS`).
    output_dir: the run directory (default `runs/<timestamp>-<random suffix>`). resume: a run directory to continue.
    device: "auto" (default: this rank's GPU, else the CPU), "cpu", "cuda", "cuda:1", ...
    Under `torchrun` (WORLD_SIZE > 1) every rank calls this; only rank 0 writes.
    `train.cpu_threads` applies for the duration of the call only.
    """
    threads = torch.get_num_threads()
    try:
        return _train(run_config, output_dir, resume, device, progress)
    finally:
        torch.set_num_threads(threads)


def _train(run_config, output_dir, resume, device, progress) -> dict[str, Any]:
    """The recipe: set-up; each epoch: train, validate and select, end the epoch; then test; then the results."""
    with contextlib.ExitStack() as held:  # the run directory's lock, until the results are written
        run = _setup(run_config, output_dir, resume, device, progress, held)
        try:
            for epoch in range(run.state.epochs_done, run.tcfg.epochs):
                _train_epoch(run, epoch)
                _validate_and_select(run, epoch)
                _end_epoch(run, epoch)
            _select_last_if_never_validated(run)
            test = _test(run)
        except BaseException:
            with contextlib.suppress(OSError):  # the error that stopped the run is the one to report
                run.runlog.close()
            raise
        run.runlog.close()
        return _results(run, test)


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class Run:
    """One training run in progress: what the steps of `train` read and update (their one argument)."""

    config: RunConfig
    run_dir: Path
    resuming: bool
    dist_info: DistInfo
    device: torch.device
    data: RunData
    model: Any
    loaders: dict[str, Any]  # split -> EpisodeLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None for the constant schedule
    steps_per_epoch: int  # optimizer steps
    progress: bool
    session_start: float  # time.perf_counter() when this call of train() started
    saved_state: dict[str, Any] | None = None  # a resumed run's state.pt payload, until it is applied
    state: TrainState = field(default_factory=TrainState)
    runlog: RunLog = field(default_factory=lambda: RunLog(None))
    forward: Any = None  # the model, or its torch.compile'd version
    amp_ctx: Any = field(default_factory=contextlib.nullcontext)

    @property
    def tcfg(self) -> TrainConfig:
        return self.config.train

    @property
    def per_step(self) -> int:
        """Training episodes per optimizer step, over all ranks."""
        return self.tcfg.accumulate * self.dist_info.world

    @property
    def metadata(self) -> dict[str, str]:
        """What every adapter checkpoint of the run carries."""
        return {"run_config": self.config.to_json()}

    def checkpoint_state(self) -> None:
        """Write the resumable state (rank 0), with the training time of this and the earlier sessions."""
        if self.dist_info.is_main:
            self.state.metrics_bytes = self.runlog.metrics_bytes
            elapsed = self.state.wall_seconds
            self.state.wall_seconds = elapsed + (time.perf_counter() - self.session_start)
            save_state(self.run_dir, self.model, self.optimizer, self.scheduler, self.state, self.config)
            self.state.wall_seconds = elapsed

    def save_checkpoint(self, name: str, epoch: int) -> None:
        """The adapters as `run_dir/name` (rank 0), with the epoch, episode and best validation accuracy."""
        if not self.dist_info.is_main:
            return
        from ..checkpoint import save_adapters

        extra = {**self.metadata, "epoch": str(epoch), "episode": str(self.state.episode)}
        if self.state.best_val_accuracy is not None:
            extra["best_val_accuracy"] = f"{self.state.best_val_accuracy:.4f}"
        save_adapters(self.model, self.run_dir / name, extra)


# ------------------------------------------------------------------------------------------------ set-up
def _setup(run_config, output_dir, resume, device, progress, held: contextlib.ExitStack) -> Run:
    """The run built, its state new or resumed, its run log open as it was at that state; a new run's state saved
    at once. `held` keeps the run directory's lock (rank 0) until the caller's block ends."""
    run = _build(run_config, output_dir, resume, device, progress, held)
    _start_or_resume(run)
    run.runlog = RunLog(run.run_dir if run.dist_info.is_main else None, run.state.metrics_bytes)
    if run.dist_info.is_main:
        _announce(run)
    run.forward = torch.compile(run.model, backend=run.tcfg.compile_backend) if run.tcfg.compile else run.model
    run.amp_ctx = amp_context(run.tcfg.amp, run.device)
    if not run.resuming:
        run.checkpoint_state()  # a run that fails before its first periodic save can still be resumed
    return run


def _build(run_config, output_dir, resume, device, progress, held: contextlib.ExitStack) -> Run:
    """Run directory (locked, the lock kept by `held`), device, data, model, loaders, optimizer and schedule, each
    checked (`preflight`) before the run directory is first written."""
    session_start = time.perf_counter()
    dist_info = init_distributed(None if device is None else str(device))
    config, run_dir, resuming, saved, lock = open_run_dir(run_config, output_dir, resume, dist_info)
    if lock is not None:
        if not resuming:  # a new run that fails before its first write leaves no folder behind (after the lock goes)
            held.callback(_remove_if_empty, run_dir)
        held.enter_context(lock)
    tcfg = config.train
    device = resolve_device(device, dist_info.local_rank)
    if device.type == "cpu" and tcfg.cpu_threads is not None:
        torch.set_num_threads(tcfg.cpu_threads)
    per_step = tcfg.accumulate * dist_info.world
    if tcfg.episodes_per_epoch % per_step:
        raise ValueError(
            f"train.episodes_per_epoch={tcfg.episodes_per_epoch} must be a multiple of train.accumulate x world size "
            f"= {tcfg.accumulate} x {dist_info.world}"
        )
    steps_per_epoch = tcfg.episodes_per_epoch // per_step

    data = prepare_data(config) if dist_info.is_main else None  # rank 0 first: it generates the synthetic dataset once
    barrier(dist_info)
    data = data or prepare_data(config)
    preflight(config.data, data)
    model = build_model(config, device)
    image_size = config.data.image_size or model.visual.image_size
    loaders = {split: make_loader(config, data.rows[split], split, image_size, device) for split in SPLITS}
    if tcfg.grad_checkpoint:
        enable_grad_checkpointing(model)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps_per_epoch)
    write_config(config, run_dir, resuming, dist_info)  # the first write: everything above can fail without a trace
    return Run(
        config=config,
        run_dir=run_dir,
        resuming=resuming,
        dist_info=dist_info,
        device=device,
        data=data,
        model=model,
        loaders=loaders,
        optimizer=optimizer,
        scheduler=scheduler,
        steps_per_epoch=steps_per_epoch,
        progress=progress,
        session_start=session_start,
        saved_state=saved,
    )


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: the run wrote into it
        folder.rmdir()


def _announce(run: Run) -> None:
    """The start line on stderr: the episode shape, the model's size, the schedule, the device, the run directory."""
    config, tcfg, dist_info = run.config, run.tcfg, run.dist_info
    print(
        f"{'resuming' if run.resuming else 'training'} {config.data.n_way}-way {config.data.n_shot}-shot "
        f"{config.data.n_query}-query, {run.model.num_trainable_parameters():,} trainable parameters, "
        f"{tcfg.epochs} epochs x {tcfg.episodes_per_epoch} episodes on {describe_device(run.device)}"
        f"{f' x {dist_info.world} ranks' if dist_info.enabled else ''} -> {run.run_dir}",
        file=sys.stderr,
    )


def _start_or_resume(run: Run) -> None:
    """A new run's counters and untrained adapters, or a resumed run's saved state (its schedule rebuilt for a new
    world size)."""
    dist_info = run.dist_info
    if not run.resuming:
        run.state = TrainState(world=dist_info.world)
        if dist_info.is_main:
            from ..checkpoint import save_adapters

            save_adapters(run.model, run.run_dir / "untrained.safetensors", {**run.metadata, "episode": "0"})
        return
    state = apply_state(run.saved_state, run.model, run.optimizer, run.scheduler)
    run.saved_state = None  # applied: its tensors need not stay in memory
    if state.world != dist_info.world and state.episode % run.per_step:
        raise ValueError(
            f"--resume: the run was saved at episode {state.episode} by {state.world} rank(s); "
            f"with {dist_info.world} rank(s) x accumulate {run.tcfg.accumulate} it must be a multiple of {run.per_step}"
        )
    if state.world != dist_info.world and run.scheduler is not None:
        # The saved scheduler counts optimizer steps of the old world size: rebuild it for this one.
        run.scheduler = build_scheduler(run.optimizer, run.tcfg, run.steps_per_epoch)
        schedule_at(run.scheduler, state.episode // run.per_step)
    state.world = dist_info.world
    run.state = state


# ------------------------------------------------------------------------------------------------ epochs
def _train_epoch(run: Run, epoch: int) -> None:
    """Train the rest of `epoch`: optimizer steps, the progress bar, a metrics record every `train.log_every`
    episodes and at the epoch's end, the resumable state every `train.save_every` episodes."""
    from tqdm.auto import tqdm

    tcfg, state, per_step = run.tcfg, run.state, run.per_step
    epoch_stop = (epoch + 1) * tcfg.episodes_per_epoch
    run.model.train()
    bar = tqdm(
        total=tcfg.episodes_per_epoch,
        initial=state.episode - epoch * tcfg.episodes_per_epoch,
        desc=f"epoch {epoch + 1}/{tcfg.epochs}",
        unit="episode",
        disable=not (run.progress and run.dist_info.is_main),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    indices = episode_indices(state.episode, epoch_stop, tcfg.accumulate, run.dist_info)
    window: list[tuple[float, float]] = []  # (loss, accuracy) of the steps since the last metrics record
    accuracy_sum, steps = 0.0, 0  # the epoch's running mean accuracy, for the progress bar
    tick = time.perf_counter()
    stream: Iterator = run.loaders["train"].imap(run.loaders["train"].episode, indices)
    try:
        for _ in range(len(indices) // tcfg.accumulate):
            episodes = [next(stream) for _ in range(tcfg.accumulate)]
            lr = run.optimizer.param_groups[0]["lr"]  # the rate this step trains with
            loss, accuracy = train_step(
                run.forward,
                run.model,
                episodes,
                run.data.corpus,
                run.optimizer,
                run.scheduler,
                run.amp_ctx,
                run.dist_info,
            )
            if not math.isfinite(loss):
                raise RuntimeError(f"the training loss is {loss} at episode {state.episode}; lower train.lr")
            before = state.episode
            state.episode += per_step
            state.step += 1
            window.append((loss, accuracy))
            accuracy_sum, steps = accuracy_sum + accuracy, steps + 1
            bar.update(per_step)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy_sum / steps:.1f}%", refresh=False)
            if state.episode // tcfg.log_every > before // tcfg.log_every or state.episode == epoch_stop:
                now = time.perf_counter()
                _record_window(run, epoch, window, lr, now - tick)
                window, tick = [], now
            if state.episode // tcfg.save_every > before // tcfg.save_every and state.episode != epoch_stop:
                run.checkpoint_state()
    finally:
        stream.close()
        bar.close()


def _record_window(run: Run, epoch: int, window: list[tuple[float, float]], lr: float, seconds: float) -> None:
    """One `train` metrics record: the mean loss and accuracy of the steps in `window`, and their speed."""
    run.runlog.record(
        "train",
        run.state.episode,
        {
            "epoch": epoch + 1,
            "step": run.state.step,
            "loss": sum(w[0] for w in window) / len(window),
            "accuracy": sum(w[1] for w in window) / len(window),
            "lr": lr,
            "episodes_per_s": len(window) * run.per_step / max(seconds, 1e-9),
        },
    )


def _validate_and_select(run: Run, epoch: int) -> None:
    """Validation after the warm-up epochs; a new best validation accuracy becomes `best.safetensors`."""
    tcfg, state = run.tcfg, run.state
    if not (epoch + 1 > tcfg.warmup_epochs and tcfg.val_episodes > 0):
        return
    val = sharded_evaluate(
        run.model,
        run.loaders["val"],
        list(range(tcfg.val_episodes)),
        run.data.corpus,
        run.dist_info,
        tcfg.eval_cache,
        run.progress,
    )
    entry = {"epoch": epoch + 1, "accuracy": val["accuracy"], "ci95": val["ci95"]}
    state.val_history.append(entry)
    run.runlog.record("val", state.episode, {**entry, "episodes": val["episodes"]})
    improved = state.best_val_accuracy is None or val["accuracy"] > state.best_val_accuracy
    if run.dist_info.is_main:
        print(
            f"epoch {epoch + 1}: validation {val['accuracy']:.2f} ± {val['ci95']:.2f} % "
            f"({val['episodes']} episodes){' (best so far)' if improved else ''}",
            file=sys.stderr,
        )
    if improved:
        state.best_val_accuracy, state.best_val_ci95 = val["accuracy"], val["ci95"]
        state.best_epoch = epoch + 1
        run.save_checkpoint("best.safetensors", epoch + 1)


def _end_epoch(run: Run, epoch: int) -> None:
    """`last.safetensors` and the resumable state; every rank waits for rank 0 to have written them."""
    run.save_checkpoint("last.safetensors", epoch + 1)
    run.state.epochs_done = epoch + 1
    run.checkpoint_state()
    barrier(run.dist_info)


def _select_last_if_never_validated(run: Run) -> None:
    """Without any validation the last weights are the selected ones (`best.safetensors`)."""
    if run.state.best_epoch is None:
        run.save_checkpoint("best.safetensors", run.tcfg.epochs)
        run.state.best_epoch = run.tcfg.epochs
    barrier(run.dist_info)


# ------------------------------------------------------------------------------------------------ test, results
def _test(run: Run) -> dict[str, Any]:
    """The test split, touched once: the best checkpoint, then the untrained adapters on the same episodes."""
    from ..data.episodes import EpisodePlan, write_episodes_file
    from ..model.task_adapter import OFFICIAL_COMPAT_NOTE

    tcfg, state, dcfg = run.tcfg, run.state, run.config.data
    results: dict[str, Any] = {"test_episodes": tcfg.test_episodes}
    if tcfg.test_episodes == 0:
        return results
    trained = _evaluate_checkpoint(run, "best.safetensors", list(range(tcfg.test_episodes)))
    results.update(
        {
            "test_accuracy": trained["accuracy"],
            "test_ci95": trained["ci95"],
            "test_episodes": trained["episodes"],
            "test_per_episode": trained["per_episode"],
            "test_skipped_videos": trained["skipped"],
            "test_seconds": trained["seconds"],
        }
    )
    plans = [EpisodePlan.from_record(record) for record in trained["plans"]]
    if run.dist_info.is_main:
        source = run.data.source["test"]
        write_episodes_file(run.run_dir / TEST_EPISODES_FILE, run.loaders["test"], plans, "test", source=source)
    run.runlog.record("test", state.episode, {"accuracy": trained["accuracy"], "ci95": trained["ci95"]})
    line = f"test accuracy (trained, epoch {state.best_epoch}):  {trained['accuracy']:6.2f} ± {trained['ci95']:.2f} %"
    if tcfg.untrained_baseline:
        untrained = _evaluate_checkpoint(run, "untrained.safetensors", plans)
        results.update(
            {
                "untrained_test_accuracy": untrained["accuracy"],
                "untrained_test_ci95": untrained["ci95"],
                "untrained_test_per_episode": untrained["per_episode"],
            }
        )
        run.runlog.record(
            "untrained_test", state.episode, {"accuracy": untrained["accuracy"], "ci95": untrained["ci95"]}
        )
        line += f"\ntest accuracy (untrained):          {untrained['accuracy']:6.2f} ± {untrained['ci95']:.2f} %"
    if run.config.model.official_compat_applies:
        results["official_compat_note"] = OFFICIAL_COMPAT_NOTE
        line += f"\nnote: {OFFICIAL_COMPAT_NOTE}"
    if run.dist_info.is_main:
        shape = f"{dcfg.n_way}-way {dcfg.n_shot}-shot, {trained['episodes']} test episodes"
        print(f"{line}\n({shape})", flush=True)
    return results


def _evaluate_checkpoint(run: Run, name: str, ids_or_plans: list) -> dict[str, Any]:
    """Test episodes evaluated with the adapters of `run_dir/name` (loaded by rank 0, broadcast to the others)."""
    from ..checkpoint import load_adapters

    if run.dist_info.is_main:
        load_adapters(run.model, run.run_dir / name)
    broadcast_parameters(run.model, run.dist_info)
    return sharded_evaluate(
        run.model, run.loaders["test"], ids_or_plans, run.data.corpus, run.dist_info, run.tcfg.eval_cache, run.progress
    )


def _results(run: Run, test: dict[str, Any]) -> dict[str, Any]:
    """The test results with the run's description; rank 0 writes them (`results.json`) and the plots."""
    state, dcfg = run.state, run.config.data
    wall = state.wall_seconds + (time.perf_counter() - run.session_start)
    results = {
        **test,
        "device": str(run.device),
        "device_name": describe_device(run.device),
        "world_size": run.dist_info.world,
        "wall_seconds": wall,
        "output_dir": str(run.run_dir),
        "best_epoch": state.best_epoch,
        "best_val_accuracy": state.best_val_accuracy,
        "best_val_ci95": state.best_val_ci95,
        "val_history": state.val_history,
        "train_episodes": state.episode,
        "optimizer_steps": state.step,
        "way": dcfg.n_way,
        "shot": dcfg.n_shot,
        "query": dcfg.n_query,
        "trainable_parameters": run.model.num_trainable_parameters(),
        "config": run.config.to_dict(),
    }
    if run.dist_info.is_main:
        atomic_write_text(run.run_dir / RESULTS_FILE, json.dumps(results, indent=1) + "\n")
        write_plots(run.run_dir)
    return results
