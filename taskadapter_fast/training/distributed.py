"""Data-parallel training over `torchrun` ranks: the process group, the collectives, which episodes each
rank trains, and evaluation split over the ranks. Every function is a no-op (or the identity) in a
world of one process, so the single-process path never touches torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


# ------------------------------------------------------------------------------------------------ collectives
def all_reduce_mean(tensor: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """`tensor`, in place, averaged over the ranks."""
    if dist_info.enabled:
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
    all_reduce_mean(flat, dist_info)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def gather(obj: Any, dist_info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist_info.enabled:
        return [obj]
    out: list[Any] = [None] * dist_info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, dist_info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist_info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        dist.barrier()


def broadcast_parameters(model, dist_info: DistInfo) -> None:
    """Rank 0's trainable parameters on every rank (after rank 0 alone loaded a checkpoint)."""
    if not dist_info.enabled:
        return
    for p in model.trainable_parameters():
        dist.broadcast(p.data, src=0)


# ------------------------------------------------------------------------------------------------ sharding
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


def sharded_evaluate(model, loader, ids_or_plans: list, corpus, dist_info: DistInfo, cache: bool, progress: bool):
    """evaluate() with the episodes split over the ranks; every rank gets the merged result.

    A rank whose share is empty (fewer episodes than ranks) evaluates nothing. The merge puts the
    episodes back in the order of `ids_or_plans`, also when a rank skipped one (an unreadable video).
    """
    from ..data.episodes import EpisodePlan
    from ..evaluation import evaluate, mean_ci95

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
    gathered = gather(part, dist_info)
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
