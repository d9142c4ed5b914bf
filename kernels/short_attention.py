"""Multi-head attention along one short leading axis of a packed qkv tensor, in Triton.

The maths is `taskadapter_fast.ops.reference.short_attention_ref`: for qkv [..., 3*D] (q, k, v
concatenated on the last dim, each split into heads as nn.MultiheadAttention does), attention runs
along leading dimension `axis` (length L <= SUPPORT.max_seq_len) and every other leading dimension
is batch; the result is [..., D] in the layout the out-projection consumes. No mask, scale
1/sqrt(D/num_heads).

Layout. The kernels read q, k and v straight from qkv through its strides and write the output
in place of the usual permute -> attention -> permute back -> contiguous chain. The leading dims
other than `axis` are coalesced into at most three batch dims (b0, b1, b2), so any view whose
batch dims coalesce that far (every contiguous tensor, and most slices and transposes) is read
without a copy; anything else is copied once by the launcher.

Tiling. A program owns one head of a tile of BLOCK_M rows; the rows are SEQS_PER_TILE whole
sequences of L positions laid end to end, so short sequences share a tile (4 sequences of 8
frames in 32 rows, 10 of 3 prompts) and the tile's scores form a block-diagonal BLOCK_M x BLOCK_M
matrix: entries between different sequences are masked out before the softmax. Tensor-core dots
need at least 16 rows, which one sequence of 3 to 8 could not fill, and a whole sequence in one
tile needs no inner loop or running max. The grid is 1-D (tiles x heads), so there is no 65,535
limit on the number of sequences.

Precision. Loads are cast to the compute dtype (the tensor's own, or the autocast dtype), the dots
accumulate in fp32, and the softmax runs in fp32; the probabilities are cast to the compute dtype
before the P @ V dot, as the reference does. fp32 dots use IEEE precision, never TF32.

Backward recomputes the softmax from q and k (a tile is one whole sequence set, so there is no
running max to keep and nothing is saved but qkv itself) and uses rowsum(P * dP), which equals
rowsum(dO * O), so the forward output is not saved either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import KernelSupport, cast, dot, dtype_constexprs, on_tensor_device
from ._common import is_interpreted as _is_interpreted


@dataclass(frozen=True, kw_only=True)
class ShortAttentionSupport(KernelSupport):
    max_seq_len: int  # the longest sequence (the short axis): a whole sequence is one tile
    max_head_dim: int  # the widest head: q, k, v and the output of one head sit in registers


# What these kernels handle; the dispatcher (taskadapter_fast/ops/dispatch.py) asks this, and so, through
# ops.short_attention_kernel_takes, does the model when it routes the 197-token spatial axis.
SUPPORT = ShortAttentionSupport(max_seq_len=64, max_head_dim=128)
__all__ = ["SUPPORT", "ShortAttentionFunction", "ShortAttentionSupport", "is_interpreted"]


@triton.jit
def _batch_coords(seq, batch_size1, batch_size2):
    """(b0, b1, b2) of sequence index `seq` over the coalesced batch dims, int64 for the offsets.

    The division runs in int32 (sequence counts stay far below 2**31); only the products with the
    strides need 64 bits.
    """
    b2 = seq % batch_size2
    rest = seq // batch_size2
    return (rest // batch_size1).to(tl.int64), (rest % batch_size1).to(tl.int64), b2.to(tl.int64)


@triton.jit
def _row_offsets(b0, b1, b2, pos, stride_b0, stride_b1, stride_b2, stride_l):
    """Element offset of row (batch coords, position `pos`) in a tensor."""
    return b0 * stride_b0 + b1 * stride_b1 + b2 * stride_b2 + pos.to(tl.int64) * stride_l


@triton.jit
def _tile_rows(
    num_seqs,
    seq_len,
    num_heads,
    head_dim,
    batch_size1,
    batch_size2,
    SEQS_PER_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """This program's head and the rows of its tile: (head, local_seq, pos, row_ok, cols, mask, b0, b1, b2).

    Row r of the tile is position `pos` of the tile's sequence `local_seq`; `mask` marks the valid
    (row, channel) entries of a [BLOCK_M, BLOCK_D] head slice.
    """
    pid = tl.program_id(0)
    head = pid % num_heads
    tile = pid // num_heads
    rows = tl.arange(0, BLOCK_M)
    local_seq = rows // seq_len
    pos = rows % seq_len
    seq = tile * SEQS_PER_TILE + local_seq
    row_ok = (local_seq < SEQS_PER_TILE) & (seq < num_seqs)
    cols = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (cols < head_dim)[None, :]
    b0, b1, b2 = _batch_coords(seq, batch_size1, batch_size2)
    return head, local_seq, pos, row_ok, cols, mask, b0, b1, b2


@triton.jit
def _load_head(ptr, row_offsets, col0, cols, stride_c, mask, COMPUTE_DTYPE: tl.constexpr, RTNE_BF16: tl.constexpr):
    """One head's [BLOCK_M, BLOCK_D] slice (channels col0 + cols), cast to the compute dtype."""
    col_offsets = (col0 + cols).to(tl.int64) * stride_c
    return cast(
        tl.load(ptr + row_offsets[:, None] + col_offsets[None, :], mask=mask, other=0.0), COMPUTE_DTYPE, RTNE_BF16
    )


@triton.jit
def _probabilities(q, k, scale_log2e, local_seq, row_ok, DOT_DTYPE: tl.constexpr):
    """softmax(q k^T * scale) within each sequence of the tile, fp32 [BLOCK_M, BLOCK_M].

    Scores are in log2 units; only pairs inside one sequence survive the block-diagonal mask.
    """
    scores = dot(q, tl.trans(k), None, DOT_DTYPE) * scale_log2e
    same_seq = (local_seq[:, None] == local_seq[None, :]) & row_ok[None, :]
    scores = tl.where(same_seq, scores, -1.0e30)
    probs = tl.exp2(scores - tl.max(scores, axis=1)[:, None])
    return probs / tl.sum(probs, axis=1)[:, None]


# Speed: not measured yet; benchmarks/README.md ("The Triton kernels") says what was checked and how to measure.
@triton.jit
def _short_attention_fwd_kernel(
    qkv_ptr,
    out_ptr,
    num_seqs,
    seq_len,
    num_heads,
    head_dim,
    dim,
    batch_size1,
    batch_size2,
    qkv_stride_b0,
    qkv_stride_b1,
    qkv_stride_b2,
    qkv_stride_l,
    qkv_stride_c,
    out_stride_b0,
    out_stride_b1,
    out_stride_b2,
    out_stride_l,
    scale_log2e,
    SEQS_PER_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    head, local_seq, pos, row_ok, cols, mask, b0, b1, b2 = _tile_rows(
        num_seqs, seq_len, num_heads, head_dim, batch_size1, batch_size2, SEQS_PER_TILE, BLOCK_M, BLOCK_D
    )
    qkv_rows = _row_offsets(b0, b1, b2, pos, qkv_stride_b0, qkv_stride_b1, qkv_stride_b2, qkv_stride_l)
    q = _load_head(qkv_ptr, qkv_rows, head * head_dim, cols, qkv_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)
    k = _load_head(qkv_ptr, qkv_rows, dim + head * head_dim, cols, qkv_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)
    v = _load_head(qkv_ptr, qkv_rows, 2 * dim + head * head_dim, cols, qkv_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)

    probs = _probabilities(q, k, scale_log2e, local_seq, row_ok, DOT_DTYPE)
    out = dot(cast(probs, COMPUTE_DTYPE, RTNE_BF16), v, None, DOT_DTYPE)  # [BLOCK_M, BLOCK_D] fp32

    out_rows = _row_offsets(b0, b1, b2, pos, out_stride_b0, out_stride_b1, out_stride_b2, out_stride_l)
    out_cols = (head * head_dim + cols).to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] + out_cols[None, :], cast(out, COMPUTE_DTYPE, RTNE_BF16), mask=mask)


@triton.jit
def _short_attention_bwd_kernel(
    qkv_ptr,
    grad_out_ptr,
    grad_qkv_ptr,
    num_seqs,
    seq_len,
    num_heads,
    head_dim,
    dim,
    batch_size1,
    batch_size2,
    qkv_stride_b0,
    qkv_stride_b1,
    qkv_stride_b2,
    qkv_stride_l,
    qkv_stride_c,
    gout_stride_b0,
    gout_stride_b1,
    gout_stride_b2,
    gout_stride_l,
    gout_stride_c,
    gqkv_stride_b0,
    gqkv_stride_b1,
    gqkv_stride_b2,
    gqkv_stride_l,
    scale,
    scale_log2e,
    SEQS_PER_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    head, local_seq, pos, row_ok, cols, mask, b0, b1, b2 = _tile_rows(
        num_seqs, seq_len, num_heads, head_dim, batch_size1, batch_size2, SEQS_PER_TILE, BLOCK_M, BLOCK_D
    )
    qkv_rows = _row_offsets(b0, b1, b2, pos, qkv_stride_b0, qkv_stride_b1, qkv_stride_b2, qkv_stride_l)
    q = _load_head(qkv_ptr, qkv_rows, head * head_dim, cols, qkv_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)
    k = _load_head(qkv_ptr, qkv_rows, dim + head * head_dim, cols, qkv_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)
    v = _load_head(qkv_ptr, qkv_rows, 2 * dim + head * head_dim, cols, qkv_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)
    gout_rows = _row_offsets(b0, b1, b2, pos, gout_stride_b0, gout_stride_b1, gout_stride_b2, gout_stride_l)
    grad_out = _load_head(grad_out_ptr, gout_rows, head * head_dim, cols, gout_stride_c, mask, COMPUTE_DTYPE, RTNE_BF16)

    # recompute the probabilities exactly as the forward did
    probs = tl.where(row_ok[:, None], _probabilities(q, k, scale_log2e, local_seq, row_ok, DOT_DTYPE), 0.0)

    grad_v = dot(tl.trans(cast(probs, COMPUTE_DTYPE, RTNE_BF16)), grad_out, None, DOT_DTYPE)
    grad_probs = dot(grad_out, tl.trans(v), None, DOT_DTYPE)  # [BLOCK_M, BLOCK_M] fp32
    # softmax backward; rowsum(P * dP) is rowsum(dO * O), so O need not be stored
    grad_scores = probs * (grad_probs - tl.sum(probs * grad_probs, axis=1)[:, None])
    grad_scores = cast(grad_scores, COMPUTE_DTYPE, RTNE_BF16)
    grad_q = dot(grad_scores, k, None, DOT_DTYPE) * scale
    grad_k = dot(tl.trans(grad_scores), q, None, DOT_DTYPE) * scale

    gqkv_rows = _row_offsets(b0, b1, b2, pos, gqkv_stride_b0, gqkv_stride_b1, gqkv_stride_b2, gqkv_stride_l)
    out_dtype = grad_qkv_ptr.dtype.element_ty
    base = grad_qkv_ptr + gqkv_rows[:, None]  # grad_qkv is contiguous along the channels
    q_cols = (head * head_dim + cols).to(tl.int64)
    k_cols = q_cols + dim
    v_cols = q_cols + 2 * dim
    tl.store(base + q_cols[None, :], cast(grad_q, out_dtype, RTNE_BF16), mask=mask)
    tl.store(base + k_cols[None, :], cast(grad_k, out_dtype, RTNE_BF16), mask=mask)
    tl.store(base + v_cols[None, :], cast(grad_v, out_dtype, RTNE_BF16), mask=mask)


def is_interpreted() -> bool:
    """True when these kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _is_interpreted(_short_attention_fwd_kernel)


def _coalesced_batch_dims(
    sizes: list[int], strides_per_tensor: list[list[int]]
) -> tuple[list[int], list[list[int]]] | None:
    """Merge adjacent batch dims that are one contiguous run in every tensor; at most three may remain.

    Returns (sizes [3], strides [n_tensors][3]) padded at the front with unit dims, or None if the
    dims do not coalesce to three.
    """
    dims = [i for i, size in enumerate(sizes) if size != 1]
    merged_sizes: list[int] = []
    merged_strides: list[list[int]] = [[] for _ in strides_per_tensor]
    for i in dims:
        pairs = list(zip(merged_strides, strides_per_tensor, strict=True))
        mergeable = bool(merged_sizes) and all(merged[-1] == strides[i] * sizes[i] for merged, strides in pairs)
        if mergeable:
            merged_sizes[-1] *= sizes[i]
            for merged, strides in pairs:
                merged[-1] = strides[i]
        else:
            merged_sizes.append(sizes[i])
            for merged, strides in pairs:
                merged.append(strides[i])
    if len(merged_sizes) > 3:
        return None
    pad = 3 - len(merged_sizes)
    return [1] * pad + merged_sizes, [[0] * pad + merged for merged in merged_strides]


def _layout(axis: int, tensors: list[torch.Tensor]) -> tuple[list[int], list[list[int]]] | None:
    """Coalesced batch sizes [3] and, per tensor, strides (b0, b1, b2, axis, channel)."""
    shape = list(tensors[0].shape[:-1])
    batch = [i for i in range(len(shape)) if i != axis]
    coalesced = _coalesced_batch_dims([shape[i] for i in batch], [[t.stride(i) for i in batch] for t in tensors])
    if coalesced is None:
        return None
    sizes, strides = coalesced
    return sizes, [s + [t.stride(axis), t.stride(-1)] for s, t in zip(strides, tensors, strict=True)]


# ptxas (triton 3.8, sm_90) reports no register spills for either kernel in bf16 or fp16 at BLOCK_M
# 32 or 64 with 8 warps (4 warps spill at 64). fp32 at BLOCK_M 64 (sequences of 33 to 64) does
# spill: correct but slow, and fp32 is the comparison precision, not the fast path. Not yet tuned
# for speed on a GPU.
_NUM_WARPS = 8


def _tiling(seq_len: int, head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, SEQS_PER_TILE, BLOCK_D): whole sequences per tile, 16 the smallest dot size."""
    block_m = max(32, triton.next_power_of_2(seq_len))
    block_d = max(16, triton.next_power_of_2(head_dim))
    return block_m, block_m // seq_len, block_d


def _check(qkv: torch.Tensor, num_heads: int, axis: int) -> tuple[int, int, int, int]:
    """Internal invariants (the dispatcher validates user input): returns (axis, dim, head_dim, seq_len)."""
    axis = axis % qkv.dim()
    assert axis != qkv.dim() - 1 and qkv.shape[-1] % (3 * num_heads) == 0
    dim = qkv.shape[-1] // 3
    seq_len = qkv.shape[axis]
    assert seq_len <= SUPPORT.max_seq_len and dim // num_heads <= SUPPORT.max_head_dim
    return axis, dim, dim // num_heads, seq_len


@on_tensor_device
def short_attention_fwd(
    qkv: torch.Tensor, num_heads: int, axis: int, compute_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Launch the forward kernel. qkv [..., 3*D] (any strides) -> out [..., D] contiguous, in compute_dtype."""
    compute_dtype = compute_dtype or qkv.dtype
    axis, dim, head_dim, seq_len = _check(qkv, num_heads, axis)
    out = torch.empty((*qkv.shape[:-1], dim), dtype=compute_dtype, device=qkv.device)
    if out.numel() == 0:
        return out
    layout = _layout(axis, [qkv, out])
    if layout is None:
        qkv = qkv.contiguous()
        layout = _layout(axis, [qkv, out])
    sizes, (qkv_strides, out_strides) = layout
    num_seqs = sizes[0] * sizes[1] * sizes[2]
    block_m, seqs_per_tile, block_d = _tiling(seq_len, head_dim)
    grid = (triton.cdiv(num_seqs, seqs_per_tile) * num_heads,)
    scale = head_dim**-0.5
    _short_attention_fwd_kernel[grid](
        qkv,
        out,
        num_seqs,
        seq_len,
        num_heads,
        head_dim,
        dim,
        sizes[1],
        sizes[2],
        *qkv_strides,
        *out_strides[:4],
        scale * 1.4426950408889634,
        SEQS_PER_TILE=seqs_per_tile,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        **dtype_constexprs(compute_dtype, is_interpreted()),
        num_warps=_NUM_WARPS,
    )
    return out


@on_tensor_device
def short_attention_bwd(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    num_heads: int,
    axis: int,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Launch the backward kernel. grad_out [..., D], qkv [..., 3*D] (any strides) -> grad_qkv like qkv."""
    compute_dtype = compute_dtype or qkv.dtype
    axis, dim, head_dim, seq_len = _check(qkv, num_heads, axis)
    grad_qkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    if grad_qkv.numel() == 0:
        return grad_qkv
    layout = _layout(axis, [qkv, grad_out, grad_qkv])
    if layout is None:
        qkv, grad_out = qkv.contiguous(), grad_out.contiguous()
        layout = _layout(axis, [qkv, grad_out, grad_qkv])
    sizes, (qkv_strides, gout_strides, gqkv_strides) = layout
    num_seqs = sizes[0] * sizes[1] * sizes[2]
    block_m, seqs_per_tile, block_d = _tiling(seq_len, head_dim)
    grid = (triton.cdiv(num_seqs, seqs_per_tile) * num_heads,)
    scale = head_dim**-0.5
    _short_attention_bwd_kernel[grid](
        qkv,
        grad_out,
        grad_qkv,
        num_seqs,
        seq_len,
        num_heads,
        head_dim,
        dim,
        sizes[1],
        sizes[2],
        *qkv_strides,
        *gout_strides,
        *gqkv_strides[:4],
        scale,
        scale * 1.4426950408889634,
        SEQS_PER_TILE=seqs_per_tile,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        **dtype_constexprs(compute_dtype, is_interpreted()),
        num_warps=_NUM_WARPS,
    )
    return grad_qkv


# Registered as custom ops so torch.compile treats the launches as opaque calls with known output shapes.
@torch.library.custom_op("taskadapter_fast::short_attention", mutates_args=())
def _short_attention_op(qkv: torch.Tensor, num_heads: int, axis: int, compute_dtype: torch.dtype) -> torch.Tensor:
    return short_attention_fwd(qkv, num_heads, axis, compute_dtype)


@_short_attention_op.register_fake
def _(qkv: torch.Tensor, num_heads: int, axis: int, compute_dtype: torch.dtype) -> torch.Tensor:
    return qkv.new_empty((*qkv.shape[:-1], qkv.shape[-1] // 3), dtype=compute_dtype)


@torch.library.custom_op("taskadapter_fast::short_attention_backward", mutates_args=())
def _short_attention_backward_op(
    grad_out: torch.Tensor, qkv: torch.Tensor, num_heads: int, axis: int, compute_dtype: torch.dtype
) -> torch.Tensor:
    return short_attention_bwd(grad_out, qkv, num_heads, axis, compute_dtype)


@_short_attention_backward_op.register_fake
def _(grad_out: torch.Tensor, qkv: torch.Tensor, num_heads: int, axis: int, compute_dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


class ShortAttentionFunction(torch.autograd.Function):
    """Autograd for the Triton short attention: saves only qkv, the backward recomputes the softmax.

    `ShortAttentionFunction.apply(qkv, num_heads, axis, compute_dtype)`; the same formula is
    registered on the custom op `torch.ops.taskadapter_fast.short_attention`.
    """

    @staticmethod
    def forward(qkv: torch.Tensor, num_heads: int, axis: int, compute_dtype: torch.dtype) -> torch.Tensor:
        return torch.ops.taskadapter_fast.short_attention(qkv, num_heads, axis, compute_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        qkv, num_heads, axis, compute_dtype = inputs
        ctx.save_for_backward(qkv)
        ctx.num_heads, ctx.axis, ctx.compute_dtype = num_heads, axis, compute_dtype

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (qkv,) = ctx.saved_tensors
        grad_qkv = torch.ops.taskadapter_fast.short_attention_backward(
            grad_out, qkv, ctx.num_heads, ctx.axis, ctx.compute_dtype
        )
        return grad_qkv, None, None, None


_short_attention_op.register_autograd(
    ShortAttentionFunction.backward, setup_context=ShortAttentionFunction.setup_context
)
