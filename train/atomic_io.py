"""Files replaced in one rename, JSON that every parser reads, and files read back with bounds: the ground floor every
writer and reader of normgpt stands on.

`atomic_write`/`atomic_path`: a reader, or a process killed mid-write, sees the old file or the new one, never half
of either. JSON is strict: a non-finite number is written as null and its key listed under "nonfinite", so any JSON
parser reads every file. JSON-lines files are appended a row at a time and read back without ever raising on their
content (a torn last line is what a kill leaves).

Reading is bounded: a file that would exhaust the stack or the memory (a 100,000-deep JSON array, a YAML "billion
laughs" of nested aliases) is a `ParseError`, a ValueError like any other damaged file, never a RecursionError or a
MemoryError. YAML anchors and aliases are refused outright: no config normgpt reads needs them.

Directories are staged too: `fresh_dir` creates a scratch directory at a fixed name without ever writing through a
link planted there, and `staging_dir` a hidden sibling of a directory to be published by one rename, locked while
it lives so that what a killed writer left is told apart from a live writer's and removed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import yaml


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file under this process's umask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one rename: a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so tools that pick a format by name still work) that replaces
    `path` when the block exits without an error, and is removed when it does not."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it private; the file gets the mode any new file would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def strict(obj: Any) -> tuple[Any, list[str]]:
    """`obj` with every non-finite float replaced by None, and the dotted keys where that happened."""
    found: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(where)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return clean(obj, ""), found


def dumps_strict(obj: dict[str, Any], indent: int | None = None) -> str:
    """JSON that every parser accepts: non-finite numbers become null and are named under "nonfinite"."""
    clean, found = strict(obj)
    if found:
        clean["nonfinite"] = found
    return json.dumps(clean, indent=indent, allow_nan=False)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, dumps_strict(obj, indent=2) + "\n")


class ParseError(ValueError):
    """A file that cannot be read as what it should be; the message is a phrase that follows the file's name."""


TOO_DEEP = "is nested too deeply to read"  # what a RecursionError or MemoryError of a parser means for its file


def parse_json(text: str) -> Any:
    """`json.loads`, with a document that exhausts the stack or the memory refused as a ParseError."""
    try:
        return json.loads(text)
    except (RecursionError, MemoryError):
        raise ParseError(TOO_DEEP) from None


def read_json(path: Path) -> Any:
    """A JSON file; legacy files with bare NaN/Infinity (written before JSON was strict) still parse. Raises ValueError
    (JSONDecodeError or ParseError) on a file that is not JSON."""
    return parse_json(Path(path).read_text())


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing every alias: `*name` is what a "billion laughs" file nests to expand a few lines
    into gigabytes, and no file normgpt reads needs one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            line = event.start_mark.line + 1
            raise ParseError(f"uses a YAML alias (*{event.anchor}) at line {line}; anchors and aliases are not read")
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """YAML as `yaml.safe_load` reads it, but bounded: aliases, too deep a nesting and invalid YAML are one-line
    ParseErrors ("is not valid YAML at line 3")."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        raise ParseError("is not valid YAML" + (f" at line {where.line + 1}" if where is not None else "")) from None
    except (RecursionError, MemoryError):
        raise ParseError(TOO_DEEP) from None


def read_yaml(path: Path) -> Any:
    return parse_yaml(Path(path).read_text())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row and flush it at once, so a killed process keeps every row it wrote."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(dumps_strict(row) + "\n")


def read_jsonl(path: Path, metrics: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, problems) of a JSON-lines file. A line that does not parse is dropped and named in `problems`: a torn
    last line is what a kill or a full disk leaves, a bad line elsewhere is damage. Never raises on content.
    `metrics=False` reads other JSON-lines logs (a sweep's launch log): any JSON object is a row; otherwise a row
    must also carry an integer `step`."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows, problems
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except ParseError as err:
            problems.append(f"{path}: line {number} {err}; dropped")
            continue
        except ValueError:
            torn = number == len(lines)  # no newline after it: it was being written
            problems.append(f"{path}: line {number} is {'a torn last line' if torn else 'not valid JSON'}; dropped")
            continue
        if not isinstance(row, dict) or (metrics and not isinstance(row.get("step"), int)):
            wanted = "a metrics row (an object with an integer step)" if metrics else "a JSON object"
            problems.append(f"{path}: line {number} is not {wanted}; dropped")
            continue
        rows.append(row)
    return rows, problems


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with `rows`, atomically."""
    atomic_write(path, "".join(dumps_strict(row) + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------------------------------
# Scratch and staging directories


def remove_path(path: Path) -> None:
    """Remove whatever is at `path`, never following a link: a link or a file is unlinked (a link's target is left
    alone), a directory is removed with everything in it. Nothing there is fine."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def fresh_dir(path: Path) -> Path:
    """`path` as a new, empty directory of this process: whatever a killed run left there is removed first, and the
    directory is created by `os.mkdir`, which makes the name itself or fails, so nothing is ever written through a
    link planted at that name."""
    remove_path(path)
    os.mkdir(path)
    return Path(path)


STAGING_LOCK = ".staging.lock"  # held inside a staging directory for its whole life


def _remove_if_stale(directory: Path) -> None:
    """Remove a staging directory that a killed writer left: a real directory holding a staging lock nobody holds."""
    lock_path = directory / STAGING_LOCK
    if directory.is_symlink() or not directory.is_dir() or lock_path.is_symlink() or not lock_path.is_file():
        return
    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except (filelock.Timeout, OSError):
        return  # a live writer's
    try:
        shutil.rmtree(directory, ignore_errors=True)
    finally:
        lock.release()


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A new hidden directory beside `final` (`.{name}.<random>.tmp`, on the same file system, so a rename publishes
    what is written in it), removed on exit. It holds a lock while it lives; the ones beside `final` that no live
    writer holds (a killed export's) are removed first. Write into a subdirectory and rename that: the lock stays."""
    final = Path(final)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        _remove_if_stale(stale)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    lock = filelock.FileLock(str(staging / STAGING_LOCK))
    lock.acquire()
    try:
        yield staging
    finally:
        lock.release()
        shutil.rmtree(staging, ignore_errors=True)
