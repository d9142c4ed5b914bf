"""Functional ops with fast paths. `impl` is "auto", "reference" or "triton".

The Triton implementations are added by the kernels work (issue: fused Triton kernels); until then
every call resolves to the reference implementation.
"""

from __future__ import annotations

import os

import torch

from .reference import fused_adapter_ref, short_attention_ref

IMPLS = ("auto", "reference", "triton")
ENV_IMPL = "TAF_IMPL"


def _resolve(impl: str) -> str:
    impl = os.environ.get(ENV_IMPL, impl) if impl == "auto" else impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton":
        raise ValueError("impl='triton' cannot run: the Triton kernels are not built into this version")
    return "reference"


def short_attention(qkv: torch.Tensor, num_heads: int, axis: int, impl: str = "auto") -> torch.Tensor:
    """Attention along leading dimension `axis` of packed qkv [..., 3D] -> [..., D]. See reference."""
    _resolve(impl)
    return short_attention_ref(qkv, num_heads, axis)


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
    """base + (y if skip) + fc2(GELU(fc1(y))). See reference."""
    _resolve(impl)
    return fused_adapter_ref(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base=base, skip=skip)


__all__ = ["short_attention", "fused_adapter", "short_attention_ref", "fused_adapter_ref", "IMPLS"]
