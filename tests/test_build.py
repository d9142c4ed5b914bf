"""setup.py's CMake build of the C++ extension, run for real in a copy of the sources."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
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
def test_the_sdist_builds_and_a_second_build_ignores_a_vanished_build_environment(tmp_path):
    # The sources are those of an sdist made from a copy of the checkout, so the build also proves the sdist
    # carries what it needs (CMakeLists.txt and csrc/ come through MANIFEST.in).
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("setup.py", "pyproject.toml", "CMakeLists.txt", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, checkout / name)
    for name in ("csrc", "taskadapter_fast", "kernels"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    sdist = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        cwd=checkout,
        env={key: value for key, value in os.environ.items() if key != "TAF_BUILD_EXT"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sdist.returncode == 0, sdist.stdout + sdist.stderr
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(tmp_path / "unpacked", filter="data")
        else:
            tar.extractall(tmp_path / "unpacked")  # noqa: S202 - our own archive
    (src,) = (tmp_path / "unpacked").iterdir()
    assert (src / "CMakeLists.txt").is_file() and (src / "csrc" / "bindings.cpp").is_file()

    # pip builds each `pip install .` in a throw-away environment: the next build must not trust a CMake cache
    # that names the previous environment's ninja, which is gone by then
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
