"""Claiming an output directory: checked before any work, locked for the run's whole life, and replaced only where
every entry in it is one normgpt wrote.

A directory is claimed, never adopted:
- a fresh run needs a missing or empty directory (empty but for what `CLAIMABLE` names: a lock a run that stopped
  before writing anything left, a sweep's launch logs), or one holding a normgpt run together with
  `--overwrite_output_dir`; any other directory, a symlink to a source tree or `--output_dir .` included, is refused;
- `--overwrite_output_dir` removes normgpt's own files of a run directory (train/run_directory.py's `owned` says which)
  and nothing else: a directory that also holds anything normgpt does not write (a user's thesis, code, data) is
  refused, and so are the working directory and its parents, the home directory, the repository and the filesystem
  root, whatever they hold;
- a resume continues the run in the directory; one that already trained to its `--max_steps` has nothing to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import filelock

from train.arguments import REPO_ROOT
from train.checkpoints import list_checkpoints
from train.run_directory import CLAIMABLE, LOCK, RunStatus, Summary, foreign_entries, holds_run, remove_owned


class OutputDirError(ValueError):
    """An output directory that cannot or must not be used; the message is one line."""


class RunCompleted(Exception):
    """A resume of a run that already trained to its `--max_steps`: nothing to do (the message says so; exit 0)."""


def check_path(output_dir: Path, what: str = "output_dir") -> None:
    """Refuse, before any work, a path that is a file or cannot be written (`what` names it in the message)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{what} '{path}' is a file, not a directory; pass a directory path")
    probe = path
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(f"{what} '{path}' cannot be created: '{probe}' is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OutputDirError(f"{what} '{path}' is not writable ({err.strerror} in '{probe}')") from None


def _summary(output_dir: Path) -> Summary | None:
    try:
        return Summary.read(output_dir)
    except (OSError, ValueError, TypeError):  # no summary yet, or a damaged one: the run's outcome is unknown
        return None


def _trained_to_the_end(summary: Summary | None) -> bool:
    return summary is not None and summary.status in (RunStatus.COMPLETED, RunStatus.STALLED)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_fresh(output_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, a directory a fresh run must not claim: one that holds a normgpt run (unless
    `overwrite`, and then only where `check_overwrite` accepts it), or anything else that is not empty."""
    path = Path(output_dir)
    if not path.is_dir():
        return
    if holds_run(path):
        if not overwrite:
            raise OutputDirError(_holds_a_run(path))
        check_overwrite(path)
        return
    others = sorted(p.name for p in path.iterdir() if p.name not in CLAIMABLE)
    if others:
        raise OutputDirError(
            f"output_dir '{path}' is not empty and holds no normgpt run ({_listed(others)}); a run writes only into "
            "a new or empty directory: pass another --output_dir"
        )


def _holds_a_run(path: Path) -> str:
    """Why a fresh run may not start in `path`, which holds a run, and what to pass instead."""
    summary, checkpoints = _summary(path), list_checkpoints(path)
    replace = "--overwrite_output_dir to replace it, or another --output_dir"
    if _trained_to_the_end(summary):
        what = f"a {summary.status} run ({summary.steps} of {summary.max_steps} steps)"
        if not checkpoints:
            return f"output_dir '{path}' already holds {what}, with no checkpoint to extend it from; pass {replace}"
        extend = "--resume_from_checkpoint latest with a larger --max_steps to extend it"
        return f"output_dir '{path}' already holds {what}; pass {extend}, {replace}"
    if summary is not None and summary.status is RunStatus.DIVERGED:
        return f"output_dir '{path}' already holds a run that diverged at step {summary.steps}; pass {replace}"
    hint = "" if checkpoints else " (it stopped before its first checkpoint)"
    return (
        f"output_dir '{path}' already holds a run{hint}; pass --resume_from_checkpoint latest to continue it, {replace}"
    )


def check_resumable(output_dir: Path, max_steps: int, from_step: int | None = None) -> None:
    """Before a resume: raise RunCompleted when the run already trained to `max_steps` (resuming it unchanged does
    nothing), and refuse to extend a finished run that kept no checkpoint. `from_step`: the step of a checkpoint the
    user named. One before the run's last step goes back to it and trains from there again (how a resume is checked
    to repeat the uninterrupted run), which is work to do, not a completed run."""
    summary = _summary(output_dir)
    if not _trained_to_the_end(summary):
        return
    if from_step is not None and from_step < summary.steps:
        return
    if summary.steps >= max_steps:
        raise RunCompleted(
            f"the run in '{output_dir}' already {summary.status} at step {summary.steps} of {summary.max_steps}; "
            "nothing to do (a larger --max_steps extends it; --overwrite_output_dir, without "
            "--resume_from_checkpoint, trains it again)"
        )
    if not list_checkpoints(output_dir):
        raise OutputDirError(
            f"the run in '{output_dir}' {summary.status} without keeping a checkpoint (--save_steps 0), so it cannot "
            "be extended; train a longer run with --overwrite_output_dir or another --output_dir"
        )


def _protected(path: Path) -> str | None:
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the working directory or one of its parents"
    if resolved == Path.home().resolve():
        return "it is the home directory"
    if resolved == REPO_ROOT or resolved in REPO_ROOT.parents:
        return "it is the normgpt repository or contains it"
    return None


def check_overwrite(output_dir: Path) -> None:
    """Refuse `--overwrite_output_dir` on a directory it must not empty; nothing is removed here."""
    path = Path(output_dir)
    if not path.is_dir():
        return
    if why := _protected(path):
        raise OutputDirError(f"--overwrite_output_dir refuses '{path}': {why}; pass a run directory")
    foreign = foreign_entries(path)
    if foreign:
        raise OutputDirError(
            f"--overwrite_output_dir refuses '{path}': it holds files normgpt did not write ({_listed(foreign)}); "
            "remove them yourself or pass another --output_dir"
        )


def clear_run(output_dir: Path) -> None:
    """Remove normgpt's entries from a directory `check_overwrite` accepted (the lock file stays: we hold it)."""
    remove_owned(output_dir, keep=(LOCK,))


class OutputLock:
    """An exclusive lock on the output directory for the run's whole life (an OS file lock: a killed run releases
    it). `acquire` creates the directory if needed; `abandon` undoes what `acquire` created, for a run that stops
    before it wrote anything."""

    def __init__(self, output_dir: Path, name: str = LOCK, holder: str = "run") -> None:
        self.output_dir = Path(output_dir)
        self.name, self.holder = name, holder  # the lock file's name, and what holds it (a run, a sweep)
        self._created_dir = False
        self._created_file = False
        self._lock: filelock.FileLock | None = None

    def acquire(self) -> None:
        if not self.output_dir.exists():
            self.output_dir.mkdir(parents=True)
            self._created_dir = True
        path = self.output_dir / self.name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            # A lock is opened for writing: never through a link (or anything else) planted at its name.
            raise OutputDirError(
                f"'{path}' is not normgpt's lock file (a link or a directory); remove it or pass another --output_dir"
            )
        self._created_file = not path.exists()
        self._lock = filelock.FileLock(str(path))
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            self._lock = None
            raise OutputDirError(
                f"output_dir '{self.output_dir}' is in use by another normgpt {self.holder} (it holds {self.name}); "
                "wait for it to finish or pass another --output_dir"
            ) from None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abandon(self) -> None:
        """Release, and remove the lock file and the directory if this run created them and left nothing else."""
        held = self._lock is not None
        self.release()
        if not held:
            return
        if self._created_file:
            (self.output_dir / self.name).unlink(missing_ok=True)
        if self._created_dir and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            os.rmdir(self.output_dir)


__all__ = [
    "OutputDirError",
    "OutputLock",
    "RunCompleted",
    "check_fresh",
    "check_overwrite",
    "check_path",
    "check_resumable",
    "clear_run",
]
