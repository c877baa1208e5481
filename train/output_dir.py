"""Claiming an output directory: checked before any work, locked for the run's whole life, and replaced only where
every entry in it is one normgpt wrote.

`--overwrite_output_dir` removes normgpt's own files of a run directory (train/run_directory.py's `owned` says which)
and nothing else: a directory that also holds anything normgpt does not write (a user's thesis, code, data) is
refused, and so are the working directory and its parents, the home directory, the repository and the filesystem
root, whatever they hold.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import filelock

from train.arguments import REPO_ROOT
from train.run_directory import LOCK, foreign_entries, remove_owned


class OutputDirError(ValueError):
    """An output directory that cannot or must not be used; the message is one line."""


def check_path(output_dir: Path) -> None:
    """Refuse, before any work, a path that is a file or cannot be written."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output_dir '{path}' is a file, not a directory; pass a directory path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(f"output_dir '{path}' cannot be created: '{probe}' is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OutputDirError(f"output_dir '{path}' is not writable ({err.strerror} in '{probe}')") from None


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
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputDirError(
            f"--overwrite_output_dir refuses '{path}': it holds files normgpt did not write ({shown}); "
            "remove them yourself or pass another --output_dir"
        )


def clear_run(output_dir: Path) -> None:
    """Remove normgpt's entries from a directory `check_overwrite` accepted (the lock file stays: we hold it)."""
    remove_owned(output_dir, keep=(LOCK,))


class OutputLock:
    """An exclusive lock on the output directory for the run's whole life (an OS file lock: a killed run releases
    it). `acquire` creates the directory if needed; `abandon` undoes what `acquire` created, for a run that stops
    before it wrote anything."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self._created_dir = False
        self._created_file = False
        self._lock: filelock.FileLock | None = None

    def acquire(self) -> None:
        if not self.output_dir.exists():
            self.output_dir.mkdir(parents=True)
            self._created_dir = True
        path = self.output_dir / LOCK
        self._created_file = not path.exists()
        self._lock = filelock.FileLock(str(path))
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            self._lock = None
            raise OutputDirError(
                f"output_dir '{self.output_dir}' is in use by another normgpt run (it holds {LOCK}); wait for it "
                "to finish or pass another --output_dir"
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
            (self.output_dir / LOCK).unlink(missing_ok=True)
        if self._created_dir and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            os.rmdir(self.output_dir)


__all__ = ["OutputDirError", "OutputLock", "check_overwrite", "check_path", "clear_run"]
