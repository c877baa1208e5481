"""What `accelerate launch` was asked for, read back from inside a process it started.

accelerate 1.16 sends `--cpu`, and a config whose distributed_type is NO or MULTI_CPU (without an MPI hostfile),
through its one-process launcher whatever --num_processes says: the run trains alone and exits 0. That launcher tells
its child nothing about the count except MASTER_ADDR and MASTER_PORT, which it sets only when asked for more than one
process (torchrun, which a real multi-process launch goes through, sets WORLD_SIZE instead). The count itself is on
the launcher's command line, the child's parent process, or in the config file that command line names: both are
read here with accelerate's own parser and config loader.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

# How an `accelerate launch` process shows in its command line: a program name followed by `launch`, or one that is
# the launch command itself (`accelerate-launch`, `python -m accelerate.commands.launch`).
CLI_NAMES = ("accelerate", "accelerate.commands.accelerate_cli")
LAUNCH_NAMES = ("accelerate-launch", "accelerate.commands.launch")


def launch_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments an `accelerate launch` process was given, from its argv; None for any other program. Only the
    first words are looked at (interpreter, `-m`, program), so a training flag named `launch` cannot match."""
    for i, word in enumerate(argv[:3]):
        name = Path(word).name
        if name in CLI_NAMES and list(argv[i + 1 : i + 2]) == ["launch"]:
            return list(argv[i + 2 :])
        if name in LAUNCH_NAMES:
            return list(argv[i + 1 :])
    return None


def requested_processes(arguments: Sequence[str]) -> int | None:
    """How many processes `accelerate launch ARGUMENTS` asked for: --num_processes, else the num_processes of the
    config file it reads (--config_file, or accelerate's default one unless --cpu, as accelerate 1.16 decides). None
    where accelerate chooses the count itself (one per device) or the arguments cannot be read."""
    from accelerate.commands.config.config_args import default_config_file, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage before exiting
            args, _ = launch_command_parser().parse_known_args(list(arguments))
    except SystemExit:
        return None
    if args.num_processes is not None:
        return args.num_processes
    uses_default = os.path.isfile(default_config_file) and not args.cpu
    if args.config_file is None and not uses_default:
        return None
    try:
        return load_config_from_file(args.config_file).num_processes
    except (OSError, ValueError, TypeError, yaml.YAMLError):  # changed since the launcher read it: say nothing
        return None


def fewer_processes_warning(requested: int | None, world_size: int, has_accelerator: bool) -> str | None:
    """One line when one process was started for N > 1 asked for, naming the flag that gives N-process DDP here."""
    if requested is None or requested <= 1 or world_size != 1:
        return None
    n = requested
    where = (
        "one per GPU; with CUDA_VISIBLE_DEVICES= in front they run on the CPU"
        if has_accelerator
        else f"{n} gloo processes on the CPU"
    )
    return (
        f"accelerate launch was asked for {n} processes but started 1 (it runs --cpu, and a config whose "
        f"distributed_type is NO or MULTI_CPU, as one process); for {n}-process DDP on this machine pass "
        f"--multi_gpu --num_processes {n} ({where})"
    )


def parent_argv() -> list[str]:
    """The command line of this process's parent ([] when it cannot be read)."""
    import psutil  # a dependency of accelerate

    try:
        parent = psutil.Process().parent()
        return parent.cmdline() if parent is not None else []
    except psutil.Error:
        return []


def warn_if_fewer_processes(world_size: int, has_accelerator: bool) -> str | None:
    """Print (to stderr) and return the warning when accelerate launch started fewer processes than asked for."""
    if world_size != 1 or "MASTER_ADDR" not in os.environ:  # the one-process launcher sets it only for N > 1
        return None
    arguments = launch_arguments(parent_argv())
    requested = requested_processes(arguments) if arguments is not None else None
    warning = fewer_processes_warning(requested, world_size, has_accelerator)
    if warning is not None:
        print(f"train.py: warning: {warning}", file=sys.stderr, flush=True)
    return warning
