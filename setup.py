"""Build script: installs the Python package and builds the C++ episode extension.

`pip install .` runs CMake (with Ninja) on CMakeLists.txt to build the pybind11 module
`taskadapter_fast._episodes` from csrc/. The extension uses no torch C++ API, so it does not
depend on the installed torch's ABI.

Build knobs (environment variables):
  TAF_BUILD_EXT=0        skip the C++ extension (the pure-Python sampler twin is then used,
                         with a one-line warning at import time)
  TAF_BUILD_TYPE=Release CMake build type (Release, Debug, RelWithDebInfo)
  TAF_CMAKE_ARGS="..."   extra arguments passed to the CMake configure step
  MAX_JOBS=N             parallel build jobs (default: the number of CPUs)
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_type = os.environ.get("TAF_BUILD_TYPE", "Release")
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        # pip builds in a throw-away environment whose cmake and ninja are gone by the next `pip install .`, and
        # a CMake cache from an earlier build would still point at them: configure from scratch every time.
        (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
        shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        ]
        try:
            import ninja  # noqa: F401

            cmake_args.append("-GNinja")
        except ImportError:
            pass
        cmake_args += shlex.split(os.environ.get("TAF_CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", ext.source_dir, *cmake_args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", build_type, "-j", jobs], cwd=build_dir, check=True)


ext_modules = []
if os.environ.get("TAF_BUILD_EXT", "1") != "0":
    ext_modules.append(CMakeExtension("taskadapter_fast._episodes", ROOT))

packages = find_packages(include=["taskadapter_fast", "taskadapter_fast.*"])
packages.append("taskadapter_fast.kernels")

setup(
    packages=packages,
    package_dir={"taskadapter_fast.kernels": "kernels"},
    package_data={"taskadapter_fast": ["presets/*.yaml", "clip_configs/*.json", "class_orders/*.txt"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
