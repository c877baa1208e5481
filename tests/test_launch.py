"""`accelerate launch` as normgpt ships it: every config in configs/accelerate/ is read by accelerate as its comment
says, cpu_2proc.yaml keeps its processes on the CPU also where there are GPUs, and a launch that started one process
where it was asked for more says so in one line (train/launcher.py). The two-process runs of tests/test_faults.py are
launched with cpu_2proc.yaml: they are its launch test (two processes, "ranks agree", an exact resume)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from devices import gpu_env
from trainer_runs import command, run

from train import launcher
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
# Fewer processes than asked for


def test_a_launch_that_started_one_process_of_two_says_so_in_one_line(corpus, cache, tmp_path):
    """accelerate's own habit: `--cpu --num_processes 2` runs one process. The trainer reads the count back from the
    launcher's command line and names the flag that gives two."""
    flags = ("--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no")
    done = run(command(corpus, cache, tmp_path / "run", launcher=accelerate_launch(*flags), max_steps=1, save_steps=0))
    assert "1 process(es)" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("train.py: warning: ")]
    expected = launcher.fewer_processes_warning(2, 1, has_accelerator=False)  # no GPU in a test's child (devices.py)
    assert warnings == [f"train.py: warning: {expected}"]
    assert "--multi_gpu --num_processes 2" in expected


@pytest.mark.parametrize(
    "argv, arguments",
    [
        (["/v/bin/python", "/v/bin/accelerate", "launch", "--cpu", "t.py"], ["--cpu", "t.py"]),
        (["/v/bin/accelerate", "launch", "t.py", "--x", "launch"], ["t.py", "--x", "launch"]),
        (
            ["python", "-m", "accelerate.commands.launch", "--num_processes", "2", "t.py"],
            ["--num_processes", "2", "t.py"],
        ),  # noqa: E501
        (["/v/bin/python", "/v/bin/accelerate-launch", "t.py"], ["t.py"]),
        (["/v/bin/python", "/v/bin/accelerate", "config", "default"], None),
        (["python", "train/train.py", "--run_name", "accelerate", "launch"], None),  # a training flag is no launcher
        ([], None),
    ],
)
def test_only_an_accelerate_launch_command_line_has_launch_arguments(argv, arguments):
    assert launcher.launch_arguments(argv) == arguments


def test_the_requested_count_is_the_flag_else_the_config_file_accelerate_reads(tmp_path, monkeypatch):
    import accelerate.commands.config.config_args as config_args

    monkeypatch.setattr(config_args, "default_config_file", str(tmp_path / "no_default.yaml"))
    multi_cpu = tmp_path / "multi_cpu.yaml"  # what `accelerate config` writes for several CPU processes
    multi_cpu.write_text(
        yaml.safe_dump(
            {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_CPU", "num_processes": 4}
            | {"num_machines": 1, "machine_rank": 0, "mixed_precision": "no", "use_cpu": True}
        )
    )
    requested = launcher.requested_processes
    assert requested(["--cpu", "--num_processes", "2", "t.py", "--num_processes", "9"]) == 2  # the script's own: not
    assert requested(["--config_file", str(multi_cpu), "t.py"]) == 4
    assert requested(["--config_file", str(multi_cpu), "--num_processes", "3", "t.py"]) == 3
    assert requested(["t.py"]) is None  # no flag, no config: accelerate takes one per device
    assert requested(["--config_file", str(tmp_path / "gone.yaml"), "t.py"]) is None
    monkeypatch.setattr(config_args, "default_config_file", str(multi_cpu))  # `accelerate config` was run
    assert requested(["t.py"]) == 4
    assert requested(["--cpu", "t.py"]) is None  # accelerate 1.16 ignores its default config under --cpu


def test_the_warning_is_one_line_naming_the_flag_for_this_machine():
    assert launcher.fewer_processes_warning(None, 1, False) is None
    assert launcher.fewer_processes_warning(1, 1, False) is None
    assert launcher.fewer_processes_warning(2, 2, False) is None
    cpu = launcher.fewer_processes_warning(3, 1, has_accelerator=False)
    assert "asked for 3 processes but started 1" in cpu
    assert cpu.endswith("pass --multi_gpu --num_processes 3 (3 gloo processes on the CPU)")
    gpu = launcher.fewer_processes_warning(2, 1, has_accelerator=True)
    assert "--multi_gpu --num_processes 2 (one per GPU; with CUDA_VISIBLE_DEVICES= in front" in gpu
    assert "\n" not in cpu + gpu


def test_the_warning_needs_both_the_launchers_variable_and_its_command_line(monkeypatch, capsys):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setattr(launcher, "parent_argv", lambda: pytest.fail("the parent was read without MASTER_ADDR"))
    assert launcher.warn_if_fewer_processes(1, False) is None  # `python train/train.py`: nothing to read
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # exported for something else, and the parent is a shell
    monkeypatch.setattr(launcher, "parent_argv", lambda: ["/bin/bash"])
    assert launcher.warn_if_fewer_processes(1, False) is None
    two = ["python", "-m", "accelerate.commands.launch", "--num_processes", "2", "train/train.py"]
    monkeypatch.setattr(launcher, "parent_argv", lambda: two)
    assert launcher.warn_if_fewer_processes(2, False) is None  # it got them
    assert capsys.readouterr().err == ""
    expected = launcher.fewer_processes_warning(2, 1, False)
    assert launcher.warn_if_fewer_processes(1, False) == expected
    assert capsys.readouterr().err.splitlines() == [f"train.py: warning: {expected}"]


def test_the_parent_command_line_is_read_from_the_running_process():
    script = "from train.launcher import parent_argv; print(parent_argv()[-1])"
    out = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -c "{script}"; true', "parent-marker"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "parent-marker", out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------------
# On a CUDA machine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(PROMISED))
def test_each_config_trains_where_its_comment_says(name, corpus, cache, tmp_path):
    """The launch sees the machine's GPUs (gpu_env); multi_gpu.yaml and fsdp.yaml run one process per GPU, so one
    on a one-GPU machine (DDP and FSDP over a group of one), and cpu_2proc.yaml stays on the CPU all the same."""
    gpus = torch.cuda.device_count()
    count = {"cpu_2proc.yaml": 2, "single_gpu.yaml": 1}.get(name, gpus)  # the GPU configs: set to the GPU count
    flags = ["--config_file", str(CONFIGS / name), "--main_process_port", "0", "--num_processes", str(count)]
    launch = accelerate_launch(*flags)
    done = run(command(corpus, cache, tmp_path / "run", launcher=launch, **TRAINING), env=gpu_env())
    device = "cpu" if name == "cpu_2proc.yaml" else "cuda"
    assert f"{count} process(es) on {device}" in done.stdout and "train.py: warning" not in done.stderr
    if count > 1 and name != "fsdp.yaml":  # FSDP shards the parameters: nothing to compare across ranks
        assert f"ranks agree: parameters identical on all {count} processes" in done.stdout
