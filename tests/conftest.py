"""Shared pytest setup.

Without a CUDA device the Triton kernels run through the Triton interpreter, which Triton decides when a kernel
is decorated, i.e. when the module defining it is imported. This file is loaded before any test module, so the
variable is in place before anything imports triton. Torch itself does not import triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
