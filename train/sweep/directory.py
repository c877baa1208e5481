"""The sweep directory: what `scripts/ablate.py` writes and `scripts/report.py` reads, through this module only.

    sweep.yaml          the resolved sweep (`SweepRecord`), written before the first launch
    .normgpt-sweep.lock held by the sweep that writes the directory (a second one is refused)
    runs/<name>/        one run directory per grid point (format: train/run_directory.py, which also names this tool's
                        own train.log, the output of every launch into it, and ablate_error.log, why the last failed)
    ablate_runs.jsonl   one row per launch (`Launch`)
    summary.csv, report.md, figures/    the report

The run directories themselves are read only through `train.run_directory`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train import arguments
from train.atomic_io import ParseError, append_jsonl, atomic_write, read_jsonl, read_yaml

SWEEP_YAML = "sweep.yaml"
SWEEP_LOCK = ".normgpt-sweep.lock"  # held by the sweep writing the directory, for its whole life
RUNS = "runs"
LAUNCHES = "ablate_runs.jsonl"
SUMMARY_CSV = "summary.csv"
REPORT_MD = "report.md"
FIGURES_DIR = "figures"
# Resolved-config fields that differ between runs without being part of what was compared (their metadata's role).
BOOKKEEPING = frozenset(arguments.fields_with(arguments.BOOKKEEPING))
LR_FIELD = "learning_rate"
SEED_FIELD = "seed"


class SweepDirectoryError(ValueError):
    """A missing or unusable sweep directory; the message is one line."""


def fmt_value(value: Any) -> str:
    """A YAML scalar as the trainer's command line spells it (true/false, repr of floats); also names runs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def run_dir(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / RUNS / name


@dataclass
class RecordedRun:
    name: str
    grid: dict[str, Any]  # grid key -> the value as the trainer understood it


@dataclass
class SweepRecord:
    """sweep.yaml: the sweep as ablate.py resolved it. `extra` keeps keys this version does not know."""

    grid: dict[str, list[Any]]
    runs: list[RecordedRun]
    fields: dict[str, str] = field(default_factory=dict)  # sweep key (grid or override) -> trainer config field
    sweep_file: str | None = None
    description: str | None = None
    base: str | None = None
    base_resolved: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    written: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # The order keys appear in sweep.yaml, readable top to bottom.
    ORDER = (
        "sweep_file",
        "description",
        "base",
        "base_resolved",
        "overrides",
        "grid",
        "exclude",
        "fields",
        "runs",
        "hardware",
        "written",
    )

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.ORDER}
        out["runs"] = [{"name": r.name, "grid": r.grid} for r in self.runs]
        return {k: v for k, v in {**out, **self.extra}.items() if v not in (None, [], {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> SweepRecord:
        grid, runs = data.get("grid") or {}, data.get("runs") or []
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise SweepDirectoryError(f"'{where}': 'grid' must be a mapping of key: [values]")
        if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in runs):
            raise SweepDirectoryError(f"'{where}': 'runs' must be a list of {{name, grid}} mappings")
        names = {f.name for f in dataclasses.fields(cls)} - {"grid", "runs", "extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("grid", "runs")}
        recorded = [RecordedRun(r["name"], dict(r.get("grid") or {})) for r in runs]
        if not isinstance(known.get("fields", {}), dict):
            raise SweepDirectoryError(f"'{where}': 'fields' must be a mapping of sweep key: config field")
        return cls(grid=grid, runs=recorded, **known, extra=extra)


def write_sweep_record(out_dir: Path, record: SweepRecord) -> None:
    atomic_write(Path(out_dir) / SWEEP_YAML, yaml.safe_dump(record.to_dict(), sort_keys=False, allow_unicode=True))


def read_sweep_record(out_dir: Path) -> SweepRecord | None:
    """sweep.yaml of `out_dir`, None if there is none (a directory of runs gathered by hand)."""
    path = Path(out_dir) / SWEEP_YAML
    if not path.is_file():
        return None
    try:
        raw = read_yaml(path)
    except ParseError as err:
        raise SweepDirectoryError(f"'{path}' {err}") from None
    if not isinstance(raw, dict):
        raise SweepDirectoryError(f"'{path}' is not a mapping")
    return SweepRecord.from_dict(raw, path)


@dataclass
class Launch:
    """One row of ablate_runs.jsonl: a launch of the trainer and how it ended."""

    name: str
    action: str  # fresh or resume
    slot: str | None  # CUDA_VISIBLE_DEVICES of the launch, None when not pinned
    finished: str  # ISO time
    seconds: float
    exit_code: int
    status: str  # a RunStatus value


def append_launch(out_dir: Path, launch: Launch) -> None:
    # Appended and flushed at once, as metrics.jsonl is: a killed sweep keeps every row it wrote.
    append_jsonl(Path(out_dir) / LAUNCHES, dataclasses.asdict(launch))


def read_launches(out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, problems) of ablate_runs.jsonl; no file gives no rows."""
    return read_jsonl(Path(out_dir) / LAUNCHES, metrics=False)
