"""Named benchmark shapes: CLIP ViT-B/16 with T = 8 frames, 5-way episodes, and the text tower.

One adapted ViT-B/16 block sees x [V, T, N, D] = [V, 8, 197, 768] with 12 heads; V is the number
of videos in one encoded set (support and query sets are encoded separately):
- 5-way 1-shot: 5 support videos (and 5 queries with Q = 1);
- 5-way 5-shot: 25 support videos, the largest set;
- CPU: 3 videos, the issue's CPU training-step size.
The text tower's O-MSA sees [C, 3, 77, 512] with 8 heads, C = 5 classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FRAMES = 8
VIT_TOKENS, VIT_DIM, VIT_HEADS = 197, 768, 12
TEXT_PROMPTS, TEXT_TOKENS, TEXT_DIM, TEXT_HEADS = 3, 77, 512, 8
ADAPTER_REDUCTION = 4


@dataclass(frozen=True)
class AttentionShape:
    """short_attention on qkv [*leading, 3*dim] along `axis`."""

    name: str
    leading: tuple[int, ...]
    dim: int
    heads: int
    axis: int
    gpu_only: bool

    @property
    def qkv(self) -> tuple[int, ...]:
        return (*self.leading, 3 * self.dim)

    @property
    def rows(self) -> int:
        return math.prod(self.leading)


@dataclass(frozen=True)
class AdapterShape:
    """fused_adapter on y [*leading, dim], hidden = dim / 4, with the skip and base of one adapter."""

    name: str
    leading: tuple[int, ...]
    dim: int
    skip: bool
    base: bool
    gpu_only: bool

    @property
    def hidden(self) -> int:
        return self.dim // ADAPTER_REDUCTION

    @property
    def y(self) -> tuple[int, ...]:
        return (*self.leading, self.dim)

    @property
    def rows(self) -> int:
        return math.prod(self.leading)


def _vit(videos: int) -> tuple[int, ...]:
    return (videos, FRAMES, VIT_TOKENS)


_SETS = {"5w1s": (5, True), "5w5s": (25, True), "cpu3": (3, False)}

ATTENTION_SHAPES = {
    shape.name: shape
    for tag, (videos, gpu_only) in _SETS.items()
    for shape in (
        AttentionShape(f"T-MSA-{tag}", _vit(videos), VIT_DIM, VIT_HEADS, axis=1, gpu_only=gpu_only),
        AttentionShape(f"Task-MSA-{tag}", _vit(videos), VIT_DIM, VIT_HEADS, axis=0, gpu_only=gpu_only),
    )
}
ATTENTION_SHAPES["O-MSA-5way"] = AttentionShape(
    "O-MSA-5way", (5, TEXT_PROMPTS, TEXT_TOKENS), TEXT_DIM, TEXT_HEADS, axis=1, gpu_only=False
)

ADAPTER_SHAPES = {
    shape.name: shape
    for tag, (videos, gpu_only) in _SETS.items()
    for shape in (
        AdapterShape(f"A_t-{tag}", _vit(videos), VIT_DIM, skip=False, base=True, gpu_only=gpu_only),
        AdapterShape(f"A_s-{tag}", _vit(videos), VIT_DIM, skip=True, base=True, gpu_only=gpu_only),
    )
}
ADAPTER_SHAPES["A_o-5way"] = AdapterShape(
    "A_o-5way", (5, TEXT_PROMPTS, TEXT_TOKENS), TEXT_DIM, skip=False, base=True, gpu_only=False
)
