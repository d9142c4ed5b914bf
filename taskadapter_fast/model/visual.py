"""The visual branch: CLIP ViT with temporal embedding and Task-Adapter blocks (docs/method.md §2)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import ops
from .adapters import VisualBlockAdapters


def _is_literal(impl: str) -> bool:
    """Whether `impl` asks for the model's literal formulation (see "Two formulations" below)."""
    return ops.requested_impl(impl) == "reference"


# Two formulations of the same maths. impl="reference" runs the literal one: CLIP's own block forward for the
# frozen blocks and every token through every adapted block, the readable baseline (the official code's
# structure). Every other impl ("auto", "triton") runs the restructured one, which does less work on CPU and GPU:
# - frozen blocks as explicit in-proj -> SDPA -> out-proj instead of nn.MultiheadAttention, and attention outputs
#   made contiguous before the out-projection: under CPU autocast, F.linear on a non-contiguous input (MHA's
#   batch_first transpose, the permuted T-MSA and Task-MSA outputs) is a batched matmul over B copies of the weight;
# - in the last block only the class token is computed past the spatial MSA (the head reads only it, and the
#   spatial MSA is the only step that mixes token positions).
# How close the two are, the measured speed-ups, and what was tried and dropped: benchmarks/README.md, "CPU
# measurements of the visual training step".


def _msa(block: nn.Module, h: torch.Tensor, axis: int, impl: str) -> torch.Tensor:
    """The block's frozen MSA along `axis` of h [..., D]: in-proj, attention, out-proj."""
    attn = block.attn
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [..., 3D]
    out = ops.short_attention(qkv, attn.num_heads, axis, impl=impl)  # [..., D]
    if not _is_literal(impl):
        out = out.contiguous()  # a permuted view for axis 0/1: see "Two formulations"
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _class_token_msa(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The spatial MSA's output at the class token only: h [V, T, N, D] -> [V, T, 1, D].

    Queries from token 0, keys and values from all N tokens: row 0 of the full spatial MSA.
    """
    attn = block.attn
    num_videos, num_frames, num_tokens, dim = h.shape
    heads = attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    flat = h.reshape(num_videos * num_frames, num_tokens, dim)  # [B, N, D]
    q = F.linear(flat[:, :1], weight[:dim], None if bias is None else bias[:dim])  # [B, 1, D]
    kv = F.linear(flat, weight[dim:], None if bias is None else bias[dim:])  # [B, N, 2D]
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, 1, hd]
    k, v = (t.transpose(1, 2) for t in kv.unflatten(-1, (2, heads, -1)).unbind(2))  # [B, H, N, hd]
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(num_videos, num_frames, 1, dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def plain_block_forward(block: nn.Module, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """One frozen CLIP block on x [B, N, D] (batch first); CLIP's own forward for impl="reference".

    The same in-projection, SDPA call and out-projection as nn.MultiheadAttention, on contiguous tensors, so the
    result is CLIP's bit for bit (fp32 and bf16 autocast, on this CPU). CLIP's attention dropout is 0 and the
    frozen backbone runs in eval mode, so there is no dropout to apply.
    """
    if _is_literal(impl):
        return block(x)
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, N, 3D]
    q, k, v = (t.transpose(1, 2) for t in qkv.unflatten(-1, (3, attn.num_heads, -1)).unbind(2))  # [B, H, N, hd]
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # [B, N, D]
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def adapted_block_forward(
    block: nn.Module,
    adapters: VisualBlockAdapters,
    x: torch.Tensor,
    impl: str = "auto",
    class_token_only: bool = False,
    record: Callable[[str, nn.Module, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One adapted block on x [V, T, N, D] (V videos of ONE set, T frames, N tokens). docs/method.md §2.3.

    class_token_only: return only token 0, [V, T, 1, D] (for the last block, whose other tokens nobody reads);
    ignored for impl="reference", which always returns [V, T, N, D].
    record: called as record("spatial" | "task", block, input of that MSA) before the spatial MSA and the
    Task-MSA, to read their attention (`taskadapter_fast.explanation`); it only reads, so the output is the same.
    """
    ln1 = block.ln_1
    if adapters.t_adapter is not None:  # temporal: sequence = the T frames
        x = adapters.t_adapter(_msa(block, ln1(x), axis=1, impl=impl), base=x, impl=impl)
    if record is not None:
        record("spatial", block, ln1(x))
    if class_token_only and not _is_literal(impl):
        spatial = block.ls_1(_class_token_msa(block, ln1(x)))
        x = x[:, :, :1]
    else:
        # spatial: sequence = the N tokens (197 for ViT-B/16), longer than the short-axis kernel takes: the
        # reference's SDPA, whatever impl (or TAF_IMPL) asks for the short axes.
        too_long = not ops.short_attention_kernel_takes(x.shape[2])
        spatial_impl = "reference" if impl == "reference" or too_long else "auto"
        spatial = block.ls_1(_msa(block, ln1(x), axis=2, impl=spatial_impl))
    x = adapters.s_adapter(spatial, base=x, impl=impl) if adapters.s_adapter is not None else x + spatial
    if adapters.task_adapter is not None:  # Task-MSA: sequence = the V videos of the set
        if record is not None:
            record("task", block, ln1(x))
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
        # Gradient checkpointing of the adapted blocks: recompute each one in the backward pass instead of
        # keeping its activations (same maths, less memory; train.grad_checkpoint sets it).
        self.checkpoint_blocks = False

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

    def encode_prefix(self, visual: nn.Module, videos: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """Patch embedding, temporal embedding, ln_pre and the frozen blocks before the first adapted one.

        videos: [V, T, 3, S, S] -> tokens [V, T, N, D]. Per-video (no cross-video interaction), so its
        output can be cached per video at evaluation time. The temporal embedding is added before the
        frozen blocks, so training backpropagates through them (input gradients only): they cannot run
        under no_grad unless the model has no temporal embedding, and then autograd records nothing here anyway.
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
            flat = plain_block_forward(block, flat, impl=impl)
        return flat.view_as(x)

    def encode_suffix(
        self,
        visual: nn.Module,
        x: torch.Tensor,
        impl: str = "auto",
        record: Callable[[int, str, nn.Module, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Adapted blocks (Task-MSA across the V videos of the set) and the head: [V, T, N, D] -> [V, T, E].

        record: see `adapted_block_forward`; called with the block's index first.
        """
        for i in range(self.first_adapted, self.depth):
            block, adapters = visual.transformer.resblocks[i], self.adapters[str(i)]
            last = i == self.depth - 1
            reads = None if record is None else functools.partial(record, i)
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(
                    adapted_block_forward,
                    block,
                    adapters,
                    x,
                    impl,
                    class_token_only=last,
                    record=reads,
                    use_reentrant=False,
                )
            else:
                x = adapted_block_forward(block, adapters, x, impl=impl, class_token_only=last, record=reads)
        cls = visual.ln_post(x[:, :, 0])  # [V, T, D]
        return cls @ visual.proj if visual.proj is not None else cls
