"""Helpers shared by the kernels: dtype constexprs, the fp32-accumulating dot, rounding casts.

Two workarounds keep Triton's CPU interpreter (TRITON_INTERPRET=1, used by CI; triton 3.8 and
earlier) numerically faithful to the compiled kernels, so the interpreter tests check the same
roundings a GPU does:
- the interpreter multiplies bf16 dot operands as their raw uint16 bits, so there bf16 operands,
  already rounded to bf16, are widened to fp32 (exactly) before each dot (DOT_DTYPE);
- the interpreter truncates fp32 -> bf16 casts where a GPU rounds to nearest even, so there the
  round-to-nearest-even is done by hand on the bits before the cast (RTNE_BF16).
Compiled kernels get DOT_DTYPE = the compute dtype and RTNE_BF16 = False: both are no-ops.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@dataclass(frozen=True, kw_only=True)
class KernelSupport:
    """What a kernel handles, declared in its module as `SUPPORT`; each kernel adds its shape limits.

    taskadapter_fast/ops/dispatch.py reads it: every item an input does not meet is a reason the kernel
    cannot run, and impl="auto" then takes the reference.
    """

    devices: tuple[str, ...] = ("cuda", "cpu")  # device types; cpu only through Triton's interpreter
    dtypes: tuple[torch.dtype, ...] = tuple(TL_DTYPES)  # of the tensors and of the compute (autocast) dtype
    bf16_min_capability: tuple[int, int] = (8, 0)  # NVIDIA compute capability of bf16 dots (ROCm: any)


@triton.jit
def dot(a, b, acc, DOT_DTYPE: tl.constexpr):
    """acc + a @ b in fp32, for operands already rounded to the compute dtype; fp32 stays IEEE (no TF32)."""
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision="ieee")


@triton.jit
def cast(x, DTYPE: tl.constexpr, RTNE_BF16: tl.constexpr):
    """x.to(DTYPE), rounding to nearest even also under the interpreter."""
    if RTNE_BF16 and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(DTYPE)


def is_interpreted(kernel) -> bool:
    """True when `kernel` was built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return isinstance(kernel, InterpretedFunction)


def dtype_constexprs(compute_dtype: torch.dtype, interpreted: bool) -> dict:
    """COMPUTE_DTYPE, DOT_DTYPE and RTNE_BF16 for a launch (see the module docstring)."""
    widen = interpreted and compute_dtype == torch.bfloat16
    return {
        "COMPUTE_DTYPE": TL_DTYPES[compute_dtype],
        "DOT_DTYPE": tl.float32 if widen else TL_DTYPES[compute_dtype],
        "RTNE_BF16": interpreted,
    }


def on_tensor_device(launch):
    """Decorate a launcher so it runs with its first argument's GPU as the current CUDA device.

    Triton launches on the current device, not on the device of the tensors it is given: without
    this, a model on cuda:1 in a process whose current device is cuda:0 would launch on the wrong GPU.
    """

    @functools.wraps(launch)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        if first.is_cuda:
            with torch.cuda.device(first.device):
                return launch(first, *args, **kwargs)
        return launch(first, *args, **kwargs)

    return wrapper
