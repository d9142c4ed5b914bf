"""The pieces a training run is built from (data, model, loaders, optimizer, learning-rate schedule,
autocast, gradient checkpointing) and the one optimizer step over a few episodes."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch

from ..data.setup import SPLITS, load_corpus_for, read_splits
from ..data.setup import make_loader as make_split_loader
from ..runconfig import RunConfig, TrainConfig
from .distributed import DistInfo, all_reduce_mean, average_gradients


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
    from ..api import create_model

    torch.manual_seed(run.train.seed)
    model = create_model(run.model)
    return model.to(device) if device is not None else model


def make_loader(run: RunConfig, rows: list, split: str, image_size: int, device: torch.device):
    """One split's episode loader: training episodes from `train.seed`, val/test ones from `train.eval_seed`."""
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
    """SGD with momentum and weight decay over the trainable parameters (the adapters)."""
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


def train_step(forward, model, episodes: list, corpus, optimizer, scheduler, amp_ctx, dist_info: DistInfo):
    """One optimizer step over `episodes` (this rank's share); gradient = mean over all ranks' episodes.

    Returns (mean loss, mean episode accuracy %) over all ranks' episodes of the step. The sums stay on the device
    until the end of the step: one transfer to the host a step, not two an episode (each a device sync).
    """
    optimizer.zero_grad(set_to_none=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums = torch.zeros(2, dtype=torch.float64, device=params[0].device)  # loss, accuracy %
    for episode in episodes:
        with amp_ctx:
            scores = forward(
                episode.support, episode.support_labels, episode.query, episode.class_names, corpus
            )  # [C*Q, C]
        loss = model.loss(scores, episode.query_labels)
        (loss / len(episodes)).backward()
        correct = (scores.detach().argmax(dim=1) == episode.query_labels).double().mean()
        sums += torch.stack([loss.detach().double(), 100.0 * correct])
    average_gradients(params, dist_info)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    loss_mean, accuracy_mean = all_reduce_mean(sums / len(episodes), dist_info).tolist()
    return loss_mean, accuracy_mean
