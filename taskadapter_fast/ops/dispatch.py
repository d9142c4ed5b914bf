"""Implementation registry and selection for the functional ops (docs/method.md §9).

Each kernel module declares what it supports next to the kernel (`SUPPORT`: devices, dtypes, shape
limits; kernels/_common.py, KernelSupport); the reference runs on every device and dtype, without limits.
An `Implementation` here holds the devices on which auto may pick it and the tolerance floor of its parity
check, and answers `not_supported_reasons(...)` for concrete inputs, the Triton ones by reading the
kernel's SUPPORT (when the kernels cannot be imported, that is the only reason). Code that routes by
shape itself asks the same declaration through this module (the model: `short_attention_kernel_takes`).
Selection:

- `impl="auto"` takes the first implementation, in declared order, whose `auto_devices` include
  the input's device type and that has no reasons, silently. Triton comes first and is
  auto-eligible on CUDA only: on CPU, auto always picks the reference, even when TRITON_INTERPRET=1
  makes the kernels runnable there, because the interpreter is a correctness tool (about 250x
  slower than the eager reference for a [2, 8, 197, 192] short_attention forward, 2-core CPU).
  The reference runs on every device, so auto always finds an implementation that can run.
- An explicit `impl="triton"` or `impl="reference"` runs that implementation or raises ValueError
  listing every reason it cannot (on CPU, "triton" runs through the interpreter when
  TRITON_INTERPRET=1 was set before the kernels were imported).
- The environment variable TAF_IMPL (auto | reference | triton) replaces `impl="auto"`, the default
  everywhere, so it switches a whole model or program at once; an explicit `impl` argument in the
  code wins over it. A forced implementation that cannot run raises as an explicit one does.

The kernels are imported with this module when triton is installed (about 0.1 s; nothing is
compiled until a kernel first runs), so that code traced by torch.compile never has to import them.
To run them on CPU through the interpreter, set TRITON_INTERPRET=1 before this package is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import IMPLS
from .reference import fused_adapter_ref, short_attention_ref

try:
    from taskadapter_fast.kernels import fused_adapter as fused_adapter_kernels
    from taskadapter_fast.kernels import short_attention as short_attention_kernels

    TRITON_UNAVAILABLE = None
except ImportError as error:  # no triton on this platform
    fused_adapter_kernels = short_attention_kernels = None
    TRITON_UNAVAILABLE = f"triton cannot be imported ({error})"

ENV_IMPL = "TAF_IMPL"
ANY_DEVICE = "*"


@dataclass(frozen=True)
class Implementation:
    """One implementation of one op: where auto may choose it, and why it cannot run given inputs."""

    name: str
    auto_devices: tuple[str, ...]  # device types on which impl="auto" may choose it (ANY_DEVICE: every one)
    # absolute floor added to the 2x rule when checking against the fp32 reference (ops/testing.py, docs/method.md §9.3)
    atol_floor: dict[torch.dtype, float]
    run: Callable[..., torch.Tensor]
    reasons: Callable[..., list[str]] = field(default=lambda *args, **kwargs: [])

    def not_supported_reasons(self, *args, **kwargs) -> list[str]:
        """Why this implementation cannot run these inputs (the op's own arguments); empty if it can."""
        return self.reasons(*args, **kwargs)

    def auto_eligible(self, device: torch.device) -> bool:
        return ANY_DEVICE in self.auto_devices or device.type in self.auto_devices


def requested_impl(impl: str) -> str:
    """The implementation asked for: `impl`, with "auto" replaced by TAF_IMPL when that is set."""
    if impl == "auto":
        impl = os.environ.get(ENV_IMPL, "auto") or "auto"
        if impl not in IMPLS:
            raise ValueError(f"environment variable {ENV_IMPL} must be one of {IMPLS}, got {impl!r}")
    elif impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def select(op: str, impls: tuple[Implementation, ...], impl: str, device: torch.device, *args, **kwargs):
    """The implementation of `op` to run on these inputs (see the module docstring for the rules)."""
    wanted = requested_impl(impl)
    if wanted == "auto":
        for candidate in impls:
            if candidate.auto_eligible(device) and not candidate.not_supported_reasons(*args, **kwargs):
                return candidate
        raise AssertionError(f"{op}: no implementation can run; the reference should always be able to")
    chosen = next(candidate for candidate in impls if candidate.name == wanted)
    reasons = chosen.not_supported_reasons(*args, **kwargs)
    if reasons:
        forced = f" (forced by {ENV_IMPL})" if impl == "auto" else ""
        raise ValueError(f"{op}: impl={wanted!r}{forced} cannot run on these inputs: " + "; ".join(reasons))
    return chosen


def autocast_on(device: torch.device) -> bool:
    """Whether autocast is on for `device`'s type; False for types autocast does not know (meta, where the
    benchmarks count FLOPs)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # "unknown device type for autocast"
        return False


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the reference's matmuls run in: the autocast dtype inside autocast, else t's own."""
    if t.is_floating_point() and t.dtype != torch.float64 and autocast_on(t.device):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def _triton_device_reasons(kernels, device: torch.device, dtypes: list[torch.dtype]) -> list[str]:
    """Why the kernels module `kernels` cannot run on this device in these dtypes, from its SUPPORT."""
    support = kernels.SUPPORT
    reasons = []
    if device.type not in support.devices:
        devices = ", ".join(support.devices)
        reasons.append(f"device type {device.type!r} is not supported ({devices}; cpu via the interpreter)")
    elif device.type == "cuda":
        # get_device_properties, unlike get_device_capability, is constant-folded by torch.compile
        properties = torch.cuda.get_device_properties(device)
        capability = (properties.major, properties.minor)
        needed = support.bf16_min_capability
        if torch.bfloat16 in dtypes and torch.version.hip is None and capability < needed:
            reasons.append(
                f"bfloat16 needs compute capability {needed[0]}.{needed[1]} or newer, the device has {capability}"
            )
    elif device.type == "cpu":  # the interpreter only; never chosen by auto (see auto_devices)
        if not kernels.is_interpreted():
            reasons.append(
                "tensors are on the CPU and the Triton kernels were not built for the interpreter "
                "(set TRITON_INTERPRET=1 before taskadapter_fast and triton are first imported)"
            )
    unsupported = sorted({str(dtype) for dtype in dtypes if dtype not in support.dtypes})
    if unsupported:
        names = ", ".join(str(dtype).removeprefix("torch.") for dtype in support.dtypes)
        reasons.append(f"dtype {', '.join(unsupported)} is not supported ({names})")
    return reasons


# short_attention ------------------------------------------------------------------------------------


def short_attention_kernel_takes(seq_len: int) -> bool:
    """Whether the Triton short_attention kernel declares sequences of `seq_len` positions within its limit
    (False when the kernels cannot be imported). Longer axes, e.g. the 197 spatial tokens, go to the reference."""
    return short_attention_kernels is not None and seq_len <= short_attention_kernels.SUPPORT.max_seq_len


def validate_short_attention(qkv: torch.Tensor, num_heads: int, axis: int) -> None:
    """User-input checks shared by every implementation; raises ValueError naming the bad value."""
    if not qkv.is_floating_point():
        raise ValueError(f"qkv must be a floating-point tensor, got {qkv.dtype}")
    if qkv.dim() < 2:
        raise ValueError(f"qkv must be [..., 3*D] with at least one leading dim, got shape {tuple(qkv.shape)}")
    if not -qkv.dim() <= axis < qkv.dim():
        raise ValueError(f"axis must be a leading dim of qkv {tuple(qkv.shape)}, got {axis}")
    if axis % qkv.dim() == qkv.dim() - 1:
        raise ValueError(f"axis must be a leading dim, not the packed qkv (last) dim, got {axis}")
    if num_heads < 1 or qkv.shape[-1] % (3 * num_heads) != 0:
        raise ValueError(f"qkv's last dim {qkv.shape[-1]} must be 3*D with D divisible by num_heads={num_heads}")


def _short_attention_triton_reasons(qkv: torch.Tensor, num_heads: int, axis: int) -> list[str]:
    if TRITON_UNAVAILABLE:
        return [TRITON_UNAVAILABLE]
    support = short_attention_kernels.SUPPORT
    reasons = _triton_device_reasons(short_attention_kernels, qkv.device, [qkv.dtype, compute_dtype(qkv)])
    seq_len = qkv.shape[axis]
    if not short_attention_kernel_takes(seq_len):
        reasons.append(
            f"sequence length {seq_len} (dim {axis}) exceeds {support.max_seq_len}: the kernel holds a "
            "whole sequence in one tile; long axes (e.g. the 197 spatial tokens) belong to the reference's SDPA"
        )
    head_dim = qkv.shape[-1] // 3 // num_heads
    if head_dim > support.max_head_dim:
        reasons.append(f"head dim {head_dim} exceeds {support.max_head_dim}")
    return reasons


# The kernels' absolute-tolerance floors per dtype (the 2x parity rule adds them to twice the reference's error).
TRITON_ATOL_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def _reference(run) -> Implementation:
    """The pure-PyTorch reference: every device and dtype, always able to run."""
    return Implementation(name="reference", auto_devices=(ANY_DEVICE,), atol_floor={}, run=run)


def _triton_then_reference(run: Callable, reasons: Callable, reference: Callable) -> tuple[Implementation, ...]:
    """An op's implementations in order of preference: the Triton kernel (auto on CUDA), then the reference."""
    triton = Implementation(
        name="triton", auto_devices=("cuda",), atol_floor=TRITON_ATOL_FLOOR, run=run, reasons=reasons
    )
    return (triton, _reference(reference))


def _short_attention_triton(qkv: torch.Tensor, num_heads: int, axis: int) -> torch.Tensor:
    return torch.ops.taskadapter_fast.short_attention(qkv, num_heads, axis, compute_dtype(qkv))


SHORT_ATTENTION_IMPLS = _triton_then_reference(
    _short_attention_triton, _short_attention_triton_reasons, short_attention_ref
)


# fused_adapter --------------------------------------------------------------------------------------


def validate_fused_adapter(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    base: torch.Tensor | None = None,
    skip: bool = False,
) -> None:
    """User-input checks shared by every implementation; raises ValueError naming the bad value."""
    dim = y.shape[-1] if y.dim() else 0
    if fc1_weight.dim() != 2 or fc1_weight.shape[1] != dim:
        raise ValueError(f"fc1_weight must be [R, D={dim}], got {tuple(fc1_weight.shape)}")
    hidden = fc1_weight.shape[0]
    if fc2_weight.shape != (dim, hidden):
        raise ValueError(f"fc2_weight must be [D={dim}, R={hidden}], got {tuple(fc2_weight.shape)}")
    if fc1_bias is not None and fc1_bias.shape != (hidden,):
        raise ValueError(f"fc1_bias must be [R={hidden}], got {tuple(fc1_bias.shape)}")
    if fc2_bias is not None and fc2_bias.shape != (dim,):
        raise ValueError(f"fc2_bias must be [D={dim}], got {tuple(fc2_bias.shape)}")
    if base is not None and base.shape != y.shape:
        raise ValueError(f"base must have y's shape {tuple(y.shape)} (no broadcasting), got {tuple(base.shape)}")
    named = {"y": y, "fc1_weight": fc1_weight, "fc1_bias": fc1_bias, "fc2_weight": fc2_weight}
    named |= {"fc2_bias": fc2_bias, "base": base}
    given = {name: t for name, t in named.items() if t is not None}
    for name, t in given.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != y.device:
            raise ValueError(f"{name} is on {t.device}, y on {y.device}: all tensors must be on one device")
    # Outside autocast the matmuls need one dtype (inside it, autocast casts them to its own).
    if not autocast_on(y.device):
        mixed = {name: t.dtype for name, t in given.items() if t.dtype != y.dtype and name != "base"}
        if mixed:
            raise ValueError(f"y is {y.dtype} but {mixed}: cast them to one dtype, or run under torch.autocast")


def _fused_adapter_triton_reasons(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    base: torch.Tensor | None = None,
    skip: bool = False,
) -> list[str]:
    if TRITON_UNAVAILABLE:
        return [TRITON_UNAVAILABLE]
    tensors = [t for t in (y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base) if t is not None]
    dtypes = [t.dtype for t in tensors] + [compute_dtype(y)]
    reasons = _triton_device_reasons(fused_adapter_kernels, y.device, dtypes)
    if any(t.device != y.device for t in tensors):
        reasons.append("all tensors must be on y's device")
    max_hidden = fused_adapter_kernels.SUPPORT.max_hidden
    if fc1_weight.shape[0] > max_hidden:
        reasons.append(f"hidden width {fc1_weight.shape[0]} exceeds {max_hidden}, the on-chip tile")
    if base is not None and base.shape != y.shape:
        reasons.append(f"base {tuple(base.shape)} must have y's shape {tuple(y.shape)} (no broadcasting)")
    return reasons


def _fused_adapter_triton(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base=None, skip=False) -> torch.Tensor:
    return torch.ops.taskadapter_fast.fused_adapter(
        y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip, compute_dtype(y)
    )


FUSED_ADAPTER_IMPLS = _triton_then_reference(_fused_adapter_triton, _fused_adapter_triton_reasons, fused_adapter_ref)
