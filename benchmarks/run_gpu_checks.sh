#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go, on a machine whose Python already has torch and triton:
#   1. builds and installs the package (the C++ extension included) without touching its dependencies;
#   2. runs the GPU-marked tests (full-size Triton kernel parity, DALI-GPU decoding, inductor with the kernels);
#   3. runs the benchmark suite (each case asserts parity before it times anything) into a JSON file;
#   4. writes RESULTS.md from that JSON with benchmarks/write_results.py.
#
#   bash benchmarks/run_gpu_checks.sh OUT_DIR [extra pytest arguments for the benchmarks, e.g. -k "episode or block"]
#
# The whole suite compiles every op and model case with inductor and takes far longer than its timed work; pass
# `--bench-set targets` to time only the 27 cases the issue's GPU targets are judged on (benchmarks/conftest.py).
#
# Everything it prints also lands in OUT_DIR (install.log, tests.log, bench.log, bench.json, RESULTS.md), so a
# run cut short still leaves what it measured. Set TAF_GPU_STEPS to a subset of "install tests bench" to skip
# steps (e.g. TAF_GPU_STEPS="bench" on a machine where the package is installed already).
# TAF_GPU_CHECKS_ANY_DEVICE=1 runs it without a GPU too (only to check the script itself: the GPU cases then skip).
set -uo pipefail
out=${1:?usage: bash benchmarks/run_gpu_checks.sh OUT_DIR [pytest args]}
shift
steps=${TAF_GPU_STEPS:-install tests bench}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if [[ -z "${TAF_GPU_CHECKS_ANY_DEVICE:-}" ]] && ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "run_gpu_checks: torch sees no CUDA GPU here; the CPU checks are 'pytest' and 'pytest benchmarks/ --benchmark-only'" >&2
    exit 2
fi
"$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$out/device.txt"

status=0
if [[ " $steps " == *" install "* ]]; then
    if ! TAF_BUILD_EXT=1 "$python" -m pip install --no-deps --no-build-isolation . >"$out/install.log" 2>&1; then
        tail -n 40 "$out/install.log"
        echo "run_gpu_checks: install failed (see $out/install.log)" >&2
        exit 1
    fi
fi
if [[ " $steps " == *" tests "* ]]; then
    # the installed package, not the source tree, is what the tests import (tests/conftest.py)
    TAF_REQUIRE_EXT=1 "$python" -m pytest tests/ -m "gpu or dali or triton" -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests.log"
    rc=${PIPESTATUS[0]}
    (( rc == 0 )) || status=$rc
fi
if [[ " $steps " == *" bench "* ]]; then
    "$python" -m pytest benchmarks/ --benchmark-only --benchmark-json="$out/bench.json" -q -rs -p no:cacheprovider "$@" \
        2>&1 | tee "$out/bench.log"
    rc=${PIPESTATUS[0]}
    (( rc == 0 )) || status=$rc
    if [[ -s "$out/bench.json" ]]; then
        "$python" benchmarks/write_results.py "$out/bench.json" --out "$out/RESULTS.md"
    fi
fi
exit "$status"
