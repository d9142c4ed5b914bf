"""Functional ops with fast paths: `impl` is "auto", "reference" or "triton".

`reference` (ops/reference.py) is the single definition of the maths; `triton` runs the kernels in
`taskadapter_fast.kernels`. How an implementation is chosen, and the TAF_IMPL override, are
described in ops/dispatch.py.
"""

from __future__ import annotations

import torch

from .dispatch import (
    ENV_IMPL,
    FUSED_ADAPTER_IMPLS,
    IMPLS,
    SHORT_ATTENTION_IMPLS,
    Implementation,
    requested_impl,
    select,
    short_attention_kernel_takes,
    validate_fused_adapter,
    validate_short_attention,
)
from .reference import fused_adapter_ref, short_attention_ref


def short_attention(qkv: torch.Tensor, num_heads: int, axis: int, impl: str = "auto") -> torch.Tensor:
    """Multi-head self-attention along leading dimension `axis` of a packed qkv tensor.

    qkv: [..., 3*D], the in-projection output (q, k, v concatenated on the last dim, heads split as
        nn.MultiheadAttention does); any strides.
    axis: the leading dim that forms the sequence; every other leading dim is batch.
    Returns [..., D] before the out-projection. No mask; scale 1/sqrt(D/num_heads).
    """
    validate_short_attention(qkv, num_heads, axis)
    chosen = select("short_attention", SHORT_ATTENTION_IMPLS, impl, qkv.device, qkv, num_heads, axis)
    return chosen.run(qkv, num_heads, axis)


def fused_adapter(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    base: torch.Tensor | None = None,
    skip: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Bottleneck adapter: base + (y if skip) + fc2(GELU_erf(fc1(y))), `base` absent counting as zero.

    y: [..., D]; fc1_weight [R, D], fc1_bias [R]; fc2_weight [D, R], fc2_bias [D]; base: y's shape.
    Returns [..., D].
    """
    args = (y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip)
    validate_fused_adapter(*args)
    chosen = select("fused_adapter", FUSED_ADAPTER_IMPLS, impl, y.device, *args)
    return chosen.run(*args)


__all__ = [
    "ENV_IMPL",
    "FUSED_ADAPTER_IMPLS",
    "IMPLS",
    "SHORT_ATTENTION_IMPLS",
    "Implementation",
    "fused_adapter",
    "fused_adapter_ref",
    "requested_impl",
    "short_attention",
    "short_attention_kernel_takes",
    "short_attention_ref",
]
