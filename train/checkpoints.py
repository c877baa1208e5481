"""The checkpoint format: `output_dir/checkpoint-<step>/`, written so that nothing half-written is ever trusted and
read so that nothing in it can run code.

    model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl   accelerate's save_state
    trainer_state.json   progress, batch order, detectors and the run's config, as plain JSON
    manifest.json        every other file with its size and xxh3-128 hash, written last

A checkpoint is complete only when its manifest exists and matches. It is written under `checkpoint-<step>.tmp`
and renamed into place, so a kill leaves either no checkpoint or a complete one. Loading verifies the manifest, then
opens every pickle-format file with torch's weights-only unpickler (tensors, numbers, containers and numpy arrays,
never code) before accelerate reads them. Checkpoints written before manifests existed (normgpt < 0.2: custom state
in `custom_checkpoint_<i>.pkl`) still load, with a warning that their files cannot be verified.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import xxhash

from train.atomic_io import parse_json, remove_path, write_json
from train.run_directory import CHECKPOINT_RE, checkpoint_dirs

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
FORMAT = 2
# normgpt < 0.2 registered these objects with accelerate, in this order, as custom_checkpoint_<i>.pkl.
LEGACY_CUSTOM = ("batches", "trainer", "spikes", "divergence")
PICKLED = (".bin", ".pkl", ".pt")


class CheckpointError(ValueError):
    """A missing, incomplete, damaged or unsafe checkpoint; the message is one line naming it."""


def _hash(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, step: int) -> None:
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "xxh3_128": _hash(p)} for p in _files(directory)
    }
    write_json(directory / MANIFEST, {"format": FORMAT, "step": step, "files": files})


def _legacy_complete(directory: Path) -> bool:
    names = {p.name for p in directory.iterdir()}
    return "model.safetensors" in names and "optimizer.bin" in names and "custom_checkpoint_0.pkl" in names


def completeness(directory: Path) -> str | None:
    """None when `directory` is a complete checkpoint, else why not (one phrase)."""
    if not directory.is_dir():
        return "is not a directory"
    if (directory / MANIFEST).is_file():
        return None
    if _legacy_complete(directory):
        return None
    return "has no manifest.json (it was never completely written)"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of `output_dir`, oldest first. Staging `*.tmp` directories never match."""
    found = []
    for step, child in checkpoint_dirs(output_dir):
        if (why := completeness(child)) is None:
            found.append((step, child))
        else:
            logger.warning("ignoring %s: it %s", child, why)
    return found


def resolve_checkpoint(spec: str, output_dir: Path) -> Path:
    """`latest` -> the newest complete checkpoint of `output_dir`; anything else must be a complete checkpoint."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no complete checkpoint-<step> directory in '{output_dir}'; "
                "a run that stopped before its first checkpoint cannot resume: start it again with "
                "--overwrite_output_dir"
            )
        return checkpoints[-1][1]
    path = _complete_checkpoint(spec)
    if path.resolve().parent != Path(output_dir).resolve():
        raise CheckpointError(
            f"checkpoint '{spec}' is not in output_dir '{output_dir}': a run resumes only its own checkpoints; "
            f"to start a new run from its weights pass --init_from {spec} (and a new --output_dir)"
        )
    return path


def _complete_checkpoint(spec: str) -> Path:
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{spec}' does not exist; pass a checkpoint-<step> directory or 'latest'")
    if not CHECKPOINT_RE.match(path.name):
        raise CheckpointError(f"'{spec}' is not a training checkpoint (expected a checkpoint-<step> directory)")
    if why := completeness(path):
        raise CheckpointError(f"checkpoint '{spec}' {why}; pass a complete checkpoint or 'latest'")
    return path


def resolve_init(spec: str, output_dir: Path) -> Path:
    """`--init_from`: a complete checkpoint of another run (a run's own checkpoints are continued, not started from)."""
    path = _complete_checkpoint(spec)
    if path.resolve().parent == Path(output_dir).resolve():
        raise CheckpointError(
            f"--init_from '{spec}' is a checkpoint of output_dir '{output_dir}' itself: continue that run with "
            "--resume_from_checkpoint, or start the new run in another --output_dir"
        )
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"--init_from '{spec}' holds no model.safetensors (a sharded FSDP checkpoint?); pass a checkpoint whose "
            "weights are one file"
        )
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Verifying and loading


def safe_torch_load(path: Path) -> Any:
    """torch.load with the weights-only unpickler: tensors, numbers, containers and numpy arrays, never code."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before it refuses
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError on a damaged zip, ...: all mean "refuse this file"
        raise CheckpointError(f"refusing '{path}': not a plain-data checkpoint file ({_why(err)})") from None


def _why(err: Exception) -> str:
    """The useful part of torch's refusal: the global a payload asked for, else the first line."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"loading it would run {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if found:
        return f"the weights-only unpickler refused it: {found.group(1).strip()[:120]}"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:160]


def verify(directory: Path) -> None:
    """Raise CheckpointError, naming the file, unless every file matches the manifest and every pickle-format file
    holds only plain data."""
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        try:
            listed = parse_json(manifest_path.read_text())["files"]
            if not isinstance(listed, dict):
                raise TypeError("files is not a mapping")
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"'{manifest_path}' is damaged (not a checkpoint manifest)") from None
        present = {p.relative_to(directory).as_posix() for p in _files(directory)}
        for name in sorted(present - set(listed)):
            raise CheckpointError(f"'{directory / name}' is not in the checkpoint's manifest; refusing to load it")
        for name, entry in sorted(listed.items()):
            path = directory / name
            if not path.is_file():
                raise CheckpointError(f"'{path}' is listed in the manifest but missing")
            if path.stat().st_size != entry.get("size") or _hash(path) != entry.get("xxh3_128"):
                raise CheckpointError(f"'{path}' does not match the checkpoint's manifest (damaged or modified)")
    for path in _files(directory):
        if path.suffix in PICKLED:
            safe_torch_load(path)
        elif path.suffix == ".safetensors":
            _check_safetensors(path)
    if not manifest_path.is_file():
        logger.warning("%s has no manifest (written by normgpt < 0.2): its files cannot be verified", directory)


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # a bad header is the only thing a safetensors file can get wrong before loading
        raise CheckpointError(f"refusing '{path}': not a valid safetensors file ({str(err)[:160]})") from None


def read_state(directory: Path) -> dict[str, Any]:
    """trainer_state.json, or the same dict assembled from a legacy checkpoint's custom pickles."""
    if (directory / STATE).is_file():
        try:
            state = parse_json((directory / STATE).read_text())
        except ValueError:
            raise CheckpointError(f"'{directory / STATE}' is not valid JSON") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"'{directory / STATE}' is not a normgpt trainer state (format {FORMAT})")
        return state
    state: dict[str, Any] = {"format": FORMAT, "run_config": None}
    for index, key in enumerate(LEGACY_CUSTOM):
        path = directory / f"custom_checkpoint_{index}.pkl"
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{directory}' has neither {STATE} nor '{path.name}'")
        state[key] = safe_torch_load(path)
    return state


@contextlib.contextmanager
def accelerate_view(directory: Path) -> Iterator[Path]:
    """The checkpoint as `accelerator.load_state` must see it: without the custom pickles of a legacy checkpoint
    (accelerate refuses a count that differs from the registered objects, and would unpickle them with code
    execution allowed; `read_state` has loaded them safely instead). A directory of links, for legacy ones only."""
    legacy = sorted(directory.glob("custom_checkpoint_*.pkl"))
    if not legacy:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="normgpt-legacy-checkpoint-") as view:
        for path in directory.iterdir():
            if path not in legacy:
                os.symlink(path.resolve(), Path(view) / path.name)
        yield Path(view)


def load_init(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a verified checkpoint's weights into `model` (a new run's, same model fields) and, given `optimizer`, its
    AdamW moments, keeping the new run's hyperparameters (learning rate, betas, decay): only the state is taken."""
    from safetensors.torch import load_file

    weights = {
        k.removeprefix("_orig_mod.").removeprefix("module."): v
        for k, v in load_file(directory / "model.safetensors").items()
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        names = sorted(set(unexpected) | (set(missing) - tied))
        raise CheckpointError(f"--init_from '{directory}': its weights do not fit this model ({', '.join(names[:3])})")
    if optimizer is None:
        return
    saved = safe_torch_load(directory / "optimizer.bin")
    try:
        optimizer.load_state_dict({**optimizer.state_dict(), "state": saved["state"]})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"--init_from '{directory}': its optimizer state does not fit this model ({err})"
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# Writing, rotating


def publish(staging: Path, final: Path) -> None:
    remove_path(final)  # an older checkpoint of the same step (never followed, if a link was planted there)
    os.replace(staging, final)


def rotate(output_dir: Path, keep: int | None) -> None:
    """Keep the newest `keep` complete checkpoints. Only complete checkpoints are counted or removed, and every
    checkpoint is written with finite weights, so the newest finite one always survives."""
    if keep is None:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path)


def clean_stale_staging(output_dir: Path) -> None:
    """Remove `checkpoint-*.tmp` left by a run that was killed while saving (a link there too, never its target)."""
    if output_dir.is_dir():
        for child in output_dir.glob("checkpoint-*.tmp"):
            remove_path(child)
