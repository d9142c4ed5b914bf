"""Model-level benchmarks: one adapted ViT-B/16 block, whole 5-way training steps, and the CPU visual step.

    pytest benchmarks/test_bench_model.py --benchmark-only --benchmark-json=bench.json
    python benchmarks/write_results.py bench.json        # -> benchmarks/RESULTS.md

Providers, side by side in one run (ratios are only ever taken within one run):
- reference-fp32: impl="reference", fp32 eager, the official code's precision. "reference" is the literal
  formulation: CLIP's own block forward for the frozen blocks and every token through every adapted block;
- reference-bf16: the same under bf16 autocast;
- reference-compile: the same under bf16 autocast and torch.compile (inductor);
- auto-fp32, auto-bf16 (CPU only): impl="auto", what a user gets by default. On CPU that is the restructured
  formulation of model/visual.py (explicit frozen blocks, contiguous out-projection inputs, class token only
  past the last spatial MSA) with the reference ops; on CUDA "auto" means the Triton kernels, which the
  triton provider already times, so these two skip there;
- triton (CUDA only): impl="triton" under bf16 autocast (restructured formulation, Triton short-axis attention
  and adapters; the spatial attention goes to the reference's SDPA).

Cases:
- block-V{3,5,10}: one adapted ViT-B/16 block (a middle one: every token out), forward + backward (gradients of
  x and of the block's 16 adapter tensors), x [V, 8, 197, 768]. V = 3 on CPU, 5 and 10 GPU only.
- episode-5w1s, episode-5w5s (GPU only): one whole training step: support (5 or 25 videos) and query
  (5 videos) sets, class texts (3 sub-action prompts per class), loss, backward, SGD step (lr 1e-3).
  Records episodes/s, TFLOP/s and MFU, and the peak CUDA memory of one step.
- cpu-visual-step: the issue's CPU target: visual tower only, 3 videos x 8 frames at 224x224, L = 6, forward
  and backward into the trainable visual parameters (temporal embedding and adapters; the gradient of a fixed
  random projection of the features). Runs on CPU and GPU.
- cpu-target (CPU only): the same step for reference-fp32, auto-fp32 and auto-bf16 back to back in every round,
  recording the per-round ratios against reference-fp32 and their median: the numbers the issue's CPU target
  ("bf16 autocast >= 3x the fp32 reference, fp32 no slower") is judged on, robust to a drifting machine load.
The backbone is ViT-B/16 with random weights (no download) and OpenAI CLIP's QuickGELU; the trainable
parameters get small random values (zero-initialised fc2s would make most gradients trivially zero).

Parity, asserted before anything is timed, on the case's own inputs (the references themselves are not checked):
- block: the 2x rule (docs/method.md §9.3) against a float64 run of the reference block (ops.testing.check_parity), with
  the floors of the op benchmarks (triton: the kernels' declared bf16 floor; compile: 1e-3; auto-fp32: 1e-5).
- whole model (episode, cpu-visual-step): float64 ViT-B/16 steps would take minutes on a CPU, so the fp32
  reference stands in for the exact result. Per output and per gradient tensor, err = max|a - b| / max|b|
  against reference-fp32; fp32 providers: err <= 1e-4 (measured: 6e-7 for auto-fp32, whose loss is
  bit-identical); bf16 providers: err <= 2 x (reference-bf16's largest err over all the tensors) + 1e-3, the 2x
  rule with the fp32 reference as "exact", applied to the worst tensor: per tensor, the errors of two bf16
  roundings of the same whole model differ by more than 2x (tiny model: 0.075 against 0.029 on one gradient).
  reference-bf16's own largest err is 1.7e-2 for cpu-visual-step.

FLOP count (TFLOP/s and MFU): the matmul and attention FLOPs of the reference formulation's forward + backward,
counted by torch.utils.flop_counter.FlopCounterMode: for the block and cpu-visual-step on meta-device copies
of the modules (CPU's flash-attention op has no FLOP formula, so a count on the CPU would miss the spatial
attention), for the episodes on the untimed reference-fp32 run on the GPU. The same count is used for every
provider, so work a provider skips shows up as throughput. Counts (ViT-B/16, T = 8, L = 6): the visual tower is
0.3928 TFLOP per video forward (the restructured formulation executes 0.3632: the last block's non-class tokens
stop after the spatial MSA) and 0.425 backward; 5-way 1-shot + 1 query = 10 videos = 3.93 TFLOP forward for the
visual tower, the issue's "about 3.9 TFLOP", plus 0.095 for the text tower (15 prompts x 77 tokens);
cpu-visual-step: 1.179 TFLOP forward + 1.275 backward = 2.454 per step.
MFU is against the device's dense bf16 tensor-core peak (DENSE_BF16_PEAK_TFLOPS), for the fp32 provider too;
unknown GPUs record no MFU. No MFU on CPU.

On a CPU the block-V3, cpu-visual-step and cpu-target cases run: about 3, 12-18 and 4-6 minutes on 2 cores (the
torch.compile providers' compiles included; 2-core AMD EPYC, shared). On a shared machine set OMP_NUM_THREADS=1:
a second thread contending for a busy core makes every op wait at its barrier (small ops then take ~7 ms each).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import pytest
import torch
from shapes import FRAMES, VIT_DIM, VIT_TOKENS
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import taskadapter_fast as taf
from taskadapter_fast import ops
from taskadapter_fast.config import resolve_model_config
from taskadapter_fast.model.visual import adapted_block_forward
from taskadapter_fast.ops.testing import check_parity

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
IMAGE_SIZE = 224
WAYS = 5
SGD_LR = 1e-3
# timed rounds (warm-up: every provider has just run the same step once, for its parity check or untimed)
ROUNDS = {"block": 20 if HAS_CUDA else 5, "episode": 10, "cpu-visual-step": 10 if HAS_CUDA else 3, "cpu-target": 3}
TRITON_BF16_FLOOR = next(i for i in ops.SHORT_ATTENTION_IMPLS if i.name == "triton").atol_floor[torch.bfloat16]
COMPILE_FLOOR = 1e-3
FP32_MODEL_BOUND = 1e-4
BF16_MODEL_FLOOR = 1e-3
# dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, first substring match of the device name
DENSE_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
)


@dataclass(frozen=True)
class Provider:
    impl: str
    bf16: bool
    compile: bool = False

    @property
    def is_reference(self) -> bool:
        return self.impl == "reference" and not self.compile


PROVIDERS = {
    "reference-fp32": Provider("reference", bf16=False),
    "reference-bf16": Provider("reference", bf16=True),
    "reference-compile": Provider("reference", bf16=True, compile=True),
    "auto-fp32": Provider("auto", bf16=False),
    "auto-bf16": Provider("auto", bf16=True),
    "triton": Provider("triton", bf16=True),
}
BLOCK_VIDEOS = {"block-V3": (3, False), "block-V5": (5, True), "block-V10": (10, True)}  # name: (V, GPU only)
EPISODE_SHOTS = {"episode-5w1s": 1, "episode-5w5s": 5}
CPU_STEP_VIDEOS = 3

_means: dict[str, dict[str, tuple[float, float]]] = {}  # case -> provider -> (mean s, min s), this run only


def _skip_reason(provider: str, gpu_only: bool) -> str | None:
    if provider == "triton" and not HAS_CUDA:
        return "triton needs CUDA to be timed (its CPU interpreter is a correctness tool, far too slow)"
    if provider.startswith("auto-") and HAS_CUDA:
        return "on CUDA impl='auto' runs the Triton kernels: the triton provider times that"
    if gpu_only and not HAS_CUDA:
        return (
            "a GPU case (ViT-B/16 at this size takes minutes per step on a CPU); "
            "the CPU runs block-V3, cpu-visual-step and cpu-target"
        )
    return None


def _sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def _autocast(provider: Provider):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=provider.bf16)


def _use_impl(monkeypatch, provider: Provider) -> None:
    """TAF_IMPL for the code that runs with impl="auto" (the model's frozen prefix): the provider's own impl."""
    if provider.impl == "reference":
        monkeypatch.setenv(ops.ENV_IMPL, "reference")
    else:
        monkeypatch.delenv(ops.ENV_IMPL, raising=False)


def _peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS if key in device_name), None) if HAS_CUDA else None


@pytest.fixture(scope="module")
def vit_model():
    """Task-Adapter++ on ViT-B/16 (L = 6, M = 2) with random CLIP weights and small random adapter values."""
    torch.manual_seed(0)
    config = resolve_model_config("ssv2_small", pretrained=None, quick_gelu=True, impl="reference")
    model = taf.create_model(config, device=DEVICE).train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


def _relative_errors(got: list[torch.Tensor], reference: list[torch.Tensor]) -> list[float]:
    return [
        ((g.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30)).item()
        for g, r in zip(got, reference, strict=True)
    ]


def _assert_model_parity(name: str, provider: Provider, results, references) -> float:
    """The whole-model rule of the module docstring; returns the worst relative error."""
    errors = _relative_errors(results, references["reference-fp32"])
    if provider.bf16:
        bf16_error = max(_relative_errors(references["reference-bf16"], references["reference-fp32"]))
        bounds = [2 * bf16_error + BF16_MODEL_FLOOR] * len(errors)
    else:
        bounds = [FP32_MODEL_BOUND] * len(errors)
    failures = [f"tensor {i}: {e:.3g} > {b:.3g}" for i, (e, b) in enumerate(zip(errors, bounds, strict=True)) if e > b]
    assert not failures, f"{name}: relative error against reference-fp32: " + "; ".join(failures)
    return max(errors)


def _record(benchmark, case: str, provider_name: str, device_name: str, flops: float | None, **extra) -> None:
    benchmark.extra_info.update(case=case, provider=provider_name, device=device_name)
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    benchmark.extra_info.update(extra)
    if benchmark.stats is None:  # --benchmark-disable runs each case once, untimed
        return
    stats = benchmark.stats.stats
    _means.setdefault(case, {})[provider_name] = (stats.mean, stats.min)
    if flops:
        benchmark.extra_info["tflop_per_step"] = round(flops / 1e12, 4)
        benchmark.extra_info["tflops"] = flops / stats.mean / 1e12
        peak = _peak_tflops(device_name)
        if peak:
            benchmark.extra_info["mfu"] = benchmark.extra_info["tflops"] / peak
    for baseline in ("reference-fp32", "reference-bf16"):
        if baseline in _means[case] and baseline != provider_name:
            base_mean, base_min = _means[case][baseline]
            benchmark.extra_info[f"speedup_vs_{baseline}"] = round(base_mean / stats.mean, 3)
            benchmark.extra_info[f"speedup_vs_{baseline}_best_round"] = round(base_min / stats.min, 3)


def _peak_mib(step) -> float | None:
    """CUDA memory of one call of `step` above what was allocated before it."""
    if not HAS_CUDA:
        return None
    _sync()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    _sync()
    return (torch.cuda.max_memory_allocated() - baseline) / 2**20


# (a) one adapted block -------------------------------------------------------------------------------


class _AdaptedBlock(nn.Module):
    """One frozen CLIP block with its adapters, so torch.func.functional_call can swap the adapter tensors."""

    def __init__(self, block: nn.Module, adapters: nn.Module):
        super().__init__()
        self.block = block
        self.adapters = adapters

    def forward(self, x: torch.Tensor, impl: str) -> torch.Tensor:
        return adapted_block_forward(self.block, self.adapters, x, impl=impl)


def _block_fn(module: nn.Module, names: list[str], impl: str, exact: nn.Module | None = None):
    """f(x, *adapter tensors) -> block output; `exact` (a float64 copy) runs check_parity's float64 inputs."""

    def run(x, *adapter_tensors):
        chosen = exact if x.dtype == torch.float64 else module
        return torch.func.functional_call(chosen, dict(zip(names, adapter_tensors, strict=True)), (x,), {"impl": impl})

    return run


@pytest.mark.parametrize("provider_name", list(PROVIDERS))
@pytest.mark.parametrize("case", list(BLOCK_VIDEOS))
def test_adapted_block(benchmark, vit_model, device_name, case, provider_name):
    videos, gpu_only = BLOCK_VIDEOS[case]
    reason = _skip_reason(provider_name, gpu_only)
    if reason:
        pytest.skip(reason)
    provider = PROVIDERS[provider_name]
    benchmark.group = f"model {case} fwd+bwd"
    index = vit_model.visual.depth - 2  # a middle adapted block: all tokens out
    module = _AdaptedBlock(vit_model.clip.visual.transformer.resblocks[index], vit_model.visual.adapters[str(index)])
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(videos, FRAMES, VIT_TOKENS, VIT_DIM, generator=generator).to(DEVICE).requires_grad_()
    inputs = [x, *(p.detach().clone().requires_grad_() for _, p in module.named_parameters() if p.requires_grad)]
    fn = _block_fn(module, names, provider.impl)
    if provider.compile:
        torch.compiler.reset()
        fn = torch.compile(fn)
    if not provider.is_reference:
        reference = _block_fn(module, names, "reference", exact=copy.deepcopy(module).double())
        floor = {"triton": TRITON_BF16_FLOOR, "auto-bf16": TRITON_BF16_FLOOR, "auto-fp32": 1e-5}.get(
            provider_name, COMPILE_FLOOR
        )
        with _autocast(provider):
            failures = check_parity(fn, reference, inputs, floor=floor)
        assert not failures, failures
    grad_out = torch.randn(x.shape, generator=generator).to(DEVICE)

    def step():
        with _autocast(provider):
            out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad_out.to(out.dtype))
        _sync()

    step()  # warm-up (and compile)
    peak = _peak_mib(step)
    meta = copy.deepcopy(module).to("meta")  # the FLOPs of the reference formulation, without computing anything
    meta_x = torch.empty(x.shape, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = meta(meta_x, impl="reference")
        out.backward(torch.empty_like(out))  # (FlopCounterMode's module hooks refuse autograd.grad on a leaf)
    benchmark.pedantic(step, rounds=ROUNDS["block"], warmup_rounds=0)
    _record(benchmark, case, provider_name, device_name, counter.get_total_flops(), videos=videos, peak_mib=peak)


# (b) whole training steps (GPU) ----------------------------------------------------------------------


def _episode_inputs(shots: int):
    generator = torch.Generator().manual_seed(0)
    frames = (FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
    support = torch.randn(WAYS * shots, *frames, generator=generator).to(DEVICE)
    query = torch.randn(WAYS, *frames, generator=generator).to(DEVICE)
    labels = torch.arange(WAYS, device=DEVICE).repeat_interleave(shots)
    query_labels = torch.arange(WAYS, device=DEVICE)
    names = [f"action {c}" for c in range(WAYS)]
    corpus = {name: [f"{name} begins", f"{name} goes on", f"{name} ends"] for name in names}
    return support, labels, query, query_labels, names, corpus


_episode_references: dict[str, dict[str, list[torch.Tensor]]] = {}
_episode_flops: dict[str, float] = {}


def _episode_loss(model, forward, inputs) -> torch.Tensor:
    support, labels, query, query_labels, names, corpus = inputs
    return model.loss(forward(support, labels, query, names, corpus), query_labels)


def _episode_results(model, forward, inputs, provider: Provider) -> list[torch.Tensor]:
    """[loss, every trainable gradient] of one step from the current weights, nothing updated."""
    with _autocast(provider):
        loss = _episode_loss(model, forward, inputs)
    grads = torch.autograd.grad(loss, model.trainable_parameters())
    return [loss.detach(), *(g.detach() for g in grads)]


def _episode_reference(model, case: str, inputs, monkeypatch) -> dict[str, list[torch.Tensor]]:
    if case not in _episode_references:
        monkeypatch.setenv(ops.ENV_IMPL, "reference")
        model.config.impl = "reference"
        with FlopCounterMode(display=False) as counter:
            fp32 = _episode_results(model, model, inputs, PROVIDERS["reference-fp32"])
        _episode_flops[case] = counter.get_total_flops()
        bf16 = _episode_results(model, model, inputs, PROVIDERS["reference-bf16"])
        _episode_references[case] = {"reference-fp32": fp32, "reference-bf16": bf16}
    return _episode_references[case]


@pytest.mark.parametrize("provider_name", list(PROVIDERS))
@pytest.mark.parametrize("case", list(EPISODE_SHOTS))
def test_training_step(benchmark, vit_model, device_name, monkeypatch, case, provider_name):
    reason = _skip_reason(provider_name, gpu_only=True)
    if reason:
        pytest.skip(reason)
    provider = PROVIDERS[provider_name]
    benchmark.group = f"model {case} training step"
    model = vit_model
    inputs = _episode_inputs(EPISODE_SHOTS[case])
    references = _episode_reference(model, case, inputs, monkeypatch)
    _use_impl(monkeypatch, provider)
    model.config.impl = provider.impl
    forward = model
    if provider.compile:
        torch.compiler.reset()
        forward = torch.compile(model)
    worst = None
    if not provider.is_reference:
        worst = _assert_model_parity(case, provider, _episode_results(model, forward, inputs, provider), references)
    start = [p.detach().clone() for p in model.trainable_parameters()]
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=SGD_LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(provider):
            loss = _episode_loss(model, forward, inputs)
        loss.backward()
        optimizer.step()
        _sync()

    try:
        step()  # warm-up (and compile)
        peak = _peak_mib(step)
        benchmark.pedantic(step, rounds=ROUNDS["episode"], warmup_rounds=0)
    finally:  # the next provider starts from the same weights
        with torch.no_grad():
            for p, value in zip(model.trainable_parameters(), start, strict=True):
                p.copy_(value)
        model.zero_grad(set_to_none=True)
        model.config.impl = "reference"
    _record(
        benchmark, case, provider_name, device_name, _episode_flops[case], peak_mib=peak, max_rel_error=worst,
        videos=WAYS * EPISODE_SHOTS[case] + WAYS,
    )  # fmt: skip
    if benchmark.stats is not None:
        benchmark.extra_info["episodes_per_s"] = 1.0 / benchmark.stats.stats.mean


# (c) the CPU target: the visual training step --------------------------------------------------------

_visual_references: dict[str, list[torch.Tensor]] = {}
_visual_flops: list[float] = []


def _visual_inputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    """videos [3, 8, 3, 224, 224] and the fixed random gradient of the features [3, 8, E]."""
    generator = torch.Generator().manual_seed(0)
    videos = torch.randn(CPU_STEP_VIDEOS, FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(DEVICE)
    grad_feats = torch.randn(CPU_STEP_VIDEOS, FRAMES, model.embed_dim, generator=generator).to(DEVICE)
    return videos, grad_feats


def _visual_forward(model, impl: str):
    visual, clip_visual = model.visual, model.clip.visual

    def forward(videos):
        return visual.encode_suffix(clip_visual, visual.encode_prefix(clip_visual, videos, impl=impl), impl=impl)

    return forward


def _visual_results(model, forward, videos, grad_feats, provider: Provider) -> list[torch.Tensor]:
    """[features, gradients of the temporal embedding and every visual adapter tensor]."""
    params = [p for p in model.visual.parameters() if p.requires_grad]
    with _autocast(provider):
        feats = forward(videos)  # [V, T, E]
    grads = torch.autograd.grad((feats.float() * grad_feats).sum(), params)
    return [feats.detach().float(), *grads]


def _visual_step_flops(model) -> float:
    """FLOPs of the reference formulation's visual step, counted on meta-device copies (nothing is computed)."""
    visual, clip_visual = (copy.deepcopy(module).to("meta") for module in (model.visual, model.clip.visual))
    videos = torch.empty(CPU_STEP_VIDEOS, FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, device="meta")
    with FlopCounterMode(display=False) as counter:
        tokens = visual.encode_prefix(clip_visual, videos, impl="reference")
        visual.encode_suffix(clip_visual, tokens, impl="reference").sum().backward()
    return counter.get_total_flops()


def _visual_reference(model, videos, grad_feats) -> bool:
    """Compute (once) the fp32 and bf16 reference results and the step's FLOPs; True if it ran now."""
    if _visual_references:
        return False
    _visual_flops.append(_visual_step_flops(model))
    reference = _visual_forward(model, "reference")
    fp32 = _visual_results(model, reference, videos, grad_feats, PROVIDERS["reference-fp32"])
    bf16 = _visual_results(model, reference, videos, grad_feats, PROVIDERS["reference-bf16"])
    _visual_references.update({"reference-fp32": fp32, "reference-bf16": bf16})
    return True


@pytest.mark.parametrize("provider_name", list(PROVIDERS))
def test_visual_training_step(benchmark, vit_model, device_name, provider_name):
    reason = _skip_reason(provider_name, gpu_only=False)
    if reason:
        pytest.skip(reason)
    case = "cpu-visual-step"
    provider = PROVIDERS[provider_name]
    benchmark.group = f"model {case} (3 videos x 8 frames, ViT-B/16, L=6, fwd+bwd)"
    model = vit_model
    videos, grad_feats = _visual_inputs(model)
    warmed_up = _visual_reference(model, videos, grad_feats)
    forward = _visual_forward(model, provider.impl)
    if provider.compile:
        torch.compiler.reset()
        forward = torch.compile(forward)
    worst = None
    if provider.is_reference:
        if not warmed_up:
            _visual_results(model, forward, videos, grad_feats, provider)
    else:  # the parity run is the warm-up (and the compile)
        results = _visual_results(model, forward, videos, grad_feats, provider)
        worst = _assert_model_parity(case, provider, results, _visual_references)

    def step():
        _visual_results(model, forward, videos, grad_feats, provider)
        _sync()

    peak = _peak_mib(step)
    benchmark.pedantic(step, rounds=ROUNDS[case], warmup_rounds=0)
    _record(
        benchmark, case, provider_name, device_name, _visual_flops[0], videos=CPU_STEP_VIDEOS, peak_mib=peak,
        max_rel_error=worst,
    )  # fmt: skip


TARGET_PROVIDERS = ("reference-fp32", "auto-fp32", "auto-bf16")


def test_cpu_target_paired_ratios(benchmark, vit_model, device_name):
    """The issue's CPU target as paired ratios: every round runs reference-fp32, auto-fp32 and auto-bf16 back to back.

    On a shared machine the load drifts over the minutes the provider cases above take one after the other, so
    their ratios can be off by tens of percent; the ratio of two runs a few seconds apart, taken per round, is
    what the target is judged on. The benchmark time is that of a whole round (the three steps). Records each
    provider's per-round times and the median over rounds of reference-fp32 / auto-fp32 ("fp32 no slower": >= 1)
    and reference-fp32 / auto-bf16 (the 3x target).
    """
    if HAS_CUDA:
        pytest.skip("the CPU target; on a GPU the provider cases above give the ratios")
    case = "cpu-target"
    benchmark.group = "model cpu-visual-step target: paired per-round ratios"
    model = vit_model
    videos, grad_feats = _visual_inputs(model)
    _visual_reference(model, videos, grad_feats)
    forwards = {name: _visual_forward(model, PROVIDERS[name].impl) for name in TARGET_PROVIDERS}
    worst = {}
    for name in TARGET_PROVIDERS[1:]:  # parity, which is also the warm-up
        results = _visual_results(model, forwards[name], videos, grad_feats, PROVIDERS[name])
        worst[name] = _assert_model_parity(case, PROVIDERS[name], results, _visual_references)
    times: dict[str, list[float]] = {name: [] for name in TARGET_PROVIDERS}

    def one_round():
        for name in TARGET_PROVIDERS:
            start = time.perf_counter()
            _visual_results(model, forwards[name], videos, grad_feats, PROVIDERS[name])
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=ROUNDS[case], warmup_rounds=0)
    reference = times["reference-fp32"]
    benchmark.extra_info.update(case=case, device=device_name, torch_threads=torch.get_num_threads())
    for name in TARGET_PROVIDERS:
        benchmark.extra_info[f"{name}_s"] = [round(t, 2) for t in times[name]]
    for name in TARGET_PROVIDERS[1:]:
        ratios = [r / t for r, t in zip(reference, times[name], strict=True)]
        benchmark.extra_info[f"{name}_speedup_vs_reference-fp32_per_round"] = [round(r, 3) for r in ratios]
        benchmark.extra_info[f"{name}_speedup_vs_reference-fp32_median"] = round(statistics.median(ratios), 3)
        benchmark.extra_info[f"{name}_max_rel_error"] = worst[name]
