"""The run directory: the format of what a training run leaves behind, written and read through this module only.

The trainer writes a run directory; `scripts/` (sweeps and reports) and the tests read it. Every file name, the
summary schema, the status vocabulary and the metrics-row format live here, so writer and readers cannot drift.

    run_config.yaml   the resolved config, sections model/data/training (`flat_config` flattens it)
    data_info.json    the dataset fingerprint, sizes and token-cache entry
    metrics.jsonl     one JSON object per logging step or evaluation (`MetricsLog`)
    summary.json      the outcome (`Summary`), written when the run stops for any reason
    loss_curve.png, sample.txt, checkpoint-<step>/ (train/checkpoints.py), and the Hugging Face model files

Every file is written atomically (`atomic_write`): a reader, or a run killed mid-write, sees the old file or the new
one, never half of either. JSON is strict: a non-finite number is written as null and its key listed under
"nonfinite", so any JSON parser reads every file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import platform
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

RUN_CONFIG = "run_config.yaml"
DATA_INFO = "data_info.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOSS_CURVE = "loss_curve.png"
SAMPLE = "sample.txt"
# Files whose presence means a directory holds a run that must not be silently overwritten.
RUN_MARKERS = (METRICS, RUN_CONFIG, SUMMARY)


class RunStatus(str, enum.Enum):
    """How a run ended. This is the only definition; every reader takes the status from `summary.json`.

    - completed: trained for `max_steps` and saved the final model.
    - diverged: stopped early because the trainer's divergence rule fired (`train/stability.py`: a non-finite loss
      or gradient for too many steps in a row, or a windowed mean loss still at the loss at initialization after
      warm-up). The metrics up to that step are kept; no final model is saved.
    - stalled: trained for `max_steps`, but the loss sat on the unigram-entropy plateau after warm-up
      (`train/stability.py`, `PlateauDetector`): it learnt token frequencies and nothing of the context.
    - interrupted: stopped by a signal (SIGTERM, SIGINT, SIGUSR1) after writing a checkpoint; resumable.
    - failed: the trainer stopped on an unexpected error.
    Reader-side only, for a directory without a summary: incomplete (still running, or killed before it could
    write one) and missing (no directory).
    """

    COMPLETED = "completed"
    DIVERGED = "diverged"
    STALLED = "stalled"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    MISSING = "missing"

    @property
    def finished(self) -> bool:
        """The run reached a final result a study may use (as opposed to one it may resume or must rerun)."""
        return self in (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.STALLED)

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------------------------------------------------------------
# Writing files


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


# ---------------------------------------------------------------------------------------------------------------------
# metrics.jsonl


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, problems) of a JSON-lines file. A line that does not parse is dropped and named in `problems`: a torn
    last line is what a kill or a full disk leaves, a bad line elsewhere is damage. Never raises on content."""
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
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            problems.append(f"{path}: line {number} is not a metrics row (an object with an integer step); dropped")
            continue
        rows.append(row)
    return rows, problems


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed at once so a killed run keeps what it logged.
    Training rows carry `loss`; evaluation rows carry `val_loss`; both carry `step` (optimizer steps done)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(dumps_strict(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        rows, problems = read_jsonl(self.path)
        for problem in problems:
            warnings.warn(problem, stacklevel=2)
        return rows

    def truncate_after(self, step: int) -> None:
        """Keep the rows up to `step`, dropping any damaged line: a run resumed from checkpoint-`step` logs the
        later steps again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [row for row in self.rows() if row["step"] <= step]
        atomic_write(self.path, "".join(dumps_strict(row) + "\n" for row in kept))


def train_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "loss" in r and "val_loss" not in r]


def eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "val_loss" in r]


# ---------------------------------------------------------------------------------------------------------------------
# summary.json


@dataclass
class Summary:
    """The outcome of a run. `stop_reason`/`stop_step` say why and where a run that did not complete stopped."""

    status: RunStatus
    steps: int
    max_steps: int
    stop_reason: str | None = None
    stop_step: int | None = None
    init_val_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_train_loss: float | None = None
    spike_count: int = 0
    spike_steps: list[int] = field(default_factory=list)
    max_grad_norm: float | None = None
    max_attn_logit: float | None = None
    tokens_per_sec: float | None = None
    wall_time: float | None = None
    num_parameters: int | None = None
    device: str | None = None
    num_processes: int = 1
    learning_rate: float | None = None
    seed: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # fields added by later versions, kept when re-written

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["status"] = self.status.value
        out["diverged"] = self.status is RunStatus.DIVERGED  # for tools that read the flag; derived, never read back
        return {**self.extra, **out}

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / SUMMARY, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Also reads summaries of earlier versions (`diverged_reason`/`diverged_step`, no `stop_*`)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        data.setdefault("stop_reason", data.pop("diverged_reason", None))
        data.setdefault("stop_step", data.pop("diverged_step", None))
        status = data.get("status") or ("diverged" if data.get("diverged") else "completed")
        try:
            data["status"] = RunStatus(status)
        except ValueError:
            raise ValueError(f"unknown status {status!r}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("diverged", "nonfinite")}
        for required in ("steps", "max_steps"):
            if not isinstance(known.get(required), int):
                raise ValueError(f"'{required}' must be an integer")
        return cls(**known, extra=extra)

    @classmethod
    def read(cls, run_dir: Path) -> Summary:
        return cls.from_dict(read_json(Path(run_dir) / SUMMARY))


# ---------------------------------------------------------------------------------------------------------------------
# run_config.yaml


def write_run_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    atomic_write(path, yaml.safe_dump(sections, sort_keys=False))


def read_run_config(path: Path) -> dict[str, dict[str, Any]]:
    """The sections of a run_config.yaml; raises ValueError when it is not one."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(f"'{path}' is not a run config (a mapping of sections to mappings)")
    return raw


def flat_config(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """model/data/training sections -> one field: value mapping (field names are unique across sections)."""
    return {key: value for section in sections.values() for key, value in section.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Hardware


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def device_name(device: Any) -> str:
    """What a run ran on, for reports: the GPU's name, or the CPU model and core count."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({available_cores()} cores)"


def hardware() -> dict[str, Any]:
    """This machine: CPU, cores, platform, Python, torch and the visible GPUs."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch, or a broken CUDA install: the rest still describes the machine
        info["gpus"] = []
    return info


def describe_hardware(info: dict[str, Any]) -> str:
    """One line from `hardware()`'s dict."""
    parts = [str(info.get("cpu") or "unknown CPU")]
    if info.get("cpu_cores"):
        parts.append(f"{info['cpu_cores']} CPU cores available")
    parts.append("GPUs: " + ", ".join(info["gpus"]) if info.get("gpus") else "no GPU")
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Reading a whole run


def holds_run(directory: Path) -> bool:
    """Whether `directory` holds a normgpt run (its files, or a checkpoint)."""
    from train.checkpoints import list_checkpoints

    directory = Path(directory)
    return directory.is_dir() and (
        any((directory / marker).exists() for marker in RUN_MARKERS) or bool(list_checkpoints(directory))
    )


@dataclass
class Run:
    """A run directory as the tools read it. `problems` lists what could not be read, one line each."""

    path: Path
    summary: Summary | None
    config: dict[str, Any]  # flat: field -> value
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> RunStatus:
        if self.summary is not None:
            return self.summary.status
        return RunStatus.INCOMPLETE if self.path.is_dir() else RunStatus.MISSING

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        rows, problems = read_jsonl(self.path / METRICS)
        self.problems.extend(problems)
        return rows

    def train_rows(self) -> list[dict[str, Any]]:
        return train_rows(self.metrics)

    def eval_rows(self) -> list[dict[str, Any]]:
        return eval_rows(self.metrics)

    def last_step(self) -> int | None:
        """The newest logged step: progress of a run that has no summary yet."""
        return max((r["step"] for r in self.metrics), default=None)


def load_run(path: Path) -> Run:
    """Read a run directory without ever raising on its content: what cannot be read is in `problems`."""
    path = Path(path)
    problems: list[str] = []
    summary = None
    if (path / SUMMARY).is_file():
        try:
            summary = Summary.read(path)
        except (ValueError, TypeError, OSError) as err:
            problems.append(f"{path / SUMMARY}: unreadable ({err}); the run counts as incomplete")
    config: dict[str, Any] = {}
    if (path / RUN_CONFIG).is_file():
        try:
            config = flat_config(read_run_config(path / RUN_CONFIG))
        except (ValueError, OSError, yaml.YAMLError) as err:
            problems.append(f"{path / RUN_CONFIG}: unreadable ({str(err).splitlines()[0]})")
    return Run(path, summary, config, problems)
