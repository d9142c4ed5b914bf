"""Without a GPU, Triton kernels run through Triton's CPU interpreter.

TRITON_INTERPRET is read when a kernel is decorated, so it must be set before triton is first
imported (torch.compile imports it too): here, before any test module is collected.
"""

import functools
import http.server
import os
import threading

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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # commands' stderr is checked line by line
        pass


@pytest.fixture()
def file_server(tmp_path):
    """Serves tmp_path/site over HTTP on 127.0.0.1; yields (site folder, base URL, no trailing slash)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
