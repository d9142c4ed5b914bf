"""setup.py's CMake build of the C++ extension, run for real in a copy of the sources."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taskadapter_fast.data import sampler

ROOT = Path(__file__).resolve().parent.parent


def _build(src: Path, temp: Path, lib: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(temp), "--build-lib", str(lib)]
    env = {key: value for key, value in os.environ.items() if key != "TAF_BUILD_EXT"} | {"MAX_JOBS": "2"}
    return subprocess.run(command, cwd=src, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    shutil.which("cmake") is None or importlib.util.find_spec("pybind11") is None,
    reason="the build tools are not installed here (pip install '.[test]' brings cmake, ninja and pybind11)",
)
def test_a_second_build_ignores_the_cmake_cache_of_a_vanished_build_environment(tmp_path):
    # pip builds each `pip install .` in a throw-away environment: the next build must not trust a CMake cache
    # that names the previous environment's ninja, which is gone by then
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "CMakeLists.txt"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("csrc", "taskadapter_fast", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    temp, lib = tmp_path / "temp", tmp_path / "lib"
    first = _build(src, temp, lib)
    assert first.returncode == 0, first.stdout + first.stderr
    (cache,) = temp.glob("*/CMakeCache.txt")
    text = cache.read_text()
    gone = "CMAKE_MAKE_PROGRAM:FILEPATH=/gone/build-env/bin/ninja"
    stale = re.sub(r"^CMAKE_MAKE_PROGRAM:[A-Z]*=.*$", gone, text, flags=re.MULTILINE)
    assert stale != text
    cache.write_text(stale)
    for built in lib.rglob("_episodes*.so"):
        built.unlink()

    second = _build(src, temp, lib)
    assert second.returncode == 0, second.stdout + second.stderr
    (built,) = lib.rglob("_episodes*.so")
    spec = importlib.util.spec_from_file_location("taskadapter_fast._episodes", built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the rebuilt module works: it gives the Python twin's frame indices
    num_frames = np.array([8, 30, 301], np.int64)
    keys = np.arange(3, dtype=np.uint64)
    expected = sampler._py_frame_indices(num_frames, 8, True, 5, keys)
    np.testing.assert_array_equal(module.frame_indices(num_frames, 8, True, 5, keys), expected)
