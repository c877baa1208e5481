"""Shared pytest setup.

Without a CUDA device the Triton kernels run through the Triton interpreter, which Triton decides when a kernel
is decorated, i.e. when the module defining it is imported. This file is loaded before any test module, so the
variable is in place before anything imports triton. Torch itself does not import triton.

With one, every process a test starts (and a trainer run inside a test) runs on the CPU, and each test process and
its children get a share of the cores: tests/devices.py says why.

Tests marked `opt_in` (rehearsals too slow for CI) run only with `pytest --opt-in`. With NORMGPT_TEST_DEADLINE set
(a Unix time), tests that would start after it are skipped and say so.
"""

import os
import time

import pytest
from devices import CUDA, keep_child_processes_on_the_cpu, share_the_cores
from synthetic_corpus import write_corpus

# A time box (scripts/gpu_checks.sh): tests that would start after this Unix time are skipped, so the run still ends
# normally, its JUnit XML naming what ran and what did not.
DEADLINE = float(os.environ.get("NORMGPT_TEST_DEADLINE", "inf"))

if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
keep_child_processes_on_the_cpu()
share_the_cores()


def pytest_addoption(parser):
    parser.addoption("--opt-in", action="store_true", help="also run the tests marked opt_in (too slow for CI)")


# Modules whose tests run on the CUDA device in the test process where there is one (DEVICE = "cuda").
CUDA_MODULES = ("test_rmsnorm_triton.py", "test_model_triton.py")


def pytest_collection_modifyitems(config, items):
    for item in items:  # `-m cuda` selects what uses the GPU in this process: gpu_checks.sh runs it on its own
        if "gpu" in item.keywords or item.path.name in CUDA_MODULES:
            item.add_marker(pytest.mark.cuda)
    if config.getoption("--opt-in"):
        return
    skip = pytest.mark.skip(reason="opt-in: run with pytest --opt-in")
    for item in items:
        if "opt_in" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    if time.time() > DEADLINE:
        pytest.skip("not run: the time box of this test run ended (NORMGPT_TEST_DEADLINE)")


# The trainer tests' data, one per test module (a module that needs another corpus defines its own `corpus`)
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")
