"""Op-level benchmarks: short_attention and fused_adapter, every provider side by side.

    pytest benchmarks/test_bench_ops.py --benchmark-only --benchmark-json=bench.json
    python benchmarks/write_results.py bench.json        # -> benchmarks/RESULTS.md

Providers (one run, so ratios come from one run):
- reference-fp32: the reference in fp32 eager, the official code's precision;
- reference-bf16: the reference in eager under bf16 autocast;
- reference-compile: the same under torch.compile (inductor);
- triton: the Triton kernels under bf16 autocast (CUDA only).
The bf16 providers get the inputs autocast would give them: qkv and the adapters' y in bf16 (they
come out of autocast linears), weights and the residual `base` in fp32.
Modes: fwd (training forward: inputs require grad), bwd (gradients of every input, the forward
untimed), full (both); the full mode also records the peak CUDA memory of one step above its inputs.
Every non-reference case first asserts parity with the eager reference on its own inputs
(the 2x parity rule of docs/method.md §9.3, against a float64 run), then times.

Hardware units (extra_info): GB/s counts the bytes the op must move at least (each input read once,
each output written once), divided by the mean time; TFLOP/s counts the matmul FLOPs of the maths
(attention 4*rows*L*D forward, twice that backward; adapter 4*rows*D*R forward, twice that backward).

On a machine without CUDA the GPU-sized shapes and the triton provider skip with a reason (Triton's
CPU interpreter is a correctness tool, far too slow to time) and the CPU cases run.
Model-level cases (one adapted block, whole training steps) are in test_bench_model.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
from shapes import ADAPTER_SHAPES, ATTENTION_SHAPES, AdapterShape, AttentionShape

from taskadapter_fast import ops
from taskadapter_fast.ops.testing import check_parity

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
PROVIDERS = ["reference-fp32", "reference-bf16", "reference-compile", "triton"]
MODES = ["fwd", "bwd", "full"]
ROUNDS, WARMUP_ROUNDS = (20, 3) if HAS_CUDA else (5, 1)
# parity floors of the providers that are not the eager reference itself
TRITON_FLOOR = {
    "short_attention": next(i for i in ops.SHORT_ATTENTION_IMPLS if i.name == "triton").atol_floor[torch.bfloat16],
    "fused_adapter": next(i for i in ops.FUSED_ADAPTER_IMPLS if i.name == "triton").atol_floor[torch.bfloat16],
}
COMPILE_FLOOR = 1e-3


def _skip_reason(provider: str, gpu_only: bool) -> str | None:
    if provider == "triton" and not HAS_CUDA:
        return "triton needs CUDA to be timed (its CPU interpreter is a correctness tool, far too slow)"
    if gpu_only and not HAS_CUDA:
        return "full-size episode shapes are GPU cases; without CUDA the 3-video CPU shapes run"
    return None


def _sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def _autocast(provider: str):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=provider != "reference-fp32")


def _impl(provider: str) -> str:
    return "triton" if provider == "triton" else "reference"


def _randn(shape, dtype, seed, scale=1.0) -> torch.Tensor:
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    return (torch.randn(shape, generator=generator, device=DEVICE) * scale).to(dtype).requires_grad_()


def _attention_case(shape: AttentionShape, provider: str):
    dtype = torch.float32 if provider == "reference-fp32" else torch.bfloat16
    inputs = [_randn(shape.qkv, dtype, seed=0)]
    seq_len = shape.leading[shape.axis]
    element = inputs[0].element_size()
    units = {
        "bytes": {"fwd": 4 * shape.dim * element, "bwd": 7 * shape.dim * element, "full": 11 * shape.dim * element},
        "flops": {"fwd": 4 * seq_len * shape.dim, "bwd": 8 * seq_len * shape.dim, "full": 12 * seq_len * shape.dim},
    }
    return functools.partial(ops.short_attention, num_heads=shape.heads, axis=shape.axis), inputs, units


def _adapter(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, *, skip: bool, impl: str):
    return ops.fused_adapter(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base=base, skip=skip, impl=impl)


def _adapter_case(shape: AdapterShape, provider: str):
    act_dtype = torch.float32 if provider == "reference-fp32" else torch.bfloat16
    dim, hidden = shape.dim, shape.hidden
    inputs = [
        _randn(shape.y, act_dtype, seed=0),
        _randn((hidden, dim), torch.float32, seed=1, scale=dim**-0.5),
        _randn((hidden,), torch.float32, seed=2),
        _randn((dim, hidden), torch.float32, seed=3, scale=hidden**-0.5),
        _randn((dim,), torch.float32, seed=4),
        _randn(shape.y, torch.float32, seed=5) if shape.base else None,
    ]
    element = inputs[0].element_size()
    units = {
        "bytes": {"fwd": (element + 8) * dim, "bwd": (element + 8) * dim, "full": (2 * element + 16) * dim},
        "flops": {"fwd": 4 * dim * hidden, "bwd": 8 * dim * hidden, "full": 12 * dim * hidden},
    }
    return functools.partial(_adapter, skip=shape.skip), inputs, units


def _run(benchmark, device_name, op_name, shape_name, op_fn, inputs, units, rows, provider, mode) -> None:
    eager = functools.partial(op_fn, impl=_impl(provider))
    fn = eager
    if provider == "reference-compile":
        torch.compiler.reset()  # every case compiles afresh instead of piling up recompiles of one op
        fn = torch.compile(eager)
    if provider != "reference-fp32" and provider != "reference-bf16":
        floor = TRITON_FLOOR[op_name] if provider == "triton" else COMPILE_FLOOR
        reference = functools.partial(op_fn, impl="reference")
        with _autocast(provider):
            failures = check_parity(fn, reference, inputs, floor=floor)
        assert not failures, failures

    wrt = [t for t in inputs if t is not None]
    with _autocast(provider):
        grad_out = torch.randn_like(fn(*inputs))

    def forward():
        with _autocast(provider):
            out = fn(*inputs)
        _sync()
        return out

    def backward(out):
        torch.autograd.grad(out, wrt, grad_out)
        _sync()

    def full():
        backward(forward())

    if mode == "full":
        for _ in range(WARMUP_ROUNDS):
            full()
        if HAS_CUDA:
            baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            full()
            benchmark.extra_info["peak_mib"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    if mode == "bwd":
        benchmark.pedantic(backward, setup=lambda: ((forward(),), {}), rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    else:
        benchmark.pedantic(forward if mode == "fwd" else full, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)

    benchmark.extra_info.update(op=op_name, device=device_name, provider=provider, mode=mode, shape=shape_name)
    if benchmark.stats is not None:  # None under --benchmark-disable, which runs each case once untimed
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["gbps"] = units["bytes"][mode] * rows / mean / 1e9
        benchmark.extra_info["tflops"] = units["flops"][mode] * rows / mean / 1e12


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name", list(ATTENTION_SHAPES))
def test_short_attention(benchmark, device_name, shape_name, provider, mode):
    shape = ATTENTION_SHAPES[shape_name]
    reason = _skip_reason(provider, shape.gpu_only)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"short_attention {shape.name} {mode}"
    op_fn, inputs, units = _attention_case(shape, provider)
    _run(benchmark, device_name, "short_attention", shape_name, op_fn, inputs, units, shape.rows, provider, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name", list(ADAPTER_SHAPES))
def test_fused_adapter(benchmark, device_name, shape_name, provider, mode):
    shape = ADAPTER_SHAPES[shape_name]
    reason = _skip_reason(provider, shape.gpu_only)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"fused_adapter {shape.name} {mode}"
    op_fn, inputs, units = _adapter_case(shape, provider)
    _run(benchmark, device_name, "fused_adapter", shape_name, op_fn, inputs, units, shape.rows, provider, mode)
