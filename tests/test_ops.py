"""The Triton ops against the reference (forward and every gradient), the dispatcher's rules, and
torch.compile tracing of code that uses the ops.

Without a GPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so every dim is tiny except the awkward sizes the kernels must handle (sequence lengths 1..64, 197
and 77 tokens, real adapter widths with few rows); the full-size cases are marked `gpu`.
Tolerance: the 2x parity rule (taskadapter_fast/ops/testing.py, docs/method.md §9.3) with each implementation's
declared floor.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from taskadapter_fast import ops
from taskadapter_fast.ops import dispatch
from taskadapter_fast.ops.testing import check_parity

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
requires_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA GPU (the interpreter cases check the maths on CPU)"
)
pytestmark = [pytest.mark.triton, needs_triton]

SA_TRITON = next(i for i in ops.SHORT_ATTENTION_IMPLS if i.name == "triton")
AD_TRITON = next(i for i in ops.FUSED_ADAPTER_IMPLS if i.name == "triton")
LOW = (torch.float32, torch.bfloat16, torch.float16)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)


def assert_short_attention_parity(qkv: torch.Tensor, num_heads: int, axis: int) -> None:
    failures = check_parity(
        lambda t: ops.short_attention(t, num_heads, axis, impl="triton"),
        lambda t: ops.short_attention(t, num_heads, axis, impl="reference"),
        [qkv.requires_grad_()],
        floor=SA_TRITON.atol_floor[dispatch.compute_dtype(qkv)],
    )
    assert not failures, failures


def adapter_inputs(shape, hidden, dtype, bias=True, base=True, seed=0):
    dim = shape[-1]
    return [
        randn(*shape, dtype=dtype, seed=seed),
        randn(hidden, dim, dtype=dtype, seed=seed + 1, scale=dim**-0.5),
        randn(hidden, dtype=dtype, seed=seed + 2) if bias else None,
        randn(dim, hidden, dtype=dtype, seed=seed + 3, scale=hidden**-0.5),
        randn(dim, dtype=dtype, seed=seed + 4) if bias else None,
        randn(*shape, dtype=dtype, seed=seed + 5) if base else None,
    ]


def assert_adapter_parity(inputs, skip: bool) -> None:
    for t in inputs:
        if t is not None:
            t.requires_grad_()
    failures = check_parity(
        lambda *args: ops.fused_adapter(*args, skip=skip, impl="triton"),
        lambda *args: ops.fused_adapter(*args, skip=skip, impl="reference"),
        inputs,
        floor=AD_TRITON.atol_floor[dispatch.compute_dtype(inputs[0])],
    )
    assert not failures, failures


def test_parity_check_catches_a_gradient_one_bf16_step_off():
    # The exact run must see the same (rounded) grad_out as the runs it judges: base's gradient is grad_out
    # itself, exactly, so a backward that shifts it by about one bf16 step must fail the 2x rule.
    class ShiftedGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad + 0.004

    def reference(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base):
        return ops.fused_adapter_ref(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base, skip=True)

    def shifted(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base):
        return reference(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, ShiftedGrad.apply(base))

    inputs = [randn(13, 40, seed=0), randn(10, 40, seed=1), randn(10, seed=2), randn(40, 10, seed=3)]
    inputs = [t.bfloat16().requires_grad_() for t in [*inputs, randn(40, seed=4), randn(13, 40, seed=5)]]
    assert check_parity(reference, reference, inputs, floor=1e-3) == []
    failures = check_parity(shifted, reference, inputs, floor=1e-3)
    assert len(failures) == 1 and failures[0].startswith("grad 5:"), failures


# short_attention parity ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seq_len", [1, 3, 5, 7, 8, 25, 64])
def test_short_attention_seq_lens(seq_len, dtype):
    # head dim 12: not a power of two, so the head tile is masked too
    assert_short_attention_parity(randn(2, seq_len, 5, 3 * 24, dtype=dtype), num_heads=2, axis=1)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(
    "shape,axis",
    [((1, 8, 197, 48), 1), ((7, 2, 50, 48), 0), ((3, 3, 77, 48), 1)],
    ids=["T-MSA-197-tokens", "Task-MSA-7-videos-50-tokens", "O-MSA-77-tokens"],
)
def test_short_attention_token_counts(shape, axis, dtype):
    assert_short_attention_parity(randn(*shape, dtype=dtype), num_heads=2, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2, -2])
def test_short_attention_axes(axis):
    assert_short_attention_parity(randn(5, 4, 6, 3 * 24), num_heads=3, axis=axis)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "make,axis",
    [
        (lambda dtype: randn(8, 3, 5, 72, dtype=dtype).transpose(0, 1), 1),  # frames-major storage
        (lambda dtype: randn(3, 8, 5, 96, dtype=dtype)[..., :72], 0),  # a slice of a wider projection
        (lambda dtype: randn(3, 8, 10, 72, dtype=dtype)[:, :, ::2], 1),  # strided tokens
        # four batch dims that coalesce to none: the launcher's one-copy fallback
        (lambda dtype: randn(2, 3, 2, 3, 4, 72, dtype=dtype).permute(4, 2, 0, 3, 1, 5), 0),
    ],
    ids=["transposed", "channel-slice", "strided-batch", "uncoalescible"],
)
def test_short_attention_non_contiguous(make, axis, dtype):
    qkv = make(dtype)
    assert not qkv.is_contiguous()
    assert_short_attention_parity(qkv, num_heads=3, axis=axis)


@pytest.mark.parametrize(
    "make_grad",
    [lambda: randn(7, 5, 2, 16, seed=1).permute(2, 1, 0, 3), lambda: torch.ones((), device=DEVICE).expand(2, 5, 7, 16)],
    ids=["permuted", "expanded"],
)
def test_short_attention_non_contiguous_grad_out(make_grad):
    qkv = randn(2, 5, 7, 48).requires_grad_()
    grad_out = make_grad()
    grads = []
    for impl in ("triton", "reference"):
        (grad,) = torch.autograd.grad(ops.short_attention(qkv, 2, 1, impl=impl), qkv, grad_out)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_short_attention_autocast():
    qkv = randn(2, 8, 5, 72)  # fp32, as a non-autocast in-projection would leave it
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        assert ops.short_attention(qkv, 3, 1, impl="triton").dtype == torch.bfloat16
        assert_short_attention_parity(qkv, num_heads=3, axis=1)


def test_short_attention_function_apply():
    from taskadapter_fast.kernels.short_attention import ShortAttentionFunction

    qkv = randn(3, 4, 6, 48).requires_grad_()
    out = ShortAttentionFunction.apply(qkv, 2, 0, torch.float32)
    (grad,) = torch.autograd.grad(out.square().sum(), qkv)
    ref_qkv = qkv.detach().requires_grad_()
    ref = ops.short_attention_ref(ref_qkv, 2, 0)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), ref_qkv)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("shape", [(0, 8, 5, 48), (3, 0, 5, 48)], ids=["empty batch", "empty sequence"])
def test_short_attention_empty_inputs(shape, impl):
    qkv = randn(*shape).requires_grad_()
    out = ops.short_attention(qkv, 2, 1, impl=impl)
    assert out.shape == (*shape[:-1], 16)
    (grad,) = torch.autograd.grad(out.sum(), qkv)
    assert grad.shape == qkv.shape


# fused_adapter parity ------------------------------------------------------------------------------

ADAPTER_VARIANTS = {
    "A_t/A_task": dict(skip=False, bias=True, base=True),
    "A_s": dict(skip=True, bias=True, base=True),
    "bare": dict(skip=False, bias=False, base=False),
    "skip-only": dict(skip=True, bias=True, base=False),
}


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("variant", list(ADAPTER_VARIANTS))
@pytest.mark.parametrize("shape", [(2, 3, 197, 32), (3, 3, 77, 40)], ids=["visual-197", "text-77"])
def test_fused_adapter_variants(shape, variant, dtype):
    options = ADAPTER_VARIANTS[variant]
    inputs = adapter_inputs(shape, shape[-1] // 4, dtype, bias=options["bias"], base=options["base"])
    assert_adapter_parity(inputs, skip=options["skip"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim,hidden", [(768, 192), (512, 128)], ids=["ViT-B-width", "text-width"])
def test_fused_adapter_real_widths(dim, hidden, dtype):
    # real widths (hidden 192 pads to a 256 tile), few rows: 37 rows cover a full and a partial row tile
    assert_adapter_parity(adapter_inputs((37, dim), hidden, dtype), skip=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_adapter_non_contiguous(dtype):
    y = randn(4, 2, 7, 48, dtype=dtype).transpose(0, 1)  # [2, 4, 7, 48], batch dims swapped
    base = randn(2, 4, 7, 96, dtype=dtype, seed=5)[..., ::2]
    fc1_weight = randn(48, 12, dtype=dtype, seed=1, scale=48**-0.5).t()
    fc2_weight = randn(12, 48, dtype=dtype, seed=3, scale=12**-0.5).t()
    fc1_bias, fc2_bias = randn(24, dtype=dtype, seed=2)[::2], randn(96, dtype=dtype, seed=4)[1::2]
    inputs = [y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base]
    assert not any(t.is_contiguous() for t in (y, base, fc1_weight, fc2_weight, fc1_bias, fc2_bias))
    assert_adapter_parity(inputs, skip=True)


def test_fused_adapter_autocast():
    # fp32 activations and weights inside autocast, as the MLP adapter sees LN2's output
    inputs = adapter_inputs((2, 5, 7, 64), 16, torch.float32)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = ops.fused_adapter(*inputs, skip=True, impl="triton")
        assert out.dtype == torch.float32  # fc2's bf16 output promoted by the fp32 skip and base
        assert_adapter_parity(inputs, skip=True)


def test_fused_adapter_function_apply():
    from taskadapter_fast.kernels.fused_adapter import FusedAdapterFunction

    inputs = [t.requires_grad_() for t in adapter_inputs((6, 32), 8, torch.float32, base=False)[:5]]
    out = FusedAdapterFunction.apply(*inputs, None, False, torch.float32)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    ref_inputs = [t.detach().requires_grad_() for t in inputs]
    ref = ops.fused_adapter_ref(*ref_inputs)
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_inputs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


# custom-op registration ------------------------------------------------------------------------------


def test_opcheck_custom_ops():
    qkv = randn(3, 4, 5, 48).requires_grad_()
    torch.library.opcheck(torch.ops.taskadapter_fast.short_attention.default, (qkv, 2, 1, torch.float32))
    inputs = [t.requires_grad_() for t in adapter_inputs((3, 5, 32), 8, torch.float32)]
    torch.library.opcheck(torch.ops.taskadapter_fast.fused_adapter.default, (*inputs, True, torch.float32))


# dispatcher ----------------------------------------------------------------------------------------


def _chosen(impl: str, qkv: torch.Tensor, device: torch.device | None = None) -> str:
    device = device or qkv.device
    return dispatch.select("short_attention", ops.SHORT_ATTENTION_IMPLS, impl, device, qkv, 2, 1).name


@pytest.mark.parametrize("op", ["short_attention", "fused_adapter"])
def test_forced_triton_lists_every_reason(op):
    if op == "short_attention":
        qkv = torch.zeros(2, 65, 3, 3 * 2 * 160, dtype=torch.float64, device=DEVICE)  # too long, too wide
        call = functools.partial(ops.short_attention, qkv, 2, 1, impl="triton")
        expected = ["sequence length 65", "head dim 160 exceeds 128", "float64"]
    else:
        y = torch.zeros(4, 600, dtype=torch.float64, device=DEVICE)
        weights = [torch.zeros(300, 600, dtype=torch.float64, device=DEVICE), None]
        weights += [torch.zeros(600, 300, dtype=torch.float64, device=DEVICE), None]
        call = functools.partial(ops.fused_adapter, y, *weights, impl="triton")
        expected = ["hidden width 300 exceeds 256", "float64"]
    with pytest.raises(ValueError, match="impl='triton' cannot run") as error:
        call()
    for reason in expected:
        assert reason in str(error.value)


def test_auto_takes_first_runnable_and_falls_back_past_64():
    # on a GPU auto prefers Triton and falls back to the reference past 64 positions; without one the
    # rule is checked by declaring the device CUDA while the interpreter makes the kernels runnable
    cuda = torch.device("cuda")
    assert _chosen("auto", torch.zeros(2, 64, 3, 12, device=DEVICE), cuda) == "triton"
    assert _chosen("auto", torch.zeros(2, 65, 3, 12, device=DEVICE), cuda) == "reference"
    out = ops.short_attention(randn(2, 65, 3, 12), 2, 1)  # the spatial-axis case: runs, silently
    assert out.shape == (2, 65, 3, 4)


def test_dispatch_follows_the_limits_the_kernels_declare():
    # The limits are declared once, in each kernel module's SUPPORT: the dispatcher and the model's routing
    # (ops.short_attention_kernel_takes) must give the kernel exactly the max and the reference one past it.
    from taskadapter_fast.kernels import fused_adapter, short_attention

    cuda = torch.device("cuda")
    longest, widest_head = short_attention.SUPPORT.max_seq_len, short_attention.SUPPORT.max_head_dim
    assert _chosen("auto", torch.zeros(2, longest, 3, 12, device=DEVICE), cuda) == "triton"
    assert _chosen("auto", torch.zeros(2, longest + 1, 3, 12, device=DEVICE), cuda) == "reference"
    assert ops.short_attention_kernel_takes(longest) and not ops.short_attention_kernel_takes(longest + 1)
    assert _chosen("auto", torch.zeros(2, 4, 1, 3 * 2 * widest_head, device=DEVICE), cuda) == "triton"
    assert _chosen("auto", torch.zeros(2, 4, 1, 3 * 2 * (widest_head + 1), device=DEVICE), cuda) == "reference"

    def adapter_chosen(hidden: int) -> str:
        y, fc1, fc2 = (torch.zeros(shape, device=DEVICE) for shape in ((4, 16), (hidden, 16), (16, hidden)))
        return dispatch.select("fused_adapter", ops.FUSED_ADAPTER_IMPLS, "auto", cuda, y, fc1, None, fc2, None).name

    assert adapter_chosen(fused_adapter.SUPPORT.max_hidden) == "triton"
    assert adapter_chosen(fused_adapter.SUPPORT.max_hidden + 1) == "reference"


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU rule")
def test_auto_on_cpu_never_picks_the_interpreter():
    assert _chosen("auto", torch.zeros(2, 8, 3, 12)) == "reference"


def test_env_override(monkeypatch):
    qkv = torch.zeros(2, 8, 3, 12, device=DEVICE)
    monkeypatch.setenv(ops.ENV_IMPL, "triton")
    assert _chosen("auto", qkv) == "triton"
    assert _chosen("reference", qkv) == "reference"  # an explicit argument wins
    with pytest.raises(ValueError, match=r"forced by TAF_IMPL.*sequence length 65"):
        _chosen("auto", torch.zeros(2, 65, 3, 12, device=DEVICE))
    monkeypatch.setenv(ops.ENV_IMPL, "reference")
    assert _chosen("auto", qkv) == "reference"
    monkeypatch.setenv(ops.ENV_IMPL, "fastest")
    with pytest.raises(ValueError, match="TAF_IMPL must be one of"):
        _chosen("auto", qkv)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_invalid_arguments_raise_value_error(impl):
    qkv = torch.zeros(2, 8, 3, 12, device=DEVICE)
    with pytest.raises(ValueError, match="packed qkv"):
        ops.short_attention(qkv, 2, 3, impl=impl)
    with pytest.raises(ValueError, match="divisible by num_heads=5"):
        ops.short_attention(qkv, 5, 1, impl=impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.short_attention(qkv, 2, 1, impl="cuda")
    with pytest.raises(ValueError, match="qkv must be a floating-point tensor, got torch.int64"):
        ops.short_attention(torch.zeros(2, 8, 3, 12, dtype=torch.long, device=DEVICE), 2, 1, impl=impl)
    y = torch.zeros(4, 8, device=DEVICE)
    fc1, fc2 = torch.zeros(2, 8, device=DEVICE), torch.zeros(8, 2, device=DEVICE)
    with pytest.raises(ValueError, match="fc2_weight must be"):
        ops.fused_adapter(y, torch.zeros(2, 8), None, torch.zeros(2, 8), None, impl=impl)
    with pytest.raises(ValueError, match=r"base must have y's shape \(4, 8\) \(no broadcasting\), got \(2, 4, 8\)"):
        ops.fused_adapter(y, fc1, None, fc2, None, base=torch.zeros(2, 4, 8, device=DEVICE), impl=impl)
    with pytest.raises(ValueError, match=r"y is torch.float32 but \{'fc1_weight': torch.bfloat16\}"):
        ops.fused_adapter(y, fc1.bfloat16(), None, fc2, None, impl=impl)
    with pytest.raises(ValueError, match="fc2_bias must be a floating-point tensor"):
        ops.fused_adapter(y, fc1, None, fc2, torch.zeros(8, dtype=torch.long, device=DEVICE), impl=impl)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU rule")
def test_triton_on_cpu_without_interpreter_says_why():
    code = (
        "import torch; from taskadapter_fast import ops\n"
        "try:\n    ops.short_attention(torch.zeros(2, 8, 3, 12), 2, 1, impl='triton')\n"
        "except ValueError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "TRITON_INTERPRET=1" in result.stdout, result.stdout + result.stderr


# compiling for a GPU without one ---------------------------------------------------------------

_COMPILE_FOR_SM90 = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from taskadapter_fast.kernels import _common, fused_adapter, short_attention

def compile_kernel(fn, pointers, floats, constexprs, num_warps):
    signature = {
        name: "constexpr" if name in constexprs else pointers.get(name, "fp32" if name in floats else "i32")
        for name in fn.arg_names
    }
    source = ASTSource(fn, signature, constexprs=constexprs)
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

dtypes = _common.dtype_constexprs(torch.bfloat16, interpreted=False)
block_m, seqs, block_d = short_attention._tiling(8, 64)
tiling = dict(SEQS_PER_TILE=seqs, BLOCK_M=block_m, BLOCK_D=block_d, **dtypes)
compile_kernel(short_attention._short_attention_fwd_kernel, {"qkv_ptr": "*bf16", "out_ptr": "*bf16"},
               {"scale_log2e"}, tiling, short_attention._NUM_WARPS)
compile_kernel(short_attention._short_attention_bwd_kernel,
               {"qkv_ptr": "*bf16", "grad_out_ptr": "*bf16", "grad_qkv_ptr": "*bf16"},
               {"scale", "scale_log2e"}, tiling, short_attention._NUM_WARPS)
flags = dict(HAS_B1=True, SKIP=True, DIM=768, **fused_adapter._blocks(192), **dtypes)
names = ("y_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "base_ptr", "out_ptr")
compile_kernel(fused_adapter._fused_adapter_fwd_kernel, {name: "*bf16" for name in names}, set(),
               dict(HAS_B2=True, HAS_BASE=True, **flags), fused_adapter._NUM_WARPS)
names = ("grad_out_ptr", "y_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "grad_y_ptr", "act_ptr", "grad_h_ptr")
compile_kernel(fused_adapter._fused_adapter_bwd_kernel, {name: "*bf16" for name in names}, set(), flags,
               fused_adapter._NUM_WARPS)
print("compiled")
"""


@pytest.mark.skipif(HAS_CUDA, reason="with a GPU the parity tests compile the kernels for it")
def test_kernels_compile_for_hopper_without_a_gpu():
    # the interpreter runs the kernels as Python, so it cannot catch what only the compiler rejects
    # (a non-constexpr global, say): compile the bf16 kernels for sm_90 with triton's bundled ptxas
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import torch\n" + _COMPILE_FOR_SM90
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.stdout.strip().endswith("compiled"), result.stdout + result.stderr


# torch.compile -------------------------------------------------------------------------------------


def _tiny_block(x, in_proj_weight, fc1_weight, fc1_bias, fc2_weight, fc2_bias, impl):
    qkv = F.linear(x, in_proj_weight)  # [V, T, N, 3D]
    attended = ops.short_attention(qkv, 2, 1, impl=impl)  # over T
    return ops.fused_adapter(attended, fc1_weight, fc1_bias, fc2_weight, fc2_bias, base=x, impl=impl)


@pytest.mark.parametrize("impl", ["auto", "reference", "triton"])
def test_torch_compile_traces_the_ops(impl):
    # aot_eager: dynamo + AOTAutograd exercise the dispatcher, fake kernels and autograd registration
    # without a C++ toolchain; fullgraph=True proves the ops trace without graph breaks
    inputs = [randn(2, 4, 3, 16), randn(48, 16, seed=1, scale=0.25)] + adapter_inputs((3, 16), 4, torch.float32)[1:5]
    inputs = [t.requires_grad_() for t in inputs]
    eager = functools.partial(_tiny_block, impl=impl)
    compiled = torch.compile(eager, fullgraph=True, backend="aot_eager")
    out, ref = compiled(*inputs), eager(*inputs)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), inputs)
    ref_grads = torch.autograd.grad(ref.sum(), inputs)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad)


# full size on a GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "shape,axis,num_heads",
    [((25, 8, 197, 2304), 1, 12), ((25, 8, 197, 2304), 0, 12), ((5, 3, 77, 1536), 1, 8)],
    ids=["T-MSA-5w5s", "Task-MSA-5w5s", "O-MSA"],
)
def test_gpu_short_attention_full_size(shape, axis, num_heads, dtype):
    assert_short_attention_parity(randn(*shape, dtype=dtype), num_heads=num_heads, axis=axis)


@pytest.mark.gpu
@requires_cuda
def test_gpu_short_attention_past_the_grid_limit():
    # 320,000 sequences of 8 in 80,000 programs: SDPA's kernels refuse batch x heads >= 65,536
    assert_short_attention_parity(randn(2, 8, 160_000, 3 * 64, dtype=torch.bfloat16), num_heads=1, axis=1)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("variant", ["A_t/A_task", "A_s"])
@pytest.mark.parametrize("shape,hidden", [((25, 8, 197, 768), 192), ((5, 3, 77, 512), 128)], ids=["visual", "text"])
def test_gpu_fused_adapter_full_size(shape, hidden, variant, dtype):
    options = ADAPTER_VARIANTS[variant]
    assert_adapter_parity(adapter_inputs(shape, hidden, dtype), skip=options["skip"])


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA GPUs: a kernel must run on its tensors' GPU, not GPU 0"
)
def test_gpu_kernels_launch_on_their_tensors_gpu():
    # Triton launches on the current device; the launchers make the tensors' GPU current (a model on cuda:1)
    with torch.cuda.device(0):
        assert_short_attention_parity(randn(3, 8, 5, 3 * 64, dtype=torch.bfloat16).to("cuda:1"), num_heads=2, axis=1)
        inputs = [t.to("cuda:1") if t is not None else None for t in adapter_inputs((3, 5, 64), 16, torch.bfloat16)]
        assert_adapter_parity(inputs, skip=True)
