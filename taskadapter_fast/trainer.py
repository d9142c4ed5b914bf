"""Episodic training of Task-Adapter++ (SPEC §7): train, validate, keep the best, test once.

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
(resumable state), `test_episodes.json`, `curves.png`, `val_accuracy.png`, `results.json`.

Resume: `state.pt` holds the adapters, optimizer, scheduler, RNG states and the episode counter;
it is written atomically (temporary file + `os.replace`) every `train.save_every` episodes and at
every epoch end. Because episodes are a pure function of (seed, index) and nothing else in a
training step draws random numbers, a resumed run computes exactly what an uninterrupted run
would have: on CPU its weights are bit-identical.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_path, atomic_write_text
from .cli import resolve_device
from .data.setup import SPLITS, load_corpus_for, read_splits
from .data.setup import make_loader as make_split_loader
from .runconfig import RunConfig, TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STATE_JSON = "state.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
TEST_EPISODES_FILE = "test_episodes.json"
STATE_FORMAT = "taskadapter_fast.train_state/1"


# ------------------------------------------------------------------------------------------------ set-up
@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torch.distributed job (world 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> DistInfo:
    """Join the process group of a `torchrun` job (env:// rendezvous), or use one the caller set up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", rank)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available() and (device is None or device == "auto" or device.startswith("cuda"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(local_rank)  # NCCL collectives and object broadcasts use the current device
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    processor = platform.processor() or platform.machine()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads, {processor})"


@dataclass
class RunData:
    """The manifest rows of each split, where each came from, and the sub-action corpus."""

    rows: dict[str, list]
    corpus: dict[str, list[str]] | None
    source: dict[str, str]


def prepare_data(run: RunConfig) -> RunData:
    """The three splits (the synthetic dataset generated once) and the corpus, checked to cover every class."""
    splits = read_splits(run.data, SPLITS)
    classes = [sorted({row.class_name for row in splits.rows[split]}) for split in SPLITS]
    corpus = load_corpus_for(run.model.needs_corpus, splits.corpus_path, classes)
    return RunData(rows=splits.rows, corpus=corpus, source=splits.source)


def build_model(run: RunConfig, device: torch.device | str | None = None):
    """The run's model before training. A backbone without pretrained weights is drawn from `model.init_seed`
    (inside create_model); the adapters' initialisation is drawn from `train.seed`, seeded here."""
    from .api import create_model

    torch.manual_seed(run.train.seed)
    model = create_model(run.model)
    return model.to(device) if device is not None else model


def make_loader(run: RunConfig, rows: list, split: str, image_size: int, device: torch.device):
    train = split == "train"
    seed = run.train.seed if train else run.train.eval_seed
    return make_split_loader(
        run.data,
        rows,
        num_frames=run.model.num_frames,
        image_size=image_size,
        train=train,
        seed=seed,
        device=device,
        split=split,
    )


def build_optimizer(model, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.trainable_parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, steps_per_epoch: int):
    """None for the constant schedule; otherwise a scheduler stepped once per optimizer step.

    step: lr *= gamma at each milestone (in epochs, converted to optimizer steps);
    cosine: from lr down to min_lr over the whole run.
    """
    if train_cfg.schedule == "constant":
        return None
    if train_cfg.schedule == "step":
        milestones = sorted({max(1, round(m * steps_per_epoch)) for m in train_cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=train_cfg.gamma)
    total_steps = train_cfg.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=train_cfg.min_lr)


def schedule_at(scheduler, steps_done: int) -> None:
    """Put a fresh scheduler (from `build_scheduler`) where it stands after `steps_done` optimizer steps."""
    scheduler.last_epoch = steps_done
    if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        decays = sum(count for milestone, count in scheduler.milestones.items() if milestone <= steps_done)
        lrs = [base * scheduler.gamma**decays for base in scheduler.base_lrs]
    else:  # CosineAnnealingLR
        progress = math.cos(math.pi * min(steps_done, scheduler.T_max) / scheduler.T_max)
        lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + progress) / 2 for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs


def amp_context(amp: str, device: torch.device):
    """bf16 autocast where the device supports it (a warning and full precision elsewhere)."""
    if amp == "none":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn(f"train.amp=bf16: {device} does not support bfloat16; training in float32", stacklevel=2)
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def enable_grad_checkpointing(model) -> None:
    """Recompute each adapted visual block in the backward pass instead of keeping its activations."""
    model.visual.checkpoint_blocks = True


# ------------------------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Counters that, with the weights, optimizer, scheduler and RNG, define where a run stands."""

    episode: int = 0  # training episodes done, over all ranks
    step: int = 0  # optimizer steps done
    epochs_done: int = 0  # epochs whose end (validation, last checkpoint) is done
    best_val_accuracy: float | None = None
    best_val_ci95: float | None = None
    best_epoch: int | None = None
    val_history: list[dict[str, float]] = field(default_factory=list)
    metrics_bytes: int = 0  # length of metrics.jsonl when the state was saved
    wall_seconds: float = 0.0  # training time of earlier sessions of this run
    world: int = 1


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_state(path: Path, model, optimizer, scheduler, state: TrainState, run: RunConfig) -> None:
    adapters = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    payload = {
        "format": STATE_FORMAT,
        "run_config": run.to_json(),
        "counters": asdict(state),
        "adapters": adapters,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
    }
    _atomic_torch_save(payload, path / STATE_FILE)
    atomic_write_text(path / STATE_JSON, json.dumps(asdict(state), indent=1) + "\n")


def load_state(run_dir: Path) -> dict[str, Any]:
    file = run_dir / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no {STATE_FILE} there (not a training run directory?)")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{file} is not a readable training state: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{file} is not a {STATE_FORMAT} file")
    return payload


def _apply_state(payload: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in payload["adapters"].items():
            if name not in params:
                raise ValueError(f"training state holds {name!r}, which this model does not have")
            params[name].copy_(tensor)
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        if payload["scheduler"] is None:
            raise ValueError("the training state has no scheduler state but the run config has a schedule")
        scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"])
    return TrainState(**payload["counters"])


# ------------------------------------------------------------------------------------------------ logging
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
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

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
        self.metrics.write(json.dumps(line) + "\n")
        self.metrics.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
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


# ------------------------------------------------------------------------------------------------ distributed
def _all_reduce_mean(tensor: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist_info.world
    return tensor


def average_gradients(params: list[torch.nn.Parameter], dist_info: DistInfo) -> None:
    """Average the gradients over ranks with one all-reduce of a flat buffer."""
    if not dist_info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    _all_reduce_mean(flat, dist_info)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _gather(obj: Any, dist_info: DistInfo) -> list[Any]:
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_info.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any, dist_info: DistInfo) -> Any:
    if not dist_info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------------ steps
def episode_indices(start: int, stop: int, accumulate: int, dist_info: DistInfo) -> list[int]:
    """This rank's training episodes for global episodes start..stop-1, in the order it trains them.

    A step consumes world * accumulate global episodes; micro-batch j of rank r in the step starting at
    global episode g is episode g + j * world + r (so rank r takes the episodes i * world + r).
    """
    per_step = accumulate * dist_info.world
    indices = []
    for step_start in range(start, stop, per_step):
        indices += [step_start + j * dist_info.world + dist_info.rank for j in range(accumulate)]
    return indices


def train_step(forward, model, episodes: list, corpus, optimizer, scheduler, amp_ctx, dist_info: DistInfo):
    """One optimizer step over `episodes` (this rank's share); gradient = mean over all ranks' episodes.

    Returns (mean loss, mean episode accuracy %) over all ranks' episodes of the step.
    """
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    accuracy_sum = 0.0
    for episode in episodes:
        with amp_ctx:
            scores = forward(
                episode.support, episode.support_labels, episode.query, episode.class_names, corpus
            )  # [C*Q, C]
        loss = model.loss(scores, episode.query_labels)
        (loss / len(episodes)).backward()
        loss_sum += float(loss.detach())
        accuracy_sum += 100.0 * float((scores.detach().argmax(dim=1) == episode.query_labels).float().mean())
    params = model.trainable_parameters()
    average_gradients(params, dist_info)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    stats = torch.tensor(
        [loss_sum / len(episodes), accuracy_sum / len(episodes)], dtype=torch.float64, device=params[0].device
    )
    stats = _all_reduce_mean(stats, dist_info)
    return float(stats[0]), float(stats[1])


def _sharded_evaluate(model, loader, ids_or_plans: list, corpus, dist_info: DistInfo, cache: bool, progress: bool):
    """evaluate() with the episodes split over the ranks; every rank gets the merged result.

    A rank whose share is empty (fewer episodes than ranks) evaluates nothing. The merge puts the
    episodes back in the order of `ids_or_plans`, also when a rank skipped one (an unreadable video).
    """
    from .data.episodes import EpisodePlan
    from .evaluation import evaluate, mean_ci95

    share = ids_or_plans[dist_info.rank :: dist_info.world]
    part: dict[str, Any] = {"indices": [], "per_episode": [], "plans": [], "skipped": 0, "seconds": 0.0}
    if share:
        result = evaluate(model, loader, share, corpus, cache=cache, progress=progress and dist_info.is_main)
        part = {
            "indices": [plan.index for plan in result.plans],
            "per_episode": result.per_episode,
            "plans": [plan.to_record() for plan in result.plans],
            "skipped": result.skipped,
            "seconds": result.seconds,
        }
    gathered = _gather(part, dist_info)
    position = {item.index if isinstance(item, EpisodePlan) else int(item): n for n, item in enumerate(ids_or_plans)}
    merged = sorted(
        (entry for g in gathered for entry in zip(g["indices"], g["per_episode"], g["plans"], strict=True)),
        key=lambda entry: position[entry[0]],
    )
    per_episode = [accuracy for _, accuracy, _ in merged]
    accuracy, ci95 = mean_ci95(per_episode)
    return {
        "accuracy": accuracy,
        "ci95": ci95,
        "per_episode": per_episode,
        "plans": [plan for _, _, plan in merged],
        "episodes": len(per_episode),
        "skipped": sum(g["skipped"] for g in gathered),
        "seconds": max(g["seconds"] for g in gathered),
    }


# ------------------------------------------------------------------------------------------------ main
def _default_output_dir() -> Path:
    return Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _prepare_run_dir(
    run_config: RunConfig | None, output_dir: str | os.PathLike | None, resume: str | os.PathLike | None
) -> tuple[RunConfig, Path, bool]:
    if resume is not None:
        run_dir = Path(resume)
        if output_dir is not None and Path(output_dir).absolute() != run_dir.absolute():
            raise ValueError(f"--resume {resume} continues that run directory; --output-dir {output_dir} differs")
        config_file = run_dir / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a training run directory?)")
        from .config import load_config_file

        saved = RunConfig.from_dict(load_config_file(config_file))
        if run_config is not None and run_config.to_dict() != saved.to_dict():
            raise ValueError(f"--resume {run_dir}: the run's config ({config_file}) cannot be changed on resume")
        return saved, run_dir, True
    if run_config is None:
        raise ValueError("train() needs a run config (or resume=RUN_DIR)")
    run_dir = Path(output_dir) if output_dir is not None else _default_output_dir()
    if (run_dir / STATE_FILE).exists() or (run_dir / RESULTS_FILE).exists():
        raise ValueError(f"--output-dir {run_dir} already holds a training run; use --resume {run_dir} or another dir")
    return run_config, run_dir, False


def train(
    run_config: RunConfig | None,
    output_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, validate, keep the best checkpoint and test it (module docstring). Returns the results dict.

    run_config: the resolved run (see `taskadapter_fast.runconfig.resolve_run_config`); None with `resume`.
    output_dir: the run directory (default `runs/<timestamp>`). resume: a run directory to continue.
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
    session_start = time.perf_counter()
    dist_info = init_distributed(None if device is None else str(device))
    if dist_info.enabled and output_dir is None and resume is None:
        output_dir = _broadcast(str(_default_output_dir()), dist_info)
    main = dist_info.is_main
    # Rank 0 decides (it alone writes the directory); the others follow its answer.
    prepared, problem = None, None
    if main:
        try:
            prepared = _prepare_run_dir(run_config, output_dir, resume)
        except (ValueError, FileNotFoundError) as exc:
            problem = exc
    problem_text = _broadcast(None if problem is None else str(problem), dist_info)
    if problem is not None:
        raise problem
    if problem_text is not None:
        raise ValueError(problem_text)
    run, run_dir, resuming = _broadcast(prepared, dist_info)
    tcfg = run.train
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
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            atomic_write_text(run_dir / CONFIG_FILE, run.to_yaml())

    data = prepare_data(run) if main else None  # rank 0 first: it generates the synthetic dataset once
    _barrier(dist_info)
    data = data or prepare_data(run)
    model = build_model(run, device)
    image_size = run.data.image_size or model.visual.image_size
    loaders = {split: make_loader(run, data.rows[split], split, image_size, device) for split in SPLITS}
    if tcfg.grad_checkpoint:
        enable_grad_checkpointing(model)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps_per_epoch)
    run_metadata = {"run_config": run.to_json()}

    if resuming:
        payload = _broadcast(load_state(run_dir) if main else None, dist_info)
        state = _apply_state(payload, model, optimizer, scheduler)
        if state.world != dist_info.world and state.episode % per_step:
            raise ValueError(
                f"--resume: the run was saved at episode {state.episode} by {state.world} rank(s); "
                f"with {dist_info.world} rank(s) x accumulate {tcfg.accumulate} it must be a multiple of {per_step}"
            )
        if state.world != dist_info.world and scheduler is not None:
            # The saved scheduler counts optimizer steps of the old world size: rebuild it for this one.
            scheduler = build_scheduler(optimizer, tcfg, steps_per_epoch)
            schedule_at(scheduler, state.episode // per_step)
        state.world = dist_info.world
    else:
        state = TrainState(world=dist_info.world)
        if main:
            from .checkpoint import save_adapters

            save_adapters(model, run_dir / "untrained.safetensors", {**run_metadata, "episode": "0"})
    runlog = RunLog(run_dir if main else None, state.episode if resuming else None, state.metrics_bytes)
    if main:
        print(
            f"{'resuming' if resuming else 'training'} {run.data.n_way}-way {run.data.n_shot}-shot "
            f"{run.data.n_query}-query, {model.num_trainable_parameters():,} trainable parameters, "
            f"{tcfg.epochs} epochs x {tcfg.episodes_per_epoch} episodes on {describe_device(device)}"
            f"{f' x {dist_info.world} ranks' if dist_info.enabled else ''} -> {run_dir}",
            file=sys.stderr,
        )

    forward = torch.compile(model, backend=tcfg.compile_backend) if tcfg.compile else model
    amp_ctx = amp_context(tcfg.amp, device)

    def checkpoint_state() -> None:
        if main:
            state.metrics_bytes = runlog.metrics_bytes
            elapsed = state.wall_seconds
            state.wall_seconds = elapsed + (time.perf_counter() - session_start)
            save_state(run_dir, model, optimizer, scheduler, state, run)
            state.wall_seconds = elapsed

    if not resuming:
        checkpoint_state()  # a run that fails before its first periodic save can still be resumed

    from tqdm.auto import tqdm

    try:
        for epoch in range(state.epochs_done, tcfg.epochs):
            epoch_stop = (epoch + 1) * tcfg.episodes_per_epoch
            model.train()
            bar = tqdm(
                total=tcfg.episodes_per_epoch,
                initial=state.episode - epoch * tcfg.episodes_per_epoch,
                desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                unit="episode",
                disable=not (progress and main),
                file=sys.stderr,
                dynamic_ncols=True,
            )
            indices = episode_indices(state.episode, epoch_stop, tcfg.accumulate, dist_info)
            window: list[tuple[float, float]] = []
            epoch_stats: list[float] = []
            tick = time.perf_counter()
            stream: Iterator = loaders["train"].imap(loaders["train"].episode, indices)
            try:
                for _ in range(len(indices) // tcfg.accumulate):
                    episodes = [next(stream) for _ in range(tcfg.accumulate)]
                    lr = optimizer.param_groups[0]["lr"]  # the rate this step trains with
                    loss, accuracy = train_step(
                        forward, model, episodes, data.corpus, optimizer, scheduler, amp_ctx, dist_info
                    )
                    if not math.isfinite(loss):
                        raise RuntimeError(f"the training loss is {loss} at episode {state.episode}; lower train.lr")
                    before = state.episode
                    state.episode += per_step
                    state.step += 1
                    window.append((loss, accuracy))
                    epoch_stats.append(accuracy)
                    bar.update(per_step)
                    bar.set_postfix(
                        loss=f"{loss:.3f}", acc=f"{sum(epoch_stats) / len(epoch_stats):.1f}%", refresh=False
                    )
                    if state.episode // tcfg.log_every > before // tcfg.log_every or state.episode == epoch_stop:
                        now = time.perf_counter()
                        runlog.record(
                            "train",
                            state.episode,
                            {
                                "epoch": epoch + 1,
                                "step": state.step,
                                "loss": sum(w[0] for w in window) / len(window),
                                "accuracy": sum(w[1] for w in window) / len(window),
                                "lr": lr,
                                "episodes_per_s": len(window) * per_step / max(now - tick, 1e-9),
                            },
                        )
                        window, tick = [], now
                    if state.episode // tcfg.save_every > before // tcfg.save_every and state.episode != epoch_stop:
                        checkpoint_state()
            finally:
                stream.close()
                bar.close()

            # epoch end: validation (after the warm-up epochs), best and last checkpoints, resumable state
            if epoch + 1 > tcfg.warmup_epochs and tcfg.val_episodes > 0:
                val = _sharded_evaluate(
                    model,
                    loaders["val"],
                    list(range(tcfg.val_episodes)),
                    data.corpus,
                    dist_info,
                    tcfg.eval_cache,
                    progress,
                )
                entry = {"epoch": epoch + 1, "accuracy": val["accuracy"], "ci95": val["ci95"]}
                state.val_history.append(entry)
                runlog.record("val", state.episode, {**entry, "episodes": val["episodes"]})
                improved = state.best_val_accuracy is None or val["accuracy"] > state.best_val_accuracy
                if main:
                    print(
                        f"epoch {epoch + 1}: validation {val['accuracy']:.2f} ± {val['ci95']:.2f} % "
                        f"({val['episodes']} episodes){' (best so far)' if improved else ''}",
                        file=sys.stderr,
                    )
                if improved:
                    state.best_val_accuracy, state.best_val_ci95 = val["accuracy"], val["ci95"]
                    state.best_epoch = epoch + 1
                    _save_checkpoint(model, run_dir / "best.safetensors", run_metadata, epoch + 1, state, main)
            _save_checkpoint(model, run_dir / "last.safetensors", run_metadata, epoch + 1, state, main)
            state.epochs_done = epoch + 1
            checkpoint_state()
            _barrier(dist_info)

        if state.best_epoch is None:  # no validation ran: the last weights are the selected ones
            _save_checkpoint(model, run_dir / "best.safetensors", run_metadata, tcfg.epochs, state, main)
            state.best_epoch = tcfg.epochs
        _barrier(dist_info)
        results = _test(run, model, loaders["test"], data, run_dir, state, dist_info, progress, runlog)
    finally:
        runlog.close()
    wall = state.wall_seconds + (time.perf_counter() - session_start)
    results.update(
        {
            "device": str(device),
            "device_name": describe_device(device),
            "world_size": dist_info.world,
            "wall_seconds": wall,
            "output_dir": str(run_dir),
            "best_epoch": state.best_epoch,
            "best_val_accuracy": state.best_val_accuracy,
            "best_val_ci95": state.best_val_ci95,
            "val_history": state.val_history,
            "train_episodes": state.episode,
            "optimizer_steps": state.step,
            "way": run.data.n_way,
            "shot": run.data.n_shot,
            "query": run.data.n_query,
            "trainable_parameters": model.num_trainable_parameters(),
            "config": run.to_dict(),
        }
    )
    if main:
        atomic_write_text(run_dir / RESULTS_FILE, json.dumps(results, indent=1) + "\n")
        write_plots(run_dir)
    return results


def _save_checkpoint(model, path: Path, metadata: dict[str, str], epoch: int, state: TrainState, main: bool) -> None:
    if not main:
        return
    from .checkpoint import save_adapters

    extra = {**metadata, "epoch": str(epoch), "episode": str(state.episode)}
    if state.best_val_accuracy is not None:
        extra["best_val_accuracy"] = f"{state.best_val_accuracy:.4f}"
    save_adapters(model, path, extra)


def _test(run: RunConfig, model, loader, data: RunData, run_dir: Path, state, dist_info, progress, runlog):
    """The test split, touched once: the best checkpoint, then the untrained adapters on the same episodes."""
    from .checkpoint import load_adapters
    from .data.episodes import EpisodePlan, write_episodes_file
    from .model.task_adapter import OFFICIAL_COMPAT_NOTE

    tcfg = run.train
    results: dict[str, Any] = {"test_episodes": tcfg.test_episodes}
    if tcfg.test_episodes == 0:
        return results
    if dist_info.is_main:
        load_adapters(model, run_dir / "best.safetensors")
    _broadcast_parameters(model, dist_info)
    trained = _sharded_evaluate(
        model, loader, list(range(tcfg.test_episodes)), data.corpus, dist_info, tcfg.eval_cache, progress
    )
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
    if dist_info.is_main:
        write_episodes_file(run_dir / TEST_EPISODES_FILE, loader, plans, "test", source=data.source["test"])
    runlog.record("test", state.episode, {"accuracy": trained["accuracy"], "ci95": trained["ci95"]})
    line = f"test accuracy (trained, epoch {state.best_epoch}):  {trained['accuracy']:6.2f} ± {trained['ci95']:.2f} %"
    if tcfg.untrained_baseline:
        if dist_info.is_main:
            load_adapters(model, run_dir / "untrained.safetensors")
        _broadcast_parameters(model, dist_info)
        untrained = _sharded_evaluate(model, loader, plans, data.corpus, dist_info, tcfg.eval_cache, progress)
        results.update(
            {
                "untrained_test_accuracy": untrained["accuracy"],
                "untrained_test_ci95": untrained["ci95"],
                "untrained_test_per_episode": untrained["per_episode"],
            }
        )
        runlog.record("untrained_test", state.episode, {"accuracy": untrained["accuracy"], "ci95": untrained["ci95"]})
        line += f"\ntest accuracy (untrained):          {untrained['accuracy']:6.2f} ± {untrained['ci95']:.2f} %"
    if run.model.official_compat_applies:
        results["official_compat_note"] = OFFICIAL_COMPAT_NOTE
        line += f"\nnote: {OFFICIAL_COMPAT_NOTE}"
    if dist_info.is_main:
        shape = f"{run.data.n_way}-way {run.data.n_shot}-shot, {trained['episodes']} test episodes"
        print(f"{line}\n({shape})", flush=True)
    return results


def _broadcast_parameters(model, dist_info: DistInfo) -> None:
    if not dist_info.enabled:
        return
    import torch.distributed as dist

    for p in model.trainable_parameters():
        dist.broadcast(p.data, src=0)
