"""`accelerate launch` as normgpt ships it: every config in configs/accelerate/ is read by accelerate as its comment
says, and cpu_2proc.yaml keeps its processes on the CPU also where there are GPUs. The two-process runs of
tests/test_faults.py are launched with cpu_2proc.yaml: they are its launch test (two processes, "ranks agree", an exact
resume)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from synthetic_corpus import write_corpus
from trainer_runs import command, run

from train.config import REPO_ROOT

CONFIGS = REPO_ROOT / "configs" / "accelerate"
# What each file's comment promises: accelerate's distributed type, process count and precision, and which of its
# launchers runs the file: torchrun starts num_processes processes; the simple launcher starts one, whatever it says.
PROMISED = {
    "cpu_2proc.yaml": ("MULTI_GPU", 2, "no", "torchrun"),
    "single_gpu.yaml": ("NO", 1, "bf16", "simple"),
    "multi_gpu.yaml": ("MULTI_GPU", 8, "bf16", "torchrun"),
    "fsdp.yaml": ("FSDP", 8, "bf16", "torchrun"),
}
TRAINING = {"max_steps": 3, "eval_steps": 0, "save_steps": 0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def accelerate_launch(*flags: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *flags]


def resolved(config: Path) -> argparse.Namespace:
    """The arguments `accelerate launch --config_file CONFIG` resolves, from which it picks its launcher."""
    return _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(config), "train.py"]))[0]


# ---------------------------------------------------------------------------------------------------------------------
# The shipped configs


def test_every_shipped_config_has_its_promise_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(PROMISED)


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_accelerate_reads_each_config_as_its_comment_says(name):
    kind, processes, precision, how = PROMISED[name]
    config = load_config_from_file(str(CONFIGS / name))
    assert (config.distributed_type.value, config.num_processes, config.mixed_precision) == (kind, processes, precision)
    args = resolved(CONFIGS / name)
    assert ("torchrun" if args.multi_gpu or args.use_fsdp else "simple") == how  # accelerate's launch_command
    assert f"accelerate launch --config_file configs/accelerate/{name} train/train.py" in (CONFIGS / name).read_text()
    if name == "fsdp.yaml":  # FSDP2, one shard unit per transformer block
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_cpu_2proc_hides_every_gpu_from_its_processes(monkeypatch):
    """Where CUDA is present, accelerate passes gpu_ids to the processes as CUDA_VISIBLE_DEVICES; -1,-1 leaves them no
    device, so they stay on the CPU (the gpu test below runs it on a real GPU machine)."""
    import accelerate.utils.launch as accelerate_utils_launch

    as_on_a_gpu_machine = lambda check_available=True: ("cuda", torch.cuda)  # noqa: E731
    monkeypatch.setattr(accelerate_utils_launch, "get_torch_accelerator_backend", as_on_a_gpu_machine)
    args = resolved(CONFIGS / "cpu_2proc.yaml")
    args.main_process_port = 0  # accelerate picks a free one
    env = accelerate_utils_launch.prepare_multi_gpu_env(args)
    assert env["CUDA_VISIBLE_DEVICES"] == "-1,-1" and args.nproc_per_node == "2"


# ---------------------------------------------------------------------------------------------------------------------
# On a CUDA machine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(PROMISED))
def test_each_config_trains_where_its_comment_says(name, corpus, cache, tmp_path):
    gpus = torch.cuda.device_count()
    if name in ("multi_gpu.yaml", "fsdp.yaml") and gpus < 2:
        pytest.skip("needs two GPUs")
    count = {"cpu_2proc.yaml": 2, "single_gpu.yaml": 1}.get(name, gpus)  # the GPU configs: set to the GPU count
    flags = ["--config_file", str(CONFIGS / name), "--main_process_port", "0", "--num_processes", str(count)]
    done = run(command(corpus, cache, tmp_path / "run", launcher=accelerate_launch(*flags), **TRAINING))
    device = "cpu" if name == "cpu_2proc.yaml" else "cuda"
    assert f"{count} process(es) on {device}" in done.stdout
    if count > 1 and name != "fsdp.yaml":  # FSDP shards the parameters: nothing to compare across ranks
        assert f"ranks agree: parameters identical on all {count} processes" in done.stdout
