"""The parity rule every fast path is held to (docs/method.md §9.3), shared by tests/ and benchmarks/.

A fast implementation's error against the exact result may be at most twice the error of the
reference itself run in the same precision, plus a small floor (flash-attention's rule). "Exact"
is the reference run in float64 on the same inputs (the low-precision inputs widened), so the rule
also means something for float32 kernels, where the float32 reference is the same-precision run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Inputs = Sequence[torch.Tensor | None]


def outputs_and_grads(
    fn: Callable[..., torch.Tensor], inputs: Inputs, grad_out: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """fn(*inputs) and, when grad_out is given, the gradients of every floating input that requires grad."""
    inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    out = fn(*inputs)
    if grad_out is None:
        return out.detach(), []
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype))
    return out.detach(), list(grads)


def widened(inputs: Inputs) -> list[torch.Tensor | None]:
    """float64 copies of the inputs, keeping requires_grad (and the values exactly)."""
    return [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]


def parity_error(
    name: str, fast: torch.Tensor, same_precision: torch.Tensor, exact: torch.Tensor, floor: float
) -> str | None:
    """None if |fast - exact| <= 2 |same_precision - exact| + floor * max(1, |exact|) (max norms), else why not."""
    fast_err = (fast.double() - exact).abs().max().item() if exact.numel() else 0.0
    ref_err = (same_precision.double() - exact).abs().max().item() if exact.numel() else 0.0
    scale = max(1.0, exact.abs().max().item()) if exact.numel() else 1.0
    bound = 2 * ref_err + floor * scale
    if fast_err <= bound:
        return None
    why = f"2 x reference error {ref_err:.3g} + {floor:g} x {scale:.3g}"
    return f"{name}: error {fast_err:.3g} > bound {bound:.3g} ({why})"


def check_parity(
    fast_fn: Callable[..., torch.Tensor],
    reference_fn: Callable[..., torch.Tensor],
    inputs: Inputs,
    floor: float,
    backward: bool = True,
    seed: int = 0,
) -> list[str]:
    """Compare fast_fn against reference_fn on `inputs`, forward and (with backward) every input gradient.

    The same-precision reference runs reference_fn on the inputs as given (under the caller's autocast,
    if any); the exact one on float64 copies, outside autocast. Returns the list of failures.
    """
    grad_out = None
    if backward:
        with torch.no_grad():
            reference_out = reference_fn(*inputs)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Drawn in the output's own precision, so the exact run widens the very values the others get: its
        # rounding must not count as reference error (it would loosen every low-precision gradient bound).
        grad_out = torch.randn(reference_out.shape, generator=generator).to(reference_out.device, reference_out.dtype)
    fast_out, fast_grads = outputs_and_grads(fast_fn, inputs, grad_out)
    ref_out, ref_grads = outputs_and_grads(reference_fn, inputs, grad_out)
    with torch.autocast(fast_out.device.type, enabled=False):
        exact_out, exact_grads = outputs_and_grads(reference_fn, widened(inputs), grad_out)
    failures = []
    if fast_out.shape != exact_out.shape or fast_out.dtype != ref_out.dtype:
        failures.append(
            f"output: got {tuple(fast_out.shape)} {fast_out.dtype}, reference {tuple(ref_out.shape)} {ref_out.dtype}"
        )
        return failures
    failures.append(parity_error("output", fast_out, ref_out, exact_out, floor))
    for i, (fast, ref, exact) in enumerate(zip(fast_grads, ref_grads, exact_grads, strict=True)):
        if fast.shape != exact.shape or fast.dtype != ref.dtype:
            failures.append(f"grad {i}: got {tuple(fast.shape)} {fast.dtype}, reference {tuple(ref.shape)} {ref.dtype}")
        else:
            failures.append(parity_error(f"grad {i}", fast, ref, exact, floor))
    return [f for f in failures if f is not None]
