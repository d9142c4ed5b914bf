"""The benchmark suite's plumbing: the target-case selection and RESULTS.md written from a real run's JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _target_cases() -> frozenset[str]:
    spec = importlib.util.spec_from_file_location("benchmarks_conftest", BENCHMARKS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TARGET_CASES


def test_target_set_collects_exactly_the_target_cases():
    result = _pytest("benchmarks/", "--benchmark-only", "--bench-set", "targets", "--collect-only")
    assert result.returncode == 0, result.stdout + result.stderr
    collected = {line.split("::")[-1] for line in result.stdout.splitlines() if "::" in line}
    assert collected == _target_cases()


def test_results_table_is_written_from_the_benchmark_json(tmp_path):
    bench_json, results = tmp_path / "bench.json", tmp_path / "RESULTS.md"
    run = _pytest(
        "benchmarks/test_bench_sampler.py", "--benchmark-only", "-k", "5way-1shot", f"--benchmark-json={bench_json}"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    write = subprocess.run(
        [sys.executable, str(BENCHMARKS / "write_results.py"), str(bench_json), "--out", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert write.returncode == 0, write.stdout + write.stderr
    table = results.read_text()
    assert "| device | cpu |" in table
    benchmarks = json.loads(bench_json.read_text())["benchmarks"]
    assert len(benchmarks) == 4
    for case in benchmarks:
        row = next(line for line in table.splitlines() if line.startswith(f"| {case['name']} |"))
        mean_ms = float(row.split("|")[2].replace(",", ""))
        assert abs(mean_ms - case["stats"]["mean"] * 1e3) <= 0.01 * case["stats"]["mean"] * 1e3


def test_flops_are_counted_on_meta_copies_as_on_real_tensors():
    # The model benchmarks count a step's FLOPs on meta-device copies (nothing computed); every op on the way,
    # the dispatcher's checks included, must run there and count what the real tensors would.
    import copy

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import taskadapter_fast as taf

    torch.manual_seed(0)
    model = taf.create_model("tiny")

    def count(device: str) -> int:
        visual, clip_visual = (copy.deepcopy(module).to(device) for module in (model.visual, model.clip.visual))
        videos = torch.zeros(2, model.config.num_frames, 3, 32, 32, device=device)
        # the math backend on both: FlopCounterMode does not see inside the CPU flash-attention kernel
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            tokens = visual.encode_prefix(clip_visual, videos, impl="reference")
            visual.encode_suffix(clip_visual, tokens, impl="reference").sum().backward()
        return counter.get_total_flops()

    assert count("meta") == count("cpu") > 0
