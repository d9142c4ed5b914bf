"""Without a GPU, Triton kernels run through Triton's CPU interpreter.

TRITON_INTERPRET is read when a kernel is decorated, so it must be set before triton is first
imported (torch.compile imports it too): here, before any test module is collected.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
