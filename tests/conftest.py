"""Without a GPU, Triton kernels run through Triton's CPU interpreter.

TRITON_INTERPRET is read when a kernel is decorated, so it must be set before triton is first
imported (torch.compile imports it too): here, before any test module is collected.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _outside_the_source_tree(tmp_path_factory):
    """Run every test (and the `python -m taskadapter_fast...` subprocesses it starts) from an empty folder.

    From the repository root, `python -m`/`python -c` would import the source tree's `taskadapter_fast`
    (without its built extension and without `taskadapter_fast.kernels`, which setup.py maps from
    kernels/) instead of the installed package the tests are meant to check.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`).

    On a small CPU shared with other work, OpenMP threads waiting on each other (and on the decode threads)
    made the same work up to 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
