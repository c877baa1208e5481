"""A sweep directory read back for the report: its runs (through `train.run_directory`), grouped into variants, and
the results of each variant.

A variant is one combination of the grid fields other than learning rate and seed. Statistics use finished runs
(`RunStatus.finished`) only: a run without a summary is incomplete and contributes nothing but its progress. A
finished run enters the validation-loss statistics when it diverged (as a failure at its LR) or has a final
validation loss; a run that completed without one (`--validation_split_percentage 0`) cannot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from train.run_directory import ERROR_LOG, RUN_METRICS, Run, RunStatus, Summary, load_run
from train.sweep import stats
from train.sweep.directory import (
    BOOKKEEPING,
    LR_FIELD,
    RUNS,
    SEED_FIELD,
    SweepDirectoryError,
    SweepRecord,
    fmt_value,
    read_launches,
    read_sweep_record,
)

# Summary fields aggregated over a variant's finished runs, and how: the run-wide stability numbers.
AGGREGATES = {metric.key: metric.across_runs for metric in RUN_METRICS}


def number(value: Any) -> float | None:
    """A finite number from a file, or None (missing, null, text, bool, NaN or inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class StudyRun:
    """One grid point: its name and grid values, and the run directory as `load_run` read it."""

    name: str
    grid: dict[str, Any]
    run: Run

    @property
    def status(self) -> RunStatus:
        return self.run.status

    @property
    def summary(self) -> Summary | None:
        return self.run.summary

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def diverged(self) -> bool:
        return self.status is RunStatus.DIVERGED

    @property
    def launch_failed(self) -> bool:
        """ablate.py recorded that the last launch into this directory failed."""
        return (self.run.path / ERROR_LOG).is_file()

    @property
    def val_loss(self) -> float | None:
        """The final validation loss of a finished run that did not diverge; None when it has none."""
        if not self.finished or self.diverged:
            return None
        return number(self.summary.final_val_loss)

    def last_logged(self, key: str) -> Any:
        """`key`'s value in the run's last training row that has it (a probe's per-block list, say); None if none."""
        return next((row[key] for row in reversed(self.run.train_rows()) if row.get(key) is not None), None)

    def model_setting(self, key: str) -> Any:
        """How the model was set up: summary.json's `model` section, else run_config.yaml."""
        model = self.summary.model if self.summary is not None else {}
        return model[key] if key in model else self.run.config.get(key)


@dataclass
class Study:
    out_dir: Path
    record: SweepRecord | None  # sweep.yaml; None for a directory of runs gathered by hand
    grid_keys: list[str]
    fields: dict[str, str]  # grid key -> trainer config field
    runs: list[StudyRun]
    ignored: list[str]  # run directories not in sweep.yaml
    launches: list[dict[str, Any]] = field(default_factory=list)  # rows of ablate_runs.jsonl
    problems: list[str] = field(default_factory=list)  # what could not be read, one line each

    @cached_property
    def lr_key(self) -> str | None:
        return next((k for k in self.grid_keys if self.fields.get(k, k) == LR_FIELD), None)

    @cached_property
    def seed_key(self) -> str | None:
        return next((k for k in self.grid_keys if self.fields.get(k, k) == SEED_FIELD), None)

    @property
    def variant_keys(self) -> list[str]:
        return [k for k in self.grid_keys if k not in (self.lr_key, self.seed_key)]

    def grid_values(self, key: str) -> list[Any]:
        if self.record is not None and key in self.record.grid:
            return list(self.record.grid[key])
        return list(dict.fromkeys(run.grid[key] for run in self.runs if key in run.grid))

    @cached_property
    def lrs(self) -> list[float]:
        """The finite learning rates of the grid, ascending."""
        values = (number(v) for v in self.grid_values(self.lr_key)) if self.lr_key else ()
        return sorted({v for v in values if v is not None})

    def lr(self, run: StudyRun) -> float | None:
        return number(run.grid.get(self.lr_key)) if self.lr_key else None

    def seed(self, run: StudyRun) -> Any:
        return run.grid.get(self.seed_key) if self.seed_key else 0

    def variant(self, run: StudyRun) -> str:
        if not self.variant_keys:
            return "all runs"
        return ", ".join(f"{k}={fmt_value(run.grid.get(k))}" for k in self.variant_keys)

    def variants(self) -> list[str]:
        """Variant labels in grid order."""
        return list(dict.fromkeys(self.variant(run) for run in self.runs))

    def variant_values(self, label: str) -> dict[str, Any]:
        run = next(r for r in self.runs if self.variant(r) == label)
        return {k: run.grid.get(k) for k in self.variant_keys}

    def finished(self, variant: str | None = None) -> list[StudyRun]:
        return [r for r in self.runs if r.finished and (variant is None or self.variant(r) == variant)]

    def in_val_stats(self, run: StudyRun) -> bool:
        """Diverged (a failure at its LR) or finished with a validation loss, at a finite LR when there is an axis."""
        usable_lr = self.lr_key is None or self.lr(run) is not None
        return usable_lr and (run.diverged or run.val_loss is not None)

    def without_val_loss(self) -> list[StudyRun]:
        """Finished runs that did not diverge and have no validation loss: in no validation-loss statistic."""
        return [r for r in self.finished() if not r.diverged and r.val_loss is None]

    @cached_property
    def frame(self) -> pd.DataFrame:
        """One row per run of the grid: what the statistics group and aggregate."""
        rows = []
        for run in self.runs:
            summary = run.summary
            row = {"run": run.name, "variant": self.variant(run), "lr": self.lr(run), "seed": self.seed(run)}
            row |= {"status": run.status.value, "finished": run.finished, "diverged": run.diverged}
            row |= {"loss": run.val_loss, "in_val_stats": self.in_val_stats(run)}
            row["init"] = number(summary.init_val_loss) if summary else None
            row |= {key: number(getattr(summary, key)) if summary else None for key in AGGREGATES}
            rows.append(row)
        numeric = ["lr", "loss", "init", *AGGREGATES]  # None -> NaN, so that every aggregate skips it
        return pd.DataFrame(rows).astype(dict.fromkeys(numeric, "float64"))

    def losses(self, variant: str) -> list[float | None]:
        """Final validation losses of the variant's runs in the statistics, at every LR (None = diverged)."""
        return loss_list(self.frame[self.frame.in_val_stats & (self.frame.variant == variant)])

    def per_lr(self, variant: str) -> dict[float, list[float | None]]:
        """LR -> `losses` at that LR; {} for a grid without an LR axis (its lr column is all NaN, a key groupby
        drops: use `losses` there)."""
        frame = self.frame[self.frame.in_val_stats & (self.frame.variant == variant)]
        return {float(lr): loss_list(g) for lr, g in frame.groupby("lr", sort=True)} if self.lr_key else {}

    @cached_property
    def unigram_entropy(self) -> float | None:
        """The unigram entropy of the training tokens (summary.json), when the finished runs agree on one (to 1e-3
        nats, i.e. they read the same data); None otherwise, or for runs from before it was recorded."""
        values = {round(v, 3) for r in self.finished() if (v := number(r.summary.unigram_entropy)) is not None}
        return values.pop() if len(values) == 1 else None

    def status_counts(self) -> dict[str, int]:
        return dict(sorted(self.frame.status.value_counts().items()))


def loss_list(rows: pd.DataFrame) -> list[float | None]:
    """The final validation losses of `Study.frame` rows, None for a run that diverged."""
    return [None if d else float(loss) for d, loss in zip(rows.diverged, rows.loss, strict=True)]


# ---------------------------------------------------------------------------------------------------------------------
# Reading a sweep directory


def load_study(out_dir: Path) -> Study:
    """The runs of `out_dir`: those sweep.yaml lists, else every run directory under runs/ with the grid inferred
    from what differs between their configs. Raises SweepDirectoryError (one line) for an unusable directory."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise SweepDirectoryError(f"'{out_dir}' is not a directory")
    record = read_sweep_record(out_dir)
    runs_dir = out_dir / RUNS
    present = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if record is not None and record.runs:
        runs = [StudyRun(r.name, dict(r.grid), load_run(runs_dir / r.name)) for r in record.runs]
        grid_keys, fields = list(record.grid), dict(record.fields)
        listed = {r.name for r in runs}
        ignored = [p.name for p in present if p.name not in listed]
    else:
        runs = [StudyRun(p.name, {}, load_run(p)) for p in present]
        grid_keys, fields, ignored = infer_grid(runs), {}, []
        for run in runs:
            run.grid = {k: run.run.config.get(k) for k in grid_keys}
    if not runs:
        raise SweepDirectoryError(f"no runs in '{out_dir}' (expected run directories under '{runs_dir}')")
    launches, problems = read_launches(out_dir)
    study = Study(out_dir, record, grid_keys, fields, runs, ignored, launches)
    study.problems = problems + run_problems(study)
    return study


def infer_grid(runs: list[StudyRun]) -> list[str]:
    """The config fields whose values differ between the runs (bookkeeping fields aside), in config order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.run.config if k not in BOOKKEEPING))
    return [k for k in keys if len({json.dumps(r.run.config.get(k), sort_keys=True) for r in runs}) > 1]


def run_problems(study: Study) -> list[str]:
    """Everything that could not be read in the run directories (the metrics are read here, so that their problems
    are known before anything is written), and learning rates that cannot be placed on the LR axis."""
    problems = []
    for run in study.runs:
        run.run.metrics  # noqa: B018 - reading the rows records their problems
        problems += run.run.problems
        if study.lr_key and study.lr(run) is None and run.status is not RunStatus.MISSING:
            value = run.grid.get(study.lr_key)
            problems.append(
                f"{run.run.path}: {study.lr_key} {value!r} is not a finite number; left out of the statistics"
            )
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Results of each variant


@dataclass
class VariantResult:
    best_lr: float | None  # lowest mean final val loss among LRs where no seed diverged
    stable_lr: float | None  # largest stable LR within the tolerance
    at_best: stats.Spread | None  # final val loss over seeds at the best LR (every run when there is no LR axis)
    sensitivity: stats.Spread | None
    sensitivity_seeds: list[Any]  # seeds with a result at every LR
    sensitivity_values: list[float]  # per seed
    aggregates: dict[str, float | None]  # AGGREGATES over every finished run of the variant


def analyse(study: Study, tolerance: float) -> dict[str, VariantResult]:
    """Every variant's results, in grid order."""
    finished = study.frame[study.frame.finished]
    totals = finished.groupby("variant", sort=False).agg({k: [how, "count"] for k, how in AGGREGATES.items()})
    out = {}
    for variant in study.variants():
        per_lr = study.per_lr(variant)
        if study.lr_key:
            best = stats.best_lr(per_lr)
            at_best = [x for x in per_lr.get(best, []) if x is not None]
        else:  # every run of the variant is one sample: there is no LR to choose
            best, at_best = None, [x for x in study.losses(variant) if x is not None]
        spread, seeds, values = variant_sensitivity(study, variant)
        aggregates = {k: aggregate(totals, variant, k) for k in AGGREGATES}
        stable = stats.largest_stable_lr(per_lr, tolerance) if study.lr_key else None
        out[variant] = VariantResult(best, stable, stats.seed_spread(at_best), spread, seeds, values, aggregates)
    return out


def aggregate(totals: pd.DataFrame, variant: str, key: str) -> float | None:
    """One aggregate from `analyse`'s table; None where no finished run recorded the field."""
    if variant not in totals.index or not totals.loc[variant, (key, "count")]:
        return None
    return float(totals.loc[variant, (key, AGGREGATES[key])])


def variant_sensitivity(study: Study, variant: str) -> tuple[stats.Spread | None, list[Any], list[float]]:
    """LR sensitivity of one variant: per seed over the whole LR grid, then mean ± spread over those seeds."""
    if not study.lr_key:
        return None, [], []
    per_seed: dict[Any, dict[float, float | None]] = {}
    inits: dict[Any, list[float]] = {}
    frame = study.frame[study.frame.in_val_stats & (study.frame.variant == variant)]
    for row in frame.itertuples():
        per_seed.setdefault(row.seed, {})[float(row.lr)] = None if row.diverged else float(row.loss)
        if not math.isnan(row.init):
            inits.setdefault(row.seed, []).append(row.init)
    init_by_seed = {seed: sum(values) / len(values) for seed, values in inits.items()}
    return stats.sensitivity_over_seeds(per_seed, init_by_seed, study.lrs)
