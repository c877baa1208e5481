"""Files replaced in one rename, and JSON that every parser reads: the ground floor every writer of normgpt stands on.

`atomic_write`/`atomic_path`: a reader, or a process killed mid-write, sees the old file or the new one, never half
of either. JSON is strict: a non-finite number is written as null and its key listed under "nonfinite", so any JSON
parser reads every file. JSON-lines files are appended a row at a time and read back without ever raising on their
content (a torn last line is what a kill leaves).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


def read_json(path: Path) -> Any:
    """A JSON file; legacy files with bare NaN/Infinity (written before JSON was strict) still parse."""
    return json.loads(Path(path).read_text())


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
            row = json.loads(line)
        except json.JSONDecodeError:
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
