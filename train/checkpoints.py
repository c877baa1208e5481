"""Run-directory bookkeeping: which checkpoints exist, writing them so a kill never leaves a half-written one that a
later run would trust, and keeping only the newest few."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Files whose presence means a directory already holds a run that must not be silently overwritten.
RUN_MARKERS = ("metrics.jsonl", "run_config.yaml", "config.json")


class CheckpointError(ValueError):
    """A missing or unusable checkpoint; the message is one line."""


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir`, oldest first. In-progress `*.tmp` directories never match."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_checkpoint(spec: str, output_dir: Path) -> Path:
    """`latest` -> the newest complete checkpoint of `output_dir`; anything else must be a checkpoint directory."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise CheckpointError(f"--resume_from_checkpoint latest: no checkpoint-<step> directory in '{output_dir}'")
        return checkpoints[-1][1]
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint '{spec}' does not exist; pass a checkpoint-<step> directory or 'latest'")
    if not CHECKPOINT_RE.match(path.name) or not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"'{spec}' is not a training checkpoint (expected a checkpoint-<step> directory)")
    return path


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))


def holds_run(output_dir: Path) -> bool:
    return output_dir.is_dir() and (
        any((output_dir / marker).exists() for marker in RUN_MARKERS) or bool(list_checkpoints(output_dir))
    )


def staging_dir(final: Path) -> Path:
    """Where a checkpoint is written before it is renamed into place (the rename is atomic on one filesystem)."""
    return final.with_name(final.name + ".tmp")


def publish(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def rotate(output_dir: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def clean_stale_staging(output_dir: Path) -> None:
    """Remove `checkpoint-*.tmp` left by a run that was killed while saving."""
    if output_dir.is_dir():
        for child in output_dir.glob("checkpoint-*.tmp"):
            shutil.rmtree(child, ignore_errors=True)
