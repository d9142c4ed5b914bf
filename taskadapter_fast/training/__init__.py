"""Episodic training: `train(run_config, output_dir)` (the recipe in `recipe.py`) and the pieces beside it.

recipe.py       train(): set-up -> each epoch: train, validate and select -> test -> results
steps.py        data, model, loaders, optimizer, schedule, autocast; one optimizer step (train_step)
distributed.py  torchrun ranks: process group, collectives, each rank's episodes, sharded evaluation
state.py        the resumable state (state.pt + state.json) and the RNG states
run_dir.py      the run directory: file names, --output-dir / --resume checks, config.yaml
runlog.py       metrics.jsonl, TensorBoard, the plots
"""

from __future__ import annotations

from .distributed import DistInfo, episode_indices
from .recipe import train
from .steps import (
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

__all__ = [
    "DistInfo",
    "amp_context",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "enable_grad_checkpointing",
    "episode_indices",
    "make_loader",
    "prepare_data",
    "schedule_at",
    "train",
    "train_step",
]
