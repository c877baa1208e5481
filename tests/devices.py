"""Which device the suite's processes use, and their threads (set up by conftest.py, before any test module loads).

On a CUDA machine the suite passes as on the CPU. Tests that run the trainer, a sweep or a launcher compare numbers
recorded on the CPU (tests/test_numerics.py), resume bit for bit and rely on the CPU's deterministic kernels (no
atomics in any backward), so every process a test starts runs on the CPU (CUDA_VISIBLE_DEVICES empty, which also
keeps `--multi_gpu --num_processes 2` on gloo where there is a single GPU), and so does a trainer run inside a test
process (ACCELERATE_USE_CPU, what `accelerate launch --cpu` sets and the trainer honours). The test processes keep
the GPU for what is tested on it: the kernel tests, and the `gpu`-marked tests, which give a child process the GPU
back with `gpu_env()`. The CUDA trainer itself is proven by scripts/gpu_checks.sh (the 124M preset eager and
compiled, FSDP and its exact resume) and the `gpu`-marked launch test.

Threads: each test process, and each process it starts, gets its share of the cores: a 16-core machine running
`pytest -n 16` would otherwise run up to 16 trainers of 16 threads each.
"""

from __future__ import annotations

import os

import torch

from train.hardware import available_cores

CUDA = torch.cuda.is_available()
VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")  # as the suite found it: what gpu_env() gives back


def keep_child_processes_on_the_cpu() -> None:
    if not CUDA:
        return
    # CUDA reads CUDA_VISIBLE_DEVICES when it initialises, and torch caches the device count from then on: initialise
    # now, and the variable changed below only reaches the processes started from here.
    torch.cuda.init()
    torch.cuda.device_count()
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["ACCELERATE_USE_CPU"] = "true"


def share_the_cores() -> None:
    threads = max(1, available_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("NORMGPT_CPU_THREADS", str(threads))  # the trainer's own setting (train/trainer.py)
    torch.set_num_threads(threads)


def gpu_env() -> dict[str, str]:
    """The environment of a child process that is to see the GPUs (a `gpu`-marked test launching one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "ACCELERATE_USE_CPU")}
    return env if VISIBLE_DEVICES is None else {**env, "CUDA_VISIBLE_DEVICES": VISIBLE_DEVICES}
