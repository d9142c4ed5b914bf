"""Bottleneck adapter `base + [y] + fc2(GELU(fc1(y)))` in Triton, the hidden kept on chip.

The maths is `taskadapter_fast.ops.reference.fused_adapter_ref`: y [..., D], fc1 D -> R (R = D/4:
192 for ViT-B/16, 128 for the text tower), exact (erf) GELU, fc2 R -> D, an optional skip (+ y)
and an optional residual `base` of y's shape. One kernel covers the four visual adapters (A_s
with the skip) and the text adapter.

Forward. A program owns BLOCK_M rows: it accumulates h = y @ fc1^T over D in BLOCK_D chunks into a
[BLOCK_M, BLOCK_R] fp32 tile, applies bias and GELU in registers, and streams fc2 over D in
BLOCK_D chunks, adding bias, skip and base before the single store. The hidden never reaches
memory and nothing is saved for backward but y (already alive) and the weights. D is a
compile-time constant (one specialisation per width, 768 and 512 in this model): the D loops have
fixed trip counts, and triton <= 3.7's interpreter cannot loop to a runtime bound under numpy >= 2.5.

Backward. The same program recomputes h, forms dh = (dout @ fc2) * GELU'(h), and writes
dy = dh @ fc1 (+ dout with the skip), plus GELU(h) and dh ([M, R], a quarter of y's size) for
the weight gradients, which are reductions over all M rows: fc2.grad = dout^T @ GELU(h) and
fc1.grad = dh^T @ y run as library GEMMs, the bias gradients as column sums in fp32.

Precision. Operands are cast to the compute dtype (the inputs' own, or the autocast dtype) on
load, so autocast needs no cast copies of y or the weights; the dots accumulate in fp32, GELU
runs in fp32, and GELU(h) is rounded to the compute dtype before fc2, as the reference's
low-precision run rounds it. The skip and base are added in fp32 before the one final rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import KernelSupport, cast, dot, dtype_constexprs, on_tensor_device
from ._common import is_interpreted as _is_interpreted


@dataclass(frozen=True, kw_only=True)
class FusedAdapterSupport(KernelSupport):
    max_hidden: int  # the widest hidden (fc1 output) kept on chip: a [BLOCK_M, next_pow2(R)] fp32 tile per program


# What these kernels handle; the dispatcher (taskadapter_fast/ops/dispatch.py) asks this.
SUPPORT = FusedAdapterSupport(max_hidden=256)
__all__ = ["SUPPORT", "FusedAdapterFunction", "FusedAdapterSupport", "is_interpreted"]
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _row_tile(num_rows, hidden, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's rows (int64) and the hidden channels: (rows, row_ok, hid, hid_ok)."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    hid = tl.arange(0, BLOCK_R)
    return rows, rows < num_rows, hid, hid < hidden


@triton.jit
def _load_2d(ptr, index0, index1, stride0, stride1, mask):
    """ptr[index0[:, None], index1[None, :]] of a strided 2-D tensor, 0 where masked."""
    return tl.load(ptr + index0[:, None] * stride0 + index1[None, :] * stride1, mask=mask, other=0.0)


@triton.jit
def _hidden(
    y_ptr,
    w1_ptr,
    b1_ptr,
    rows,
    row_ok,
    hid,
    hid_ok,
    DIM: tl.constexpr,
    stride_ym,
    stride_yd,
    stride_w1r,
    stride_w1d,
    HAS_B1: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    """fc1(y) for one tile of rows: [BLOCK_M, BLOCK_R] fp32."""
    h = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < DIM
        y = _load_2d(y_ptr, rows, d, stride_ym, stride_yd, row_ok[:, None] & d_ok[None, :])
        w1_t = _load_2d(w1_ptr, d, hid, stride_w1d, stride_w1r, d_ok[:, None] & hid_ok[None, :])  # [BLOCK_D, BLOCK_R]
        h = dot(cast(y, COMPUTE_DTYPE, RTNE_BF16), cast(w1_t, COMPUTE_DTYPE, RTNE_BF16), h, DOT_DTYPE)
    if HAS_B1:
        h += tl.load(b1_ptr + hid, mask=hid_ok, other=0.0).to(tl.float32)[None, :]
    return h


# Speed: not measured yet; benchmarks/README.md ("The Triton kernels") says what was checked and how to measure.
@triton.jit
def _fused_adapter_fwd_kernel(
    y_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    base_ptr,
    out_ptr,
    num_rows,
    DIM: tl.constexpr,
    hidden,
    stride_ym,
    stride_yd,
    stride_w1r,
    stride_w1d,
    stride_w2d,
    stride_w2r,
    stride_basem,
    stride_based,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    HAS_BASE: tl.constexpr,
    SKIP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    rows, row_ok, hid, hid_ok = _row_tile(num_rows, hidden, BLOCK_M, BLOCK_R)
    h = _hidden(
        y_ptr, w1_ptr, b1_ptr, rows, row_ok, hid, hid_ok, DIM, stride_ym, stride_yd, stride_w1r, stride_w1d,
        HAS_B1, BLOCK_M, BLOCK_R, BLOCK_D, COMPUTE_DTYPE, DOT_DTYPE, RTNE_BF16,
    )  # fmt: skip
    act = cast(0.5 * h * (1.0 + tl.erf(h * _SQRT1_2)), COMPUTE_DTYPE, RTNE_BF16)

    for d0 in range(0, DIM, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < DIM
        mask = row_ok[:, None] & d_ok[None, :]
        w2_t = _load_2d(w2_ptr, hid, d, stride_w2r, stride_w2d, hid_ok[:, None] & d_ok[None, :])  # [BLOCK_R, BLOCK_D]
        out = dot(act, cast(w2_t, COMPUTE_DTYPE, RTNE_BF16), tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), DOT_DTYPE)
        if HAS_B2:
            out += tl.load(b2_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
        if SKIP:
            out += _load_2d(y_ptr, rows, d, stride_ym, stride_yd, mask).to(tl.float32)
        if HAS_BASE:
            out += _load_2d(base_ptr, rows, d, stride_basem, stride_based, mask).to(tl.float32)
        tl.store(out_ptr + rows[:, None] * DIM + d[None, :], cast(out, out_ptr.dtype.element_ty, RTNE_BF16), mask=mask)


@triton.jit
def _fused_adapter_bwd_kernel(
    grad_out_ptr,
    y_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    grad_y_ptr,
    act_ptr,
    grad_h_ptr,
    num_rows,
    DIM: tl.constexpr,
    hidden,
    stride_gm,
    stride_gd,
    stride_ym,
    stride_yd,
    stride_w1r,
    stride_w1d,
    stride_w2d,
    stride_w2r,
    HAS_B1: tl.constexpr,
    SKIP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    rows, row_ok, hid, hid_ok = _row_tile(num_rows, hidden, BLOCK_M, BLOCK_R)
    hid_mask = row_ok[:, None] & hid_ok[None, :]

    h = _hidden(
        y_ptr, w1_ptr, b1_ptr, rows, row_ok, hid, hid_ok, DIM, stride_ym, stride_yd, stride_w1r, stride_w1d,
        HAS_B1, BLOCK_M, BLOCK_R, BLOCK_D, COMPUTE_DTYPE, DOT_DTYPE, RTNE_BF16,
    )  # fmt: skip
    cdf = 0.5 * (1.0 + tl.erf(h * _SQRT1_2))
    act = cast(h * cdf, COMPUTE_DTYPE, RTNE_BF16)
    tl.store(act_ptr + rows[:, None] * hidden + hid[None, :], act, mask=hid_mask)

    # d(act) = dout @ fc2, accumulated over D
    grad_act = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < DIM
        grad_out = _load_2d(grad_out_ptr, rows, d, stride_gm, stride_gd, row_ok[:, None] & d_ok[None, :])
        w2 = _load_2d(w2_ptr, d, hid, stride_w2d, stride_w2r, d_ok[:, None] & hid_ok[None, :])  # [BLOCK_D, BLOCK_R]
        grad_act = dot(
            cast(grad_out, COMPUTE_DTYPE, RTNE_BF16), cast(w2, COMPUTE_DTYPE, RTNE_BF16), grad_act, DOT_DTYPE
        )
    grad_h = grad_act * (cdf + h * tl.exp(-0.5 * h * h) * _INV_SQRT_2PI)
    grad_h = cast(tl.where(hid_mask, grad_h, 0.0), COMPUTE_DTYPE, RTNE_BF16)
    tl.store(grad_h_ptr + rows[:, None] * hidden + hid[None, :], grad_h, mask=hid_mask)

    # dy = dh @ fc1 (+ dout through the skip), streamed over D
    for d0 in range(0, DIM, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < DIM
        mask = row_ok[:, None] & d_ok[None, :]
        w1 = _load_2d(w1_ptr, hid, d, stride_w1r, stride_w1d, hid_ok[:, None] & d_ok[None, :])  # [BLOCK_R, BLOCK_D]
        grad_y = dot(
            grad_h, cast(w1, COMPUTE_DTYPE, RTNE_BF16), tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), DOT_DTYPE
        )
        if SKIP:
            grad_y += _load_2d(grad_out_ptr, rows, d, stride_gm, stride_gd, mask).to(tl.float32)
        tl.store(
            grad_y_ptr + rows[:, None] * DIM + d[None, :],
            cast(grad_y, grad_y_ptr.dtype.element_ty, RTNE_BF16),
            mask=mask,
        )


def is_interpreted() -> bool:
    """True when these kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _is_interpreted(_fused_adapter_fwd_kernel)


# Launch configuration: ptxas (triton 3.8, sm_90) reports no register spills for either kernel in
# bf16 or fp16 at BLOCK_R 128 or 256 with these (BLOCK_D 64 or 4 warps spill); fp32 spills a little
# (re-checked 2026-11-26 with DIM a constexpr, D = 512 / R = 128 and D = 768 / R = 192: bf16 none,
# fp32 at most 32 bytes). Not yet tuned for speed on a GPU.
_BLOCK_M, _BLOCK_D, _NUM_WARPS = 32, 32, 8


def _blocks(hidden: int) -> dict:
    block_r = max(16, triton.next_power_of_2(hidden))
    assert block_r <= SUPPORT.max_hidden
    return {"BLOCK_M": _BLOCK_M, "BLOCK_R": block_r, "BLOCK_D": _BLOCK_D}


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [M, D], a view whenever the leading dims allow one."""
    return t.reshape(-1, t.shape[-1])


def out_dtype(y: torch.Tensor, base: torch.Tensor | None, skip: bool, compute_dtype: torch.dtype) -> torch.dtype:
    """The reference's result dtype: fc2's output in the compute dtype, promoted by the skip and the base."""
    dtype = torch.promote_types(compute_dtype, y.dtype) if skip else compute_dtype
    return torch.promote_types(dtype, base.dtype) if base is not None else dtype


def _dense(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels index biases as dense vectors (a strided view would be read wrongly); they are tiny."""
    return None if bias is None else bias.contiguous()


@on_tensor_device
def fused_adapter_fwd(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    base: torch.Tensor | None,
    skip: bool,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch the forward kernel. y, base [..., D]; fc1_weight [R, D]; fc2_weight [D, R] -> [..., D] contiguous."""
    dim, hidden = y.shape[-1], fc1_weight.shape[0]
    fc1_bias, fc2_bias = _dense(fc1_bias), _dense(fc2_bias)
    out = torch.empty(y.shape, dtype=out_dtype(y, base, skip, compute_dtype), device=y.device)
    if out.numel() == 0:
        return out
    y2 = _rows(y)
    base2 = _rows(base) if base is not None else y2
    blocks = _blocks(hidden)
    grid = (triton.cdiv(y2.shape[0], blocks["BLOCK_M"]),)
    _fused_adapter_fwd_kernel[grid](
        y2,
        fc1_weight,
        fc1_bias if fc1_bias is not None else fc1_weight,
        fc2_weight,
        fc2_bias if fc2_bias is not None else fc2_weight,
        base2,
        out,
        y2.shape[0],
        dim,
        hidden,
        *y2.stride(),
        *fc1_weight.stride(),
        *fc2_weight.stride(),
        *base2.stride(),
        HAS_B1=fc1_bias is not None,
        HAS_B2=fc2_bias is not None,
        HAS_BASE=base is not None,
        SKIP=skip,
        **blocks,
        **dtype_constexprs(compute_dtype, is_interpreted()),
        num_warps=_NUM_WARPS,
    )
    return out


@on_tensor_device
def fused_adapter_bwd(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    skip: bool,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel. Returns (grad_y [..., D], GELU(h) [M, R], grad_h [M, R]), the last
    two in the compute dtype for the weight-gradient GEMMs."""
    dim, hidden = y.shape[-1], fc1_weight.shape[0]
    fc1_bias = _dense(fc1_bias)
    grad_y = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    y2, grad_out2 = _rows(y), _rows(grad_out)
    act = torch.empty((y2.shape[0], hidden), dtype=compute_dtype, device=y.device)
    grad_h = torch.empty_like(act)
    if grad_y.numel() == 0:
        return grad_y, act, grad_h
    blocks = _blocks(hidden)
    grid = (triton.cdiv(y2.shape[0], blocks["BLOCK_M"]),)
    _fused_adapter_bwd_kernel[grid](
        grad_out2,
        y2,
        fc1_weight,
        fc1_bias if fc1_bias is not None else fc1_weight,
        fc2_weight,
        grad_y,
        act,
        grad_h,
        y2.shape[0],
        dim,
        hidden,
        *grad_out2.stride(),
        *y2.stride(),
        *fc1_weight.stride(),
        *fc2_weight.stride(),
        HAS_B1=fc1_bias is not None,
        SKIP=skip,
        **blocks,
        **dtype_constexprs(compute_dtype, is_interpreted()),
        num_warps=_NUM_WARPS,
    )
    return grad_y, act, grad_h


@torch.library.custom_op("taskadapter_fast::fused_adapter", mutates_args=())
def _fused_adapter_op(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    base: torch.Tensor | None,
    skip: bool,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    return fused_adapter_fwd(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype)


@_fused_adapter_op.register_fake
def _(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype):
    return torch.empty(y.shape, dtype=out_dtype(y, base, skip, compute_dtype), device=y.device)


@torch.library.custom_op("taskadapter_fast::fused_adapter_backward", mutates_args=())
def _fused_adapter_backward_op(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    skip: bool,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return fused_adapter_bwd(grad_out, y, fc1_weight, fc1_bias, fc2_weight, skip, compute_dtype)


@_fused_adapter_backward_op.register_fake
def _(grad_out, y, fc1_weight, fc1_bias, fc2_weight, skip, compute_dtype):
    num_rows = y.numel() // y.shape[-1]
    act = y.new_empty((num_rows, fc1_weight.shape[0]), dtype=compute_dtype)
    return torch.empty(y.shape, dtype=y.dtype, device=y.device), act, torch.empty_like(act)


class FusedAdapterFunction(torch.autograd.Function):
    """Autograd for the Triton adapter: saves y and the weights; the hidden is recomputed.

    `FusedAdapterFunction.apply(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype)`;
    the same formula is registered on the custom op `torch.ops.taskadapter_fast.fused_adapter`.
    """

    @staticmethod
    def forward(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype) -> torch.Tensor:
        return torch.ops.taskadapter_fast.fused_adapter(
            y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype
        )

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype = inputs
        ctx.save_for_backward(y, fc1_weight, fc1_bias, fc2_weight)
        ctx.has_b2 = fc2_bias is not None
        ctx.b2_dtype = fc2_bias.dtype if fc2_bias is not None else None
        ctx.base_dtype = base.dtype if base is not None else None
        ctx.skip, ctx.compute_dtype = skip, compute_dtype

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        y, fc1_weight, fc1_bias, fc2_weight = ctx.saved_tensors
        grad_y, act, grad_h = torch.ops.taskadapter_fast.fused_adapter_backward(
            grad_out, y, fc1_weight, fc1_bias, fc2_weight, ctx.skip, ctx.compute_dtype
        )
        grad_out2 = grad_out.reshape(-1, grad_out.shape[-1])
        # weight gradients reduce over all rows: library GEMMs in the compute dtype, fp32 accumulation
        grad_w2 = (grad_out2.to(ctx.compute_dtype).t() @ act).to(fc2_weight.dtype)
        grad_w1 = (grad_h.t() @ y.reshape(-1, y.shape[-1]).to(ctx.compute_dtype)).to(fc1_weight.dtype)
        grad_b1 = grad_h.sum(0, dtype=torch.float32).to(fc1_bias.dtype) if fc1_bias is not None else None
        grad_b2 = grad_out2.sum(0, dtype=torch.float32).to(ctx.b2_dtype) if ctx.has_b2 else None
        grad_base = grad_out.to(ctx.base_dtype) if ctx.base_dtype is not None else None
        return grad_y, grad_w1, grad_b1, grad_w2, grad_b2, grad_base, None, None


_fused_adapter_op.register_autograd(FusedAdapterFunction.backward, setup_context=FusedAdapterFunction.setup_context)
