"""What each run of a sweep needs before launching, and the data every run will read, prepared once.

Running the same sweep again continues it: a finished run (completed, diverged, stalled) is skipped; an interrupted,
failed or incomplete run that has a checkpoint resumes from its latest one; anything else starts over. A run
directory that holds a run made with other settings, or files that are no run at all, is an error, never reused or
cleared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from train.checkpoints import list_checkpoints
from train.output_dir import OutputLock
from train.run_directory import LOCK, RUN_CONFIG, SWEEP_FILES, Run, foreign_entries, load_run, remove_owned
from train.sweep.directory import BOOKKEEPING, run_dir
from train.sweep.spec import RunSpec, Sweep, SweepError


class Action(str, enum.Enum):
    DONE = "done"  # finished: skipped
    RESUME = "resume"  # `--resume_from_checkpoint latest`
    FRESH = "fresh"  # start over (ablate.py first clears what an earlier attempt left)

    def __str__(self) -> str:
        return self.value


def plan(run: Run) -> Action:
    if run.status.finished:
        return Action.DONE
    return Action.RESUME if list_checkpoints(run.path) else Action.FRESH


def config_mismatch(spec: RunSpec, run: Run) -> str | None:
    """The first field where the run on disk differs from what the sweep asks for (fields both know only; a field the
    sweep leaves to the model's default is whatever the trainer resolved it to and recorded)."""
    if (run.path / RUN_CONFIG).is_file() and not run.config:
        return f"its {RUN_CONFIG} cannot be read"
    for key, wanted in spec.config.items():
        if key in BOOKKEEPING or key not in run.config or wanted is None:
            continue
        if run.config[key] != wanted:
            return f"{key}={run.config[key]!r} on disk, {wanted!r} in this sweep"
    return None


def foreign_files(directory: Path) -> list[str]:
    """Names in a run directory that normgpt did not write (train/run_directory.py's rule, --overwrite_output_dir's)."""
    return foreign_entries(directory) if directory.is_dir() else []


def plan_sweep(sweep: Sweep, out_dir: Path) -> dict[str, Action]:
    """Run name -> action, in run order. Raises SweepError for a directory that is not this sweep's to use."""
    actions = {}
    for spec in sweep.runs:
        directory = run_dir(out_dir, spec.name)
        run = load_run(directory)
        actions[spec.name] = action = plan(run)
        if action is not Action.FRESH and (why := config_mismatch(spec, run)):
            raise SweepError(
                f"run directory '{directory}' holds a run made with other settings ({why}); "
                "delete it or use another --output_dir"
            )
        if action is Action.FRESH and (foreign := foreign_files(directory)):
            raise SweepError(
                f"run directory '{directory}' holds files that are not a normgpt run ({', '.join(foreign[:3])}); "
                "move them or use another --output_dir"
            )
    return actions


def clear_for_restart(directory: Path) -> None:
    """Remove what an unfinished, checkpoint-less attempt left, keeping this tool's own logs (and anything normgpt
    did not write, which `plan_sweep` refused before). The run's lock is taken first: a directory a live run holds
    (started by hand, or by another sweep) is never touched; OutputDirError says so."""
    if not directory.is_dir():
        return
    lock = OutputLock(directory)
    lock.acquire()
    try:
        remove_owned(directory, keep=(*SWEEP_FILES, LOCK))
    finally:
        lock.abandon()  # released, and its file removed where this call created it


def prepare_data_once(runs: Sequence[RunSpec], say: Callable[[str], None] = print) -> None:
    """Build the token cache of every distinct data config of `runs` before any launch, so the runs find it built
    (in parallel they would all tokenize the same corpus at once). A config that fails here is said in one line and
    left to its runs, whose trainer reports it in their logs."""
    from train.data import DataError, prepare_data  # torch, datasets, tokenizers: only when preparing

    configs: dict[str, list[RunSpec]] = {}
    for spec in runs:
        key = [dataclasses.asdict(spec.resolved.data), spec.resolved.model.bpe_vocab_size]
        configs.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(spec)
    for i, group in enumerate(configs.values(), start=1):
        spec = group[0]
        say(f"preparing data {i}/{len(configs)} ({spec.resolved.data.dataset}; {len(group)} run(s))")
        try:
            prepare_data(spec.resolved.data, spec.resolved.model.bpe_vocab_size, contextlib.nullcontext)
        except DataError as err:
            say(f"data for {len(group)} run(s) could not be prepared ({err}); those runs will fail with it")
