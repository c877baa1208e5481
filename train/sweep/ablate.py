"""`normgpt sweep` (also `scripts/ablate.py`): validate a sweep, plan each run, prepare the data once, launch, then
report.

The command line and the sweep file format are documented in scripts/ablate.py and train/sweep/spec.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from train.atomic_io import ParseError, parse_json, parse_yaml
from train.cli import OneLineParser
from train.output_dir import OutputDirError, OutputLock
from train.run_directory import ERROR_LOG, RunStatus
from train.sweep import budget, report
from train.sweep.directory import RUNS, SWEEP_LOCK, run_dir, write_sweep_record
from train.sweep.plan import Action, plan_sweep, prepare_data_once
from train.sweep.scheduler import (
    Outcome,
    Scheduler,
    command_line,
    cpu_threads,
    device_slots,
    gpu_count,
    launch_command,
)
from train.sweep.spec import MAX_RUNS, Sweep, SweepError, load_sweep, select_seeds


def plural(n: int, what: str = "run") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        name="ablate.py",
        prog="normgpt sweep",
        description="Run a grid of training runs (an ablation sweep), then write its report.",
        epilog="See the module docstring (scripts/ablate.py) for the sweep file format.",
    )
    parser.add_argument("sweep", help="sweep YAML file (base, overrides, grid, exclude, description)")
    parser.add_argument("--output_dir", required=True, help="sweep directory: DIR/runs/<name>/, report, figures")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="validate, print the study's time budget (the sweep file's `budget:`) and each run's command; run nothing",
    )
    parser.add_argument(
        "--runs_per_gpu",
        type=int,
        default=None,
        metavar="K",
        help="K runs at once on each GPU, each its own process (without a GPU: K runs sharing the CPU cores, the "
        "threads split between them); default 1",
    )
    parser.add_argument(
        "--seeds",
        help="comma-separated seeds of the grid to run (e.g. 0,1: the study's pilot, into the study's directory)",
    )
    parser.add_argument(
        "--seconds_per_run",
        type=float,
        help="for --dry_run: one run's measured cost, launch to exit, in place of the sweep file's budget",
    )
    parser.add_argument("--no_report", action="store_true", help="skip scripts/report.py at the end")
    parser.add_argument(
        "--accelerate_config",
        help="accelerate config file for every run (mixed precision etc.; default: your `accelerate config`); "
        "ablate.py still sets one process per run and pins GPUs itself",
    )
    parser.add_argument(
        "--max_runs", type=int, default=MAX_RUNS, help=f"refuse a sweep of more runs than this (default {MAX_RUNS:,})"
    )
    return parser.parse_args(argv)


def check_accelerate_config(path: str) -> None:
    """The file accelerate will read for every launch, read now the way it will be (after our bounded parser, so a
    hostile file is refused the same way as any other YAML): one line, before any launch, instead of one traceback
    per run."""
    from accelerate.commands.config.config_args import load_config_from_file

    if not Path(path).is_file():
        raise SweepError(f"accelerate config '{path}' does not exist")
    try:
        (parse_json if path.endswith(".json") else parse_yaml)(Path(path).read_text())
        load_config_from_file(path)
    except ParseError as err:
        raise SweepError(f"accelerate config '{path}' {err}") from None
    except Exception as err:  # whatever accelerate makes of it (a YAML error, an unknown value, not a mapping)
        why = " ".join(str(err).split())[:160] or type(err).__name__
        raise SweepError(f"accelerate config '{path}' cannot be used: {why}") from None


def print_budget(sweep: Sweep, actions: dict[str, Action], args: argparse.Namespace) -> None:
    """The study's time budget (train/sweep/budget.py) for the runs left to launch."""
    todo = sum(action is not Action.DONE for action in actions.values())
    k = args.runs_per_gpu or sweep.budget.runs_per_gpu
    if args.runs_per_gpu is not None:
        source = "--runs_per_gpu"
    elif k > 1:
        source = f"the sweep file's budget.runs_per_gpu; launch with --runs_per_gpu {k} to run so"
    else:
        source = "one run at a time"
    seconds = args.seconds_per_run or sweep.budget.seconds_per_run
    print("budget (train/sweep/budget.py; an estimate until the runs are timed on their machine):")
    if seconds is None:
        print(f"  {todo} runs to launch (of {len(sweep.runs)}), K = {k}; no cost per run to add up: declare")
        print("  budget.seconds_per_run in the sweep file, or pass --seconds_per_run")
        return
    for line in budget.lines(sweep.budget, todo, len(sweep.runs), k, source, gpu_count(), seconds):
        print(line)


def print_dry_run(
    sweep: Sweep, actions: dict[str, Action], out_dir: Path, accelerate_config: str | None, runs_per_gpu: int
) -> None:
    """Each run's command, with the GPU (and CPU threads) it would get; nothing is written."""
    slots, threads = device_slots(runs_per_gpu), cpu_threads(runs_per_gpu)
    for i, spec in enumerate(sweep.runs):
        action = actions[spec.name]
        if action is Action.DONE:
            print(f"# {spec.name}: finished, skipped")
            continue
        slot = slots[i % len(slots)]
        print(f"# {spec.name}: {action}")
        cmd = launch_command(spec, run_dir(out_dir, spec.name), action, len(slots) > 1, accelerate_config)
        print(command_line(cmd, slot, threads))


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a scheduler's stop) ends the sweep as Ctrl-C does: every run stopped


def launch(
    sweep: Sweep, actions: dict[str, Action], out_dir: Path, accelerate_config: str | None, runs_per_gpu: int
) -> list[Outcome]:
    todo = [(spec, actions[spec.name]) for spec in sweep.runs if actions[spec.name] is not Action.DONE]
    if not todo:
        print(f"nothing to launch: all {len(sweep.runs)} runs finished")
        return []
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        prepare_data_once([spec for spec, _ in todo], say=lambda line: print(line, flush=True))
        scheduler = Scheduler(out_dir, accelerate_config, runs_per_gpu=runs_per_gpu)
        return scheduler.run(todo, len(sweep.runs), len(sweep.runs) - len(todo))
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_outcomes(outcomes: list[Outcome], out_dir: Path) -> None:
    counts = {status: sum(o.status is status for o in outcomes) for status in RunStatus}
    extra = "".join(f", {counts[s]} {s}" for s in (RunStatus.STALLED, RunStatus.INTERRUPTED) if counts[s])
    print(
        f"launched {plural(len(outcomes))}: {counts[RunStatus.COMPLETED]} completed, {counts[RunStatus.DIVERGED]} "
        f"diverged, {counts[RunStatus.FAILED]} failed{extra}"
    )
    for o in outcomes:
        if o.status is RunStatus.FAILED:
            print(f"  failed: {o.spec.name} (exit code {o.exit_code}): {run_dir(out_dir, o.spec.name) / ERROR_LOG}")
        elif o.status is RunStatus.INTERRUPTED:
            print(f"  interrupted: {o.spec.name}; run the same command again to resume it")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when every launch ended in a result, 1 when one failed or was interrupted (or the report failed), 2 for
    bad input (one line on stderr), 130 when stopped by Ctrl-C or SIGTERM."""
    args = parse(argv)
    out_dir = Path(args.output_dir)
    lock = None
    try:
        if args.accelerate_config:
            check_accelerate_config(args.accelerate_config)
        if out_dir.exists() and not out_dir.is_dir():
            raise SweepError(f"--output_dir '{out_dir}' is a file, not a directory")
        if args.runs_per_gpu is not None and args.runs_per_gpu < 1:
            raise SweepError(f"--runs_per_gpu must be an integer >= 1, got {args.runs_per_gpu}")
        if args.seconds_per_run is not None and not (0 < args.seconds_per_run < float("inf")):
            raise SweepError(f"--seconds_per_run must be a number of seconds > 0, got {args.seconds_per_run}")
        sweep = load_sweep(Path(args.sweep), max_runs=args.max_runs)
        if args.seeds is not None:
            select_seeds(sweep, [s.strip() for s in args.seeds.split(",") if s.strip()])
        if not args.dry_run:  # the sweep directory is this sweep's until it ends: a second one is refused
            lock = lock_sweep_dir(out_dir)
        actions = plan_sweep(sweep, out_dir)
    except SweepError as err:
        if lock is not None:
            lock.abandon()
        print(f"ablate.py: error: {err}", file=sys.stderr)
        return 2
    try:
        return run_sweep(args, sweep, actions, out_dir)
    finally:
        if lock is not None:
            lock.release()


def lock_sweep_dir(out_dir: Path) -> OutputLock:
    """The sweep directory's lock (created with the directory if need be), held while the sweep runs."""
    lock = OutputLock(out_dir, SWEEP_LOCK, "sweep")
    try:
        lock.acquire()
    except OutputDirError as err:
        raise SweepError(str(err)) from None
    except OSError as err:
        raise SweepError(f"cannot write to --output_dir '{out_dir}' ({err.strerror or err})") from None
    return lock


def run_sweep(args: argparse.Namespace, sweep: Sweep, actions: dict[str, Action], out_dir: Path) -> int:
    """The plan, then the dry run's commands, or the launches and the report; `main`'s exit code."""
    count = {a: sum(1 for x in actions.values() if x is a) for a in Action}
    print(
        f"sweep {sweep.path}: {plural(len(sweep.runs))}; {count[Action.DONE]} finished (skipped), "
        f"{count[Action.RESUME]} to resume, {count[Action.FRESH]} to start; output in {out_dir}",
        flush=True,
    )
    runs_per_gpu = args.runs_per_gpu or 1
    if args.dry_run:
        try:
            print_budget(sweep, actions, args)
            print_dry_run(sweep, actions, out_dir, args.accelerate_config, runs_per_gpu)
            sys.stdout.flush()
        except BrokenPipeError:  # `--dry_run | head`: the reader has what it wanted; no traceback at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        (out_dir / RUNS).mkdir(parents=True, exist_ok=True)
        write_sweep_record(out_dir, sweep.record())
    except OSError as err:
        print(f"ablate.py: error: cannot write to --output_dir '{out_dir}' ({err.strerror or err})", file=sys.stderr)
        return 2
    try:
        outcomes = launch(sweep, actions, out_dir, args.accelerate_config, runs_per_gpu)
    except KeyboardInterrupt:
        return 130
    if outcomes:
        print_outcomes(outcomes, out_dir)
    unfinished = any(o.status in (RunStatus.FAILED, RunStatus.INTERRUPTED) for o in outcomes)
    code = 1 if unfinished else 0
    if not args.no_report:
        code = max(code, 1 if report.main([str(out_dir)]) else 0)
    return code
