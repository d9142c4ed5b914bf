"""Pure-PyTorch reference implementations: the single definition of each op's maths.

Every fast path (kernels/) is checked against these functions in tests and benchmarks. They run on
every device and in every floating dtype, with no shape limit: impl="auto" can always fall back to them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Sequences longer than this go through SDPA in the reference (same maths, less memory);
# shorter ones use the explicit softmax(QK^T)V, which also works past SDPA's 65,535-batch limit.
# A choice of the reference's own formulation, not the Triton kernel's limit (kernels/short_attention.py, SUPPORT).
_EXPLICIT_SOFTMAX_MAX_LEN = 64


def short_attention_ref(qkv: torch.Tensor, num_heads: int, axis: int) -> torch.Tensor:
    """Multi-head self-attention along leading dimension `axis` of a packed qkv tensor.

    qkv: [..., 3*D] output of a multi-head attention in-projection (q, k, v concatenated on the
        last dim; each split into `num_heads` heads of D/num_heads as nn.MultiheadAttention does).
    axis: the leading dimension that forms the sequence; all other leading dims are batch.
    Returns [..., D], the attention output before the out-projection. No mask; scale 1/sqrt(D/H).
    """
    ndim = qkv.dim()
    axis = axis % ndim
    if axis == ndim - 1:
        raise ValueError("axis must be a leading dimension, not the packed qkv (last) dimension")
    three_d = qkv.shape[-1]
    if three_d % 3 != 0 or (three_d // 3) % num_heads != 0:
        raise ValueError(f"last dim {three_d} must be 3*D with D divisible by num_heads={num_heads}")
    dim = three_d // 3
    head_dim = dim // num_heads
    moved = qkv.movedim(axis, -2)  # [B..., L, 3D]
    batch_shape, seq_len = moved.shape[:-2], moved.shape[-2]
    x = moved.reshape(batch_shape.numel(), seq_len, 3, num_heads, head_dim)  # not -1: ambiguous when empty
    q, k, v = (t.transpose(1, 2) for t in x.unbind(2))  # each [B, H, L, hd]
    if seq_len <= _EXPLICIT_SOFTMAX_MAX_LEN:
        attn = torch.matmul(q * head_dim**-0.5, k.transpose(-1, -2))  # [B, H, L, L]
        softmax_dtype = torch.float32 if attn.dtype in (torch.float16, torch.bfloat16) else attn.dtype
        attn = attn.softmax(dim=-1, dtype=softmax_dtype).to(v.dtype)
        out = torch.matmul(attn, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(*batch_shape, seq_len, dim)  # [B..., L, D]
    return out.movedim(-2, axis)


def fused_adapter_ref(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    base: torch.Tensor | None = None,
    skip: bool = False,
) -> torch.Tensor:
    """Bottleneck adapter with optional skip and residual base.

    y: [..., D]; fc1_weight [D/r, D]; fc2_weight [D, D/r].
    Returns base + (y if skip) + fc2(GELU_erf(fc1(y))) with `base` absent counting as zero.
    """
    out = F.linear(F.gelu(F.linear(y, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
    if skip:
        out = out + y
    if base is not None:
        out = base + out
    return out
