"""The visual branch: CLIP ViT with temporal embedding and Task-Adapter blocks (SPEC §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .adapters import VisualBlockAdapters


def _msa(block: nn.Module, h: torch.Tensor, axis: int, impl: str) -> torch.Tensor:
    """The block's frozen MSA along `axis` of h [..., D]: in-proj, attention, out-proj."""
    attn = block.attn
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [..., 3D]
    out = ops.short_attention(qkv, attn.num_heads, axis, impl=impl)  # [..., D]
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def adapted_block_forward(
    block: nn.Module, adapters: VisualBlockAdapters, x: torch.Tensor, impl: str = "auto"
) -> torch.Tensor:
    """One adapted block on x [V, T, N, D] (V videos of ONE set, T frames, N tokens). SPEC §2.3."""
    ln1 = block.ln_1
    if adapters.t_adapter is not None:  # temporal: sequence = the T frames
        x = adapters.t_adapter(_msa(block, ln1(x), axis=1, impl=impl), base=x, impl=impl)
    # spatial: sequence = the N tokens (197 for ViT-B/16), longer than the short-axis kernel takes, so a
    # model running impl="triton" lets the dispatcher pick the spatial implementation itself.
    spatial_impl = "reference" if impl == "reference" else "auto"
    spatial = block.ls_1(_msa(block, ln1(x), axis=2, impl=spatial_impl))
    x = adapters.s_adapter(spatial, base=x, impl=impl) if adapters.s_adapter is not None else x + spatial
    if adapters.task_adapter is not None:  # Task-MSA: sequence = the V videos of the set
        x = adapters.task_adapter(_msa(block, ln1(x), axis=0, impl=impl), base=x, impl=impl)
    h = block.ln_2(x)
    base = x + block.ls_2(block.mlp(h))
    return adapters.mlp_adapter(h, base=base, impl=impl) if adapters.mlp_adapter is not None else base


class TaskAdaptedVisual(nn.Module):
    """Wraps open_clip's VisionTransformer: frames -> per-frame class-token features [V, T, E].

    The frozen CLIP tower is held by the caller (it is shared with the text tower in one CLIP model);
    this module owns only the trainable temporal embedding and block adapters.
    """

    def __init__(
        self,
        visual: nn.Module,
        num_frames: int,
        adapter_layers: int,
        adapter_ratio: float = 0.25,
        aim: bool = True,
        task: bool = True,
        temporal_embedding: bool = True,
    ):
        super().__init__()
        self.width = visual.conv1.out_channels
        self.depth = len(visual.transformer.resblocks)
        if adapter_layers > self.depth:
            raise ValueError(f"adapter_layers={adapter_layers} exceeds the visual depth {self.depth}")
        self.num_frames = num_frames
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, tuple | list) else int(size)
        self.first_adapted = self.depth - adapter_layers if (aim or task) else self.depth
        hidden = max(1, int(self.width * adapter_ratio))
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, self.width)) if temporal_embedding else None
        self.adapters = nn.ModuleDict(
            {
                str(i): VisualBlockAdapters(self.width, hidden, aim=aim, task=task)
                for i in range(self.first_adapted, self.depth)
            }
        )

    def check_videos(self, videos: torch.Tensor) -> None:
        if videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be [V, T, 3, S, S], got shape {tuple(videos.shape)}")
        if videos.shape[0] < 1:
            raise ValueError("videos must hold at least one video")
        if videos.shape[1] != self.num_frames:
            raise ValueError(
                f"videos have {videos.shape[1]} frames but the temporal embedding expects num_frames={self.num_frames}"
            )
        if videos.shape[3] != self.image_size or videos.shape[4] != self.image_size:
            raise ValueError(
                f"frames are {videos.shape[3]}x{videos.shape[4]} but the backbone expects "
                f"{self.image_size}x{self.image_size}"
            )

    def encode_prefix(self, visual: nn.Module, videos: torch.Tensor) -> torch.Tensor:
        """Patch embedding, temporal embedding, ln_pre and the frozen blocks before the first adapted one.

        videos: [V, T, 3, S, S] -> tokens [V, T, N, D]. Per-video (no cross-video interaction), so its
        output can be cached per video at evaluation time.
        """
        self.check_videos(videos)
        num_videos, num_frames = videos.shape[:2]
        frames = videos.flatten(0, 1).to(visual.conv1.weight.dtype)  # [V*T, 3, S, S]
        x = visual.conv1(frames).flatten(2).transpose(1, 2)  # [V*T, N-1, D]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [V*T, N, D]
        x = visual.patch_dropout(x)
        x = x.view(num_videos, num_frames, x.shape[1], x.shape[2])
        if self.temporal_embedding is not None:
            x = x + self.temporal_embedding.to(x.dtype)[None, :, None, :]
        x = visual.ln_pre(x)
        flat = x.flatten(0, 1)  # [V*T, N, D]
        for block in visual.transformer.resblocks[: self.first_adapted]:
            flat = block(flat)
        return flat.view_as(x)

    def encode_suffix(self, visual: nn.Module, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """Adapted blocks (Task-MSA across the V videos of the set) and the head: [V, T, N, D] -> [V, T, E]."""
        for i in range(self.first_adapted, self.depth):
            x = adapted_block_forward(visual.transformer.resblocks[i], self.adapters[str(i)], x, impl=impl)
        cls = visual.ln_post(x[:, :, 0])  # [V, T, D]
        return cls @ visual.proj if visual.proj is not None else cls
