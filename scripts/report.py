"""Summarize an ablation sweep directory: `summary.csv`, `report.md` and figures in `figures/`.

    python scripts/report.py runs/cpu_study                  # DIR as written by scripts/ablate.py
    python scripts/report.py runs/cpu_study --tolerance 0.05 # stable-LR tolerance in nats

DIR holds `runs/<name>/` run directories (each with `metrics.jsonl`, `run_config.yaml` and, once finished,
`summary.json`) and, when made by ablate.py, `sweep.yaml` (the grid). Any subset of the grid may be present: missing,
failed, running and diverged runs are listed, and statistics use the finished runs only.

Definitions (stated again in report.md):
  * variant: the grid fields other than learning_rate and seed (e.g. norm, norm_placement).
  * seed spread: with 3 or more seeds, mean ± sample standard deviation over seeds; with 2 seeds, mean ± half the
    min–max range; with 1 seed there is no spread and nothing is ranked.
  * two variants are ranked only if their mean ± spread intervals do not overlap; otherwise they are "not
    distinguishable at this seed count".
  * LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    instabilities"): E over the LR grid of [min(final_loss(lr), loss_at_init) − min over LRs of final_loss],
    computed per seed (diverged runs count as loss_at_init), then mean ± spread over seeds.
  * largest stable LR: the largest LR whose runs did not diverge for any seed and whose mean final loss is within
    `--tolerance` nats of the best LR's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python scripts/report.py` from a clone
    sys.path.insert(0, str(REPO_ROOT))

from train.metrics import available_cores, cpu_model  # noqa: E402

LR_FIELD = "learning_rate"
SEED_FIELD = "seed"
DEFAULT_TOLERANCE = 0.1  # nats of final validation loss
# Resolved-config fields that differ between runs without being part of what was compared.
BOOKKEEPING = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "run_name", "cache_dir", "report_to"}
SUMMARY_COLUMNS = (
    "status",
    "steps",
    "max_steps",
    "init_val_loss",
    "final_val_loss",
    "best_val_loss",
    "final_train_loss",
    "diverged",
    "diverged_step",
    "spike_count",
    "max_grad_norm",
    "max_attn_logit",
    "tokens_per_sec",
    "wall_time",
    "num_parameters",
)
# Keys of summary.json's `model` section that say how the norms were set up, and where to find them otherwise.
NORM_SETTINGS = (
    ("norm", "norm_type"),
    ("placement", "norm_placement"),
    ("eps", "rms_norm_eps"),
    ("qk_norm", "qk_norm"),
    ("z_loss", "z_loss"),
)


class ReportError(ValueError):
    """A missing or unusable sweep directory; the message is one line."""


# --------------------------------------------------------------------------------------------------------------------
# The math: small pure functions on plain numbers, tested on constructed inputs in tests/test_report.py.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """A mean over seeds and its uncertainty `pm` (None with a single seed); `kind` says what `pm` is."""

    mean: float
    pm: float | None
    n: int

    @property
    def kind(self) -> str:
        if self.n >= 3:
            return "std"
        return "half-range" if self.n == 2 else "single seed"

    def text(self, digits: int = 3) -> str:
        if self.pm is None:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {self.pm:.{digits}f}"


def seed_spread(values: Sequence[float]) -> Spread | None:
    """Mean ± spread over seeds: sample std (n >= 3), half the min–max range (n = 2), none (n = 1)."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Spread(mean, None, 1)
    if len(values) == 2:
        return Spread(mean, (max(values) - min(values)) / 2, 2)
    return Spread(mean, statistics.stdev(values), len(values))


def spread_meaning(spreads: Sequence[Spread | None]) -> str:
    """One phrase saying what ± means for these spreads (they may have different seed counts)."""
    ns = sorted({s.n for s in spreads if s is not None})
    if not ns:
        return "no finished seeds"
    parts = []
    if any(n >= 3 for n in ns):
        parts.append("sample std over seeds")
    if 2 in ns:
        parts.append("half the min–max range over 2 seeds")
    if 1 in ns:
        parts.append("no ± where there is a single seed")
    return "± = " + "; ".join(parts)


def distinguishable(a: Spread, b: Spread) -> bool | None:
    """True if the mean ± spread intervals do not overlap, False if they do, None if either has a single seed."""
    if a.pm is None or b.pm is None:
        return None
    return abs(a.mean - b.mean) > a.pm + b.pm


def compare(label_a: str, a: Spread, label_b: str, b: Spread, quantity: str, digits: int = 3, context: str = "") -> str:
    """One sentence comparing two variants on a lower-is-better quantity, refusing to rank within the seed spread."""
    ns = (f"{a.n} seed" + ("s" if a.n > 1 else "")) if a.n == b.n else f"{a.n} vs {b.n} seeds"
    values = f"{a.text(digits)} vs {b.text(digits)} over {ns}"
    where = f" ({context})" if context else ""
    head = f"{label_a} vs {label_b}{where}: {quantity} {values} ({spread_meaning([a, b])})"
    verdict = distinguishable(a, b)
    if verdict is None:
        return f"{head}: not ranked (a single seed gives no spread estimate)."
    if not verdict:
        return f"{head}: not distinguishable at this seed count."
    lower = label_a if a.mean < b.mean else label_b
    return f"{head}: {lower} is lower by {abs(a.mean - b.mean):.{digits}f}, more than the seed spread."


def ranking(stats: Mapping[str, Spread]) -> list[tuple[str, str]]:
    """Pairs (better, worse) whose difference exceeds the seed spread, best-first; every other pair is unranked."""
    items = sorted(stats.items(), key=lambda kv: kv[1].mean)
    pairs = []
    for i, (la, a) in enumerate(items):
        for lb, b in items[i + 1 :]:
            if distinguishable(a, b):
                pairs.append((la, lb))
    return pairs


def uniformly_worse(sensitivity: Mapping[str, Spread], best_loss: Mapping[str, Spread]) -> list[tuple[str, str]]:
    """Pairs (a, b) where a is distinguishably less LR-sensitive than b but has a distinguishably worse best loss:
    its low sensitivity comes from being bad everywhere, not from robustness."""
    return [
        (a, b)
        for a, b in ranking(sensitivity)
        if a in best_loss and b in best_loss and (b, a) in ranking({a: best_loss[a], b: best_loss[b]})
    ]


def _failed(loss: float | None) -> bool:
    return loss is None or not math.isfinite(loss)


def lr_sensitivity(final_losses: Mapping[float, float | None], init_loss: float) -> float:
    """Wortsman et al. 2023, one seed: mean over the LR grid of min(final_loss(lr), init_loss) − min_lr final_loss.

    `final_losses` maps every LR of the grid to the final loss, None (or NaN/inf) for a diverged run, which counts as
    `init_loss`. The minimum is taken over the clipped losses, so the result is >= 0 even when no LR got below
    `init_loss`."""
    if not final_losses:
        raise ValueError("lr_sensitivity needs at least one learning rate")
    clipped = [init_loss if _failed(v) else min(v, init_loss) for v in final_losses.values()]
    return statistics.fmean(clipped) - min(clipped)


def sensitivity_over_seeds(
    per_seed: Mapping[Any, Mapping[float, float | None]], init_by_seed: Mapping[Any, float], lrs: Sequence[float]
) -> tuple[Spread | None, list[Any]]:
    """LR sensitivity per seed (only seeds with a result at every LR of `lrs`), then mean ± spread over seeds.
    Returns the spread and the seeds used."""
    values, used = [], []
    for seed, by_lr in sorted(per_seed.items(), key=lambda kv: str(kv[0])):
        if seed not in init_by_seed or any(lr not in by_lr for lr in lrs):
            continue
        values.append(lr_sensitivity({lr: by_lr[lr] for lr in lrs}, init_by_seed[seed]))
        used.append(seed)
    return seed_spread(values), used


def _stable_means(per_lr: Mapping[float, Sequence[float | None]]) -> dict[float, float]:
    """Mean final loss of every LR that has runs and where no run diverged (None/NaN/inf = diverged)."""
    return {lr: statistics.fmean(v) for lr, v in per_lr.items() if v and not any(_failed(x) for x in v)}


def best_lr(per_lr: Mapping[float, Sequence[float | None]]) -> float | None:
    """The LR with the lowest mean final loss among LRs where no seed diverged (the smaller LR on a tie)."""
    means = _stable_means(per_lr)
    return min(means, key=lambda lr: (means[lr], lr)) if means else None


def largest_stable_lr(per_lr: Mapping[float, Sequence[float | None]], tolerance: float) -> float | None:
    """The largest LR whose runs did not diverge for any seed and whose mean final loss is within `tolerance` of the
    best (lowest) such mean; None if every LR diverged for some seed."""
    means = _stable_means(per_lr)
    if not means:
        return None
    best = min(means.values())
    return max(lr for lr, m in means.items() if m <= best + tolerance)


def band(curves: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Align (step, value) curves on step: (steps, mean, min, max) over the curves that have each step; non-finite
    values are dropped."""
    at: dict[float, list[float]] = {}
    for curve in curves:
        for x, y in curve:
            if y is not None and math.isfinite(y):
                at.setdefault(x, []).append(y)
    xs = sorted(at)
    return xs, [statistics.fmean(at[x]) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs]


# --------------------------------------------------------------------------------------------------------------------
# Reading a sweep directory
# --------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a half-written last line (a run still writing) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _flat_config(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return {}
    flat: dict[str, Any] = {}
    for section in (raw or {}).values() if isinstance(raw, dict) else ():
        if isinstance(section, dict):
            flat.update(section)
    return flat


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class RunRecord:
    name: str
    path: Path
    grid: dict[str, Any]
    summary: dict | None
    config: dict[str, Any]
    error: bool = False  # ablate.py recorded a failed launch (ablate_error.log)
    _metrics: list[dict] | None = field(default=None, repr=False)

    @property
    def metrics(self) -> list[dict]:
        if self._metrics is None:
            self._metrics = read_jsonl(self.path / "metrics.jsonl")
        return self._metrics

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def status(self) -> str:
        if self.summary is not None:
            if self.summary.get("status") in ("completed", "diverged"):
                return self.summary["status"]
            return "diverged" if self.summary.get("diverged") else "completed"
        if not self.path.is_dir():
            return "missing"
        return "failed" if self.error else "incomplete"

    def _val_rows(self) -> list[dict]:
        return [r for r in self.metrics if _num(r.get("val_loss")) is not None]

    def _train_rows(self) -> list[dict]:
        return [r for r in self.metrics if "loss" in r and "val_loss" not in r]

    def value(self, key: str) -> Any:
        """A summary.json value, or the same quantity derived from metrics.jsonl when the summary lacks it."""
        s = self.summary or {}
        if s.get(key) is not None:
            return s[key]
        val = self._val_rows()
        train = self._train_rows()
        if key == "init_val_loss":
            at0 = [r["val_loss"] for r in val if r.get("step") == 0]
            return at0[0] if at0 else None
        if key == "final_val_loss":
            return val[-1]["val_loss"] if val and self.finished and not self.diverged_flag() else None
        if key == "best_val_loss":
            finite = [r["val_loss"] for r in val if math.isfinite(r["val_loss"])]
            return min(finite) if finite else None
        if key == "final_train_loss":
            return train[-1]["loss"] if train else None
        if key == "max_grad_norm":
            norms = [_num(r.get("grad_norm")) for r in train]
            norms = [n for n in norms if n is not None and math.isfinite(n)]
            return max(norms) if norms else None
        if key == "max_attn_logit":
            logits = [max(r["attn_logit_max"]) for r in train if r.get("attn_logit_max")]
            return max(logits) if logits else None
        if key == "spike_count":
            counts = [r["spike_count"] for r in train if r.get("spike_count") is not None]
            return counts[-1] if counts else None
        if key == "steps":
            return max((r.get("step", 0) for r in self.metrics), default=None)
        if key == "max_steps":
            return self.config.get("max_steps")
        if key == "tokens_per_sec":
            tps = [_num(r.get("tokens_per_sec")) for r in train]
            tps = [t for t in tps if t is not None]
            return statistics.fmean(tps) if tps else None
        if key == "wall_time":
            elapsed = [_num(r.get("elapsed")) for r in self.metrics]
            elapsed = [e for e in elapsed if e is not None]
            return max(elapsed) if elapsed else None
        if key == "diverged":
            return self.diverged_flag() if self.finished else None
        if key == "diverged_step":
            rows = [r for r in self.metrics if r.get("diverged")]
            return rows[-1]["step"] if rows else None
        if key == "status":
            return self.status
        return None

    def diverged_flag(self) -> bool:
        s = self.summary or {}
        if s.get("diverged") or s.get("status") == "diverged":
            return True
        return any(r.get("diverged") for r in self.metrics)

    @property
    def diverged(self) -> bool:
        """Finished runs only: flagged by the trainer, or no finite final validation loss."""
        return self.diverged_flag() or _failed(_num(self.value("final_val_loss")))

    @property
    def final_loss(self) -> float | None:
        """Final validation loss of a finished run that did not diverge; None otherwise."""
        if not self.finished or self.diverged:
            return None
        return _num(self.value("final_val_loss"))

    def model_setting(self, key: str) -> Any:
        model = (self.summary or {}).get("model") or {}
        if key in model:
            return model[key]
        return self.config.get(key)


def fmt_value(value: Any) -> str:
    """A YAML scalar as the trainer's command line spells it (true/false, repr of floats); also names runs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass
class Study:
    out_dir: Path
    sweep: dict | None
    grid_keys: list[str]
    fields: dict[str, str]  # grid key -> trainer config field
    runs: list[RunRecord]
    ignored: list[str]  # run directories not in sweep.yaml

    @property
    def lr_key(self) -> str | None:
        return next((k for k in self.grid_keys if self.fields.get(k, k) == LR_FIELD), None)

    @property
    def seed_key(self) -> str | None:
        return next((k for k in self.grid_keys if self.fields.get(k, k) == SEED_FIELD), None)

    @property
    def variant_keys(self) -> list[str]:
        return [k for k in self.grid_keys if k not in (self.lr_key, self.seed_key)]

    def grid_values(self, key: str) -> list[Any]:
        grid = (self.sweep or {}).get("grid") or {}
        if key in grid:
            return list(grid[key])
        seen: list[Any] = []
        for run in self.runs:
            if key in run.grid and run.grid[key] not in seen:
                seen.append(run.grid[key])
        return seen

    @property
    def lrs(self) -> list[float]:
        return sorted(float(v) for v in self.grid_values(self.lr_key)) if self.lr_key else []

    def variants(self) -> list[str]:
        """Variant labels in grid order (all combinations present among the runs)."""
        seen: list[str] = []
        for run in self.runs:
            label = self.variant(run)
            if label not in seen:
                seen.append(label)
        return seen

    def variant(self, run: RunRecord) -> str:
        if not self.variant_keys:
            return "all runs"
        return ", ".join(f"{k}={fmt_value(run.grid.get(k))}" for k in self.variant_keys)

    def variant_values(self, label: str) -> dict[str, Any]:
        run = next(r for r in self.runs if self.variant(r) == label)
        return {k: run.grid.get(k) for k in self.variant_keys}

    def lr(self, run: RunRecord) -> float | None:
        return float(run.grid[self.lr_key]) if self.lr_key and self.lr_key in run.grid else None

    def seed(self, run: RunRecord) -> Any:
        return run.grid.get(self.seed_key) if self.seed_key else 0

    def finished(self, variant: str | None = None) -> list[RunRecord]:
        return [r for r in self.runs if r.finished and (variant is None or self.variant(r) == variant)]

    def per_lr(self, variant: str) -> dict[float, list[float | None]]:
        """LR -> final losses of the finished seeds (None = diverged)."""
        out: dict[float, list[float | None]] = {}
        for run in self.finished(variant):
            out.setdefault(self.lr(run), []).append(run.final_loss)
        return out


def comparison_pairs(study: Study, names: Sequence[str]) -> list[tuple[str, str, str, str, str]]:
    """(variant a, variant b, label a, label b, context) to compare: every pair when there is one variant field,
    else the pairs that differ in exactly one field, labelled by that field and the fields held fixed."""
    keys = study.variant_keys
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = study.variant_values(a), study.variant_values(b)
            differ = [k for k in keys if va.get(k) != vb.get(k)]
            if len(keys) <= 1:
                out.append((a, b, a, b, ""))
            elif len(differ) == 1:
                k = differ[0]
                fixed = ", ".join(f"{f}={fmt_value(va.get(f))}" for f in keys if f != k)
                out.append((a, b, f"{k}={fmt_value(va[k])}", f"{k}={fmt_value(vb[k])}", fixed))
    return out


def load_study(out_dir: Path) -> Study:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ReportError(f"'{out_dir}' is not a directory")
    sweep = None
    sweep_path = out_dir / "sweep.yaml"
    if sweep_path.is_file():
        try:
            sweep = yaml.safe_load(sweep_path.read_text())
        except yaml.YAMLError:
            raise ReportError(f"'{sweep_path}' is not valid YAML") from None
        if not isinstance(sweep, dict):
            raise ReportError(f"'{sweep_path}' is not a mapping")
    runs_dir = out_dir / "runs"
    present = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []

    def record(name: str, path: Path, grid: dict) -> RunRecord:
        summary = None
        if (path / "summary.json").is_file():
            try:
                summary = json.loads((path / "summary.json").read_text())
            except json.JSONDecodeError:
                summary = None
        return RunRecord(
            name, path, grid, summary, _flat_config(path / "run_config.yaml"), (path / "ablate_error.log").is_file()
        )

    if sweep is not None and sweep.get("runs"):
        grid_keys = list((sweep.get("grid") or {}).keys())
        fields = {k: v for k, v in (sweep.get("fields") or {}).items()}
        runs = [record(r["name"], runs_dir / r["name"], dict(r.get("grid") or {})) for r in sweep["runs"]]
        listed = {r.name for r in runs}
        ignored = [p.name for p in present if p.name not in listed]
    else:
        # No sweep.yaml: every run directory counts, and the grid is whatever differs between their configs.
        runs = [record(p.name, p, {}) for p in present]
        keys: list[str] = []
        for run in runs:
            keys += [k for k in run.config if k not in keys and k not in BOOKKEEPING]
        grid_keys = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
        for run in runs:
            run.grid = {k: run.config.get(k) for k in grid_keys}
        fields = {k: k for k in grid_keys}
        ignored = []
    if not runs:
        raise ReportError(f"no runs in '{out_dir}' (expected run directories under '{runs_dir}')")
    return Study(out_dir, sweep, grid_keys, fields, runs, ignored)


SeedSensitivity = tuple[Spread | None, list, list[float]]  # (mean ± spread, seeds used, per-seed values)


def study_sensitivity(study: Study) -> dict[str, SeedSensitivity]:
    """LR sensitivity of every variant: per seed over the whole LR grid, then mean ± spread over those seeds."""
    out: dict[str, SeedSensitivity] = {}
    if not study.lr_key:
        return out
    for v in study.variants():
        per_seed: dict[Any, dict[float, float | None]] = {}
        init_by_seed: dict[Any, list[float]] = {}
        for r in study.finished(v):
            per_seed.setdefault(study.seed(r), {})[study.lr(r)] = r.final_loss
            init = _num(r.value("init_val_loss"))
            if init is not None:
                init_by_seed.setdefault(study.seed(r), []).append(init)
        inits = {k: statistics.fmean(x) for k, x in init_by_seed.items()}
        spread, used = sensitivity_over_seeds(per_seed, inits, study.lrs)
        values = [lr_sensitivity({lr: per_seed[sd][lr] for lr in study.lrs}, inits[sd]) for sd in used]
        out[v] = (spread, used, values)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_summary_csv(study: Study, path: Path) -> None:
    header = ["run", *study.grid_keys, "variant", *SUMMARY_COLUMNS]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for run in study.runs:
            row = [run.name, *(run.grid.get(k) for k in study.grid_keys), study.variant(run)]
            for col in SUMMARY_COLUMNS:
                if col == "status":
                    row.append(run.status)
                elif col == "diverged":
                    row.append(run.diverged if run.finished else None)
                else:
                    row.append(run.value(col))
            writer.writerow([_csv_value(v) for v in row])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _plt()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _colors(study: Study) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(study.variants())}


def _curve(run: RunRecord, key: str, x: str = "step", reduce=None) -> list[tuple[float, float]]:
    out = []
    for r in run.metrics:
        if "val_loss" in r and key != "val_loss":
            continue
        if key not in r or x not in r:
            continue
        y = r[key]
        if reduce is not None:
            y = reduce(y) if y else None
        y = _num(y)
        if y is not None and math.isfinite(y):
            out.append((float(r[x]), y))
    return out


def _loss_ylim(ax, runs: Sequence[RunRecord]) -> None:
    """Keep blow-ups from squashing the plot: top at the highest loss at init (+ margin)."""
    inits = [_num(r.value("init_val_loss")) for r in runs]
    inits = [v for v in inits if v is not None and math.isfinite(v)]
    if inits:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, max(inits) * 1.1))


def _best_lr_runs(study: Study) -> dict[str, tuple[float | None, list[RunRecord]]]:
    """Per variant: its best LR and the finished runs at that LR (all finished runs when there is no LR axis)."""
    out = {}
    for variant in study.variants():
        runs = study.finished(variant)
        lr = best_lr(study.per_lr(variant)) if study.lr_key else None
        if study.lr_key:
            runs = [r for r in runs if study.lr(r) == lr]
        if runs:
            out[variant] = (lr, runs)
    return out


def fig_loss_curves(study: Study, path: Path) -> str | None:
    """Training loss (mean over seeds, min–max band) against steps and wall-clock, each variant at its best LR."""
    chosen = _best_lr_runs(study)
    if not chosen or not any(_curve(r, "loss") for _, runs in chosen.values() for r in runs):
        return None
    plt = _plt()
    colors = _colors(study)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    for variant, (lr, runs) in chosen.items():
        label = variant + (f" (lr={lr:g})" if lr is not None else "") + f", {len(runs)} seed(s)"
        xs, mean, lo, hi = band([_curve(r, "loss") for r in runs])
        if not xs:
            continue
        axes[0].plot(xs, mean, color=colors[variant], label=label, lw=1.3)
        axes[0].fill_between(xs, lo, hi, color=colors[variant], alpha=0.2, lw=0)
        # Wall-clock: mean elapsed time at each logged step, against the same mean loss.
        ex, emean, _, _ = band([_curve(r, "elapsed") for r in runs])
        at = dict(zip(ex, emean, strict=True))
        pts = [(at[x], m, a, b) for x, m, a, b in zip(xs, mean, lo, hi, strict=True) if x in at]
        if pts:
            t, m, a, b = zip(*pts, strict=True)
            axes[1].plot(t, m, color=colors[variant], lw=1.3)
            axes[1].fill_between(t, a, b, color=colors[variant], alpha=0.2, lw=0)
        vx, vmean, _, _ = band([_curve(r, "val_loss") for r in runs])
        axes[0].plot(vx, vmean, "o", color=colors[variant], ms=4)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("wall-clock training time (s)")
    axes[0].set_ylabel("training loss (nats/token); dots: validation")
    for ax in axes:
        ax.grid(alpha=0.3)
    _loss_ylim(axes[0], [r for _, runs in chosen.values() for r in runs])
    axes[0].legend(fontsize=8)
    fig.suptitle("Loss at each variant's best learning rate (mean over seeds, band: min–max)", fontsize=10)
    _save(fig, path)
    return path.name


def fig_per_lr(study: Study, path: Path, key: str, ylabel: str, title: str, log: bool = False, reduce=None):
    """One panel per learning rate: `key` against steps per variant (mean over seeds, min–max band); x marks where a
    run diverged."""
    if not study.lr_key:
        return None
    finished = study.finished()
    if not any(_curve(r, key, reduce=reduce) for r in finished):
        return None
    plt = _plt()
    colors = _colors(study)
    lrs = [lr for lr in study.lrs if any(study.lr(r) == lr for r in finished)]
    ncols = min(4, len(lrs))
    nrows = math.ceil(len(lrs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), dpi=100, sharey=True, squeeze=False)
    for ax, lr in zip(axes.flat, lrs, strict=False):
        for variant in study.variants():
            runs = [r for r in finished if study.variant(r) == variant and study.lr(r) == lr]
            xs, mean, lo, hi = band([_curve(r, key, reduce=reduce) for r in runs])
            if not xs:
                continue
            ax.plot(xs, mean, color=colors[variant], lw=1.2, label=variant)
            ax.fill_between(xs, lo, hi, color=colors[variant], alpha=0.2, lw=0)
            for r in runs:
                if r.diverged:
                    step = r.value("diverged_step") or (r.value("steps") or xs[-1])
                    ax.plot([step], [mean[-1]], "x", color=colors[variant], ms=8, mew=2)
        ax.set_title(f"lr = {lr:g}", fontsize=9)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(lrs) :]:
        ax.axis("off")
    if key == "loss":
        _loss_ylim(axes[0][0], finished)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:  # the first panel may have no finished runs; any panel with a curve gives the legend
        for ax in axes.flat:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(title + " (mean over seeds, band: min–max, x: diverged)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 / nrows + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    _save(fig, path)
    return path.name


def fig_final_vs_lr(study: Study, path: Path) -> str | None:
    """Final validation loss against LR per variant: mean ± seed spread; diverged runs as x at the init loss."""
    if not study.lr_key or not study.finished():
        return None
    plt = _plt()
    colors = _colors(study)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    inits = [_num(r.value("init_val_loss")) for r in study.finished()]
    inits = [v for v in inits if v is not None]
    top = max(inits) if inits else None
    for i, variant in enumerate(study.variants()):
        per_lr = study.per_lr(variant)
        shift = 1 + 0.04 * (i - (len(study.variants()) - 1) / 2)  # small horizontal dodge so error bars don't hide
        pts = []
        for lr in sorted(per_lr):
            ok = [v for v in per_lr[lr] if v is not None]
            s = seed_spread(ok)
            if s is not None:
                pts.append((lr * shift, s.mean, s.pm or 0.0))
            n_div = len(per_lr[lr]) - len(ok)
            if n_div and top is not None:
                ax.plot([lr * shift] * n_div, [top] * n_div, "x", color=colors[variant], ms=9, mew=2)
        if pts:
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(x, y, yerr=e, color=colors[variant], marker="o", ms=4, capsize=3, label=variant)
    if top is not None:
        ax.axhline(top, color="grey", ls="--", lw=0.8, label="loss at init (x: diverged)")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Final validation loss vs learning rate (mean ± seed spread)", fontsize=10)
    _save(fig, path)
    return path.name


def fig_sensitivity(sens: Mapping[str, SeedSensitivity], colors, path: Path) -> str | None:
    items = [(v, s, vals) for v, (s, _, vals) in sens.items() if s is not None]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(items) + 2), 4.2), dpi=110)
    for i, (variant, s, vals) in enumerate(items):
        ax.bar(i, s.mean, yerr=s.pm or 0.0, color=colors[variant], alpha=0.7, capsize=4)
        ax.plot([i] * len(vals), vals, "k.", ms=6)
    ax.set_xticks(range(len(items)), [v for v, _, _ in items], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("LR sensitivity (nats)")
    ax.set_title("Learning-rate sensitivity (Wortsman et al. 2023); dots: seeds, bars: mean ± spread", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return path.name


def fig_resid_depth(study: Study, path: Path) -> str | None:
    """RMS of the residual stream after each block at the last logged step, each variant at its best LR."""
    chosen = _best_lr_runs(study)
    plt = _plt()
    colors = _colors(study)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    drawn = False
    for variant, (lr, runs) in chosen.items():
        profiles = []
        for r in runs:
            rows = [row for row in r.metrics if row.get("resid_rms")]
            if rows:
                profiles.append([(i + 1, v) for i, v in enumerate(rows[-1]["resid_rms"])])
        xs, mean, lo, hi = band(profiles)
        if not xs:
            continue
        label = variant + (f" (lr={lr:g})" if lr is not None else "")
        ax.plot(xs, mean, "o-", color=colors[variant], label=label, ms=4)
        ax.fill_between(xs, lo, hi, color=colors[variant], alpha=0.2, lw=0)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("residual-stream RMS after the block")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Residual-stream RMS vs depth at the end of training (best LR; band: min–max over seeds)", fontsize=9)
    _save(fig, path)
    return path.name


# --------------------------------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 3) -> str:
    v = _num(value)
    if v is None:
        return "–"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}f}"


def _g(value: Any) -> str:
    v = _num(value)
    return "–" if v is None else f"{v:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def _count(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _local_hardware() -> str:
    return f"{cpu_model()}, {available_cores()} CPU cores available"


def hardware_text(study: Study) -> str:
    for run in study.finished():
        s = run.summary or {}
        for key in ("hardware", "device_name", "device", "gpu_name", "cpu_name"):
            if s.get(key):
                value = s[key]
                return (json.dumps(value) if not isinstance(value, str) else value) + " (from the runs' summary.json)"
    hw = (study.sweep or {}).get("hardware")
    if isinstance(hw, dict) and hw:
        parts = [hw.get("cpu") or "unknown CPU"]
        if hw.get("cpu_cores"):
            parts.append(f"{hw['cpu_cores']} CPU cores available")
        if hw.get("gpus"):
            parts.append("GPUs: " + ", ".join(hw["gpus"]))
        else:
            parts.append("no GPU")
        if hw.get("torch"):
            parts.append(f"torch {hw['torch']}")
        return "; ".join(parts) + " (recorded by ablate.py on the machine that ran the sweep)"
    return _local_hardware() + " (read now, on the machine writing this report: the runs may have used another)"


def _variant_settings(study: Study, variant: str) -> dict[str, str]:
    runs = study.finished(variant) or [r for r in study.runs if study.variant(r) == variant]
    out = {}
    for label, key in NORM_SETTINGS:
        values = []
        for r in runs:
            v = r.model_setting(key)
            if v is not None and fmt_value(v) not in values:
                values.append(fmt_value(v))
        out[label] = " / ".join(values) if values else "not recorded"
    numerics = []
    for r in runs:
        n = ((r.summary or {}).get("model") or {}).get("norm_numerics")
        if n and n not in numerics:
            numerics.append(n)
    out["numerics"] = " / ".join(numerics) if numerics else "not recorded (no summary.json with model.norm_numerics)"
    params = {r.value("num_parameters") for r in runs if r.value("num_parameters")}
    out["params"] = ", ".join(f"{p / 1e6:.2f}M" for p in sorted(params)) if params else "–"
    return out


def build_report(
    study: Study, tolerance: float, figures: dict[str, str | None], sens: Mapping[str, SeedSensitivity]
) -> str:
    variants = study.variants()
    finished = study.finished()
    counts: dict[str, int] = {}
    for run in study.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    seeds = study.grid_values(study.seed_key) if study.seed_key else [None]
    lrs = study.lrs
    lines = [f"# Ablation report: {study.out_dir.name}", ""]
    lines.append(
        f"Generated {datetime.now():%Y-%m-%d %H:%M} by `scripts/report.py` from `{study.out_dir}`. "
        f"{len(study.runs)} runs in the grid: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ". Statistics use finished runs only."
    )
    if (study.sweep or {}).get("description"):
        lines += ["", str(study.sweep["description"]).strip()]
    lines.append("")

    # --- variants and how their norms are set up -------------------------------------------------------------------
    lines += ["## Variants and their normalization setup", ""]
    lines.append(
        "A variant is one combination of the grid fields other than learning rate and seed. Norm type, placement, "
        "epsilon, QK-norm, z-loss and the numerics of the norm (where the float32 upcast happens) come from each "
        "run's `summary.json` (`model` section), else from its `run_config.yaml`."
    )
    lines.append("")
    settings = {v: _variant_settings(study, v) for v in variants}
    lines += _table(
        ["variant", "norm", "placement", "eps", "qk_norm", "z_loss", "params", "norm numerics (float32 upcast)"],
        [
            [v, s["norm"], s["placement"], s["eps"], s["qk_norm"], s["z_loss"], s["params"], s["numerics"]]
            for v, s in settings.items()
        ],
    )
    lines.append("")

    # --- headline results ----------------------------------------------------------------------------------------
    lines += ["## Results", ""]
    best_stats: dict[str, Spread] = {}
    best_lrs: dict[str, float | None] = {}
    stable: dict[str, float | None] = {}
    for v in variants:
        per_lr = study.per_lr(v)
        if study.lr_key:
            best_lrs[v] = best_lr(per_lr)
            stable[v] = largest_stable_lr(per_lr, tolerance)
            at_best = [x for x in per_lr.get(best_lrs[v], []) if x is not None] if best_lrs[v] is not None else []
        else:
            at_best = [r.final_loss for r in study.finished(v) if r.final_loss is not None]
        s = seed_spread(at_best)
        if s is not None:
            best_stats[v] = s
    if not finished:
        lines += ["No run has finished yet (no `summary.json`): nothing to compare.", ""]
    else:
        header = ["variant", "best LR", "final val loss at best LR", "seeds"]
        if study.lr_key:
            header += [f"largest stable LR (±{tolerance:g} nats)", "LR sensitivity", "seeds w/ full LR grid"]
        header += ["spikes (total)", "max grad norm", "max attn logit"]
        rows = []
        for v in variants:
            s = best_stats.get(v)
            runs_v = study.finished(v)
            row = [v, _g(best_lrs.get(v)) if study.lr_key else "–", s.text() if s else "–", s.n if s else 0]
            if study.lr_key:
                sp, used, _ = sens.get(v, (None, [], []))
                row += [_g(stable.get(v)) if stable.get(v) else "none", sp.text() if sp else "–", len(used)]
            spikes = [_num(r.value("spike_count")) for r in runs_v]
            grads = [_num(r.value("max_grad_norm")) for r in runs_v]
            logits = [_num(r.value("max_attn_logit")) for r in runs_v]
            row += [
                _g(sum(x for x in spikes if x is not None)) if any(x is not None for x in spikes) else "–",
                _f(max((x for x in grads if x is not None), default=None), 2),
                _f(max((x for x in logits if x is not None), default=None), 2),
            ]
            rows.append(row)
        lines += _table(header, rows)
        lines.append("")
        meaning = spread_meaning(list(best_stats.values()))
        lines.append(
            f"{meaning}. Best LR: lowest mean final validation loss among LRs where no seed diverged. "
            "Largest stable LR: the largest LR where no seed diverged and the mean final loss is within "
            f"{tolerance:g} nats of the best LR's. LR sensitivity is measured from each variant's own best loss, so "
            "a variant that trains equally badly at every LR scores low: read it next to the final loss. Spikes, max "
            "grad norm and max attention logit are over all of a variant's finished runs (every LR)."
        )
        lines.append("")

        # --- comparisons with uncertainty ----------------------------------------------------------------------
        lines += ["### Comparisons", ""]
        lines.append(
            "Each comparison gives both means with their seed spread. Two variants are ranked only when their "
            "mean ± spread intervals do not overlap; otherwise they are *not distinguishable at this seed count*. "
            "With several variant fields, each line changes one field and holds the others (in brackets); the "
            "orderings below cover every pair."
        )
        lines.append("")
        quantity = "final val loss at its best LR" if study.lr_key else "final val loss"
        sens_stats = {v: s for v, (s, _, _) in sens.items() if s is not None}
        for stats, what in ((best_stats, quantity), (sens_stats, "LR sensitivity")):
            pairs = comparison_pairs(study, list(stats))
            if not pairs and stats is best_stats:
                lines.append("Fewer than two variants have finished runs: nothing to compare.")
            for a, b, label_a, label_b, context in pairs:
                lines.append("- " + compare(label_a, stats[a], label_b, stats[b], what, context=context))
        lines.append("")
        for title, stats in (("final loss", best_stats), ("LR sensitivity", sens_stats)):
            if len(stats) < 2:
                continue
            pairs = ranking(stats)
            if pairs:
                text = "; ".join(f"{a} < {b}" for a, b in pairs)
                lines.append(f"Resolved orderings ({title}, lower is better): {text}. All other pairs: not ranked.")
            else:
                lines.append(f"Ranking by {title}: no pair of variants is distinguishable at this seed count.")
        for a, b in uniformly_worse(sens_stats, best_stats):
            lines.append(
                f"Caveat: {a} has the lower LR sensitivity but the distinguishably higher best loss than {b}: it is "
                "uniformly worse across the LR grid, not more robust to the learning rate."
            )
        lines.append("")

        # --- per-LR table ---------------------------------------------------------------------------------------
        if study.lr_key:
            lines += ["### Final validation loss per learning rate", ""]
            rows, cells = [], []
            for lr in lrs:
                row = [_g(lr)]
                for v in variants:
                    vals = study.per_lr(v).get(lr)
                    if not vals:
                        row.append("not run")
                        continue
                    ok = [x for x in vals if x is not None]
                    s = seed_spread(ok)
                    cells.append(s)
                    cell = s.text() if s else ""
                    if len(ok) < len(vals):
                        cell = (cell + " " if cell else "") + f"(diverged {len(vals) - len(ok)}/{len(vals)})"
                    row.append(cell)
                rows.append(row)
            lines += _table(["LR", *variants], rows)
            lines += ["", f"{spread_meaning(cells)} (diverged runs excluded from the mean).", ""]

    # --- figures ---------------------------------------------------------------------------------------------------
    lines += ["## Figures", ""]
    captions = {
        "loss_curves": "Training loss per variant at its best LR, against optimizer steps and wall-clock time "
        "(mean over seeds, min–max band; dots: validation). Best LR rather than one panel per LR here because that "
        "is the tuned comparison a reader wants first; the next figure has every LR.",
        "loss_per_lr": "Training loss, one panel per learning rate: where instability starts.",
        "final_loss_vs_lr": "Final validation loss against learning rate (log x), mean ± seed spread; x marks "
        "diverged runs, drawn at the loss at initialization.",
        "lr_sensitivity": "LR sensitivity per variant (Wortsman et al. 2023), mean ± spread over seeds; dots are "
        "single seeds.",
        "grad_norm_per_lr": "Total gradient norm (before clipping), one panel per learning rate (log y).",
        "attn_logit_per_lr": "Largest pre-softmax attention logit (max over layers), one panel per learning rate "
        "(log y); Wortsman et al. (2023) tie its growth to attention-logit divergence.",
        "resid_rms_depth": "Residual-stream RMS after each block at the end of training, at each variant's best LR.",
    }
    lr_figures = ("loss_per_lr", "final_loss_vs_lr", "lr_sensitivity", "grad_norm_per_lr", "attn_logit_per_lr")
    if not study.lr_key:
        lines += ["The grid has no learning_rate axis: the per-LR figures and LR sensitivity do not apply.", ""]
    for key, caption in captions.items():
        name = figures.get(key)
        if name:
            lines += [f"![{key}](figures/{name})", "", f"*{caption}*", ""]
        elif study.lr_key or key not in lr_figures:
            lines += [f"- *{key}*: not drawn (no data for it in the finished runs).", ""]

    # --- runs table ------------------------------------------------------------------------------------------------
    lines += ["## Runs", ""]
    rows = []
    for r in study.runs:
        rows.append(
            [
                r.name,
                r.status,
                _g(r.value("steps")),
                _f(r.value("init_val_loss")),
                _f(r.value("final_val_loss")) if r.finished else "–",
                _f(r.value("best_val_loss")),
                _g(r.value("spike_count")),
                _f(r.value("max_grad_norm"), 2),
                _f(r.value("max_attn_logit"), 2),
                _g(round(_num(r.value("tokens_per_sec")) or 0)) if r.value("tokens_per_sec") else "–",
                _duration(_num(r.value("wall_time"))),
            ]
        )
    lines += _table(
        [
            "run",
            "status",
            "steps",
            "init val",
            "final val",
            "best val",
            "spikes",
            "max grad norm",
            "max attn logit",
            "tok/s",
            "wall",
        ],
        rows,
    )
    lines.append("")
    failed = [r for r in study.runs if r.status == "failed"]
    if failed:
        lines.append("Failed runs (see `ablate_error.log` in each): " + ", ".join(f"`{r.name}`" for r in failed) + ".")
        lines.append("")
    if study.ignored:
        lines.append(
            f"Ignored {len(study.ignored)} run directories that are not in sweep.yaml: "
            + ", ".join(f"`{n}`" for n in study.ignored[:10])
            + (" ..." if len(study.ignored) > 10 else "")
        )
        lines.append("")

    # --- sweep definition, hardware, time --------------------------------------------------------------------------
    lines += ["## Sweep definition", ""]
    if study.sweep:
        shown = {k: study.sweep[k] for k in ("base", "overrides", "grid", "exclude") if study.sweep.get(k)}
        lines += ["```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", ""]
        if study.sweep.get("sweep_file"):
            lines += [f"From `{study.sweep['sweep_file']}`, resolved into `sweep.yaml`.", ""]
    else:
        lines += [
            "No sweep.yaml: the grid was inferred from the fields that differ between the runs' run_config.yaml: "
            + (", ".join(study.grid_keys) or "none")
            + ".",
            "",
        ]
    lines += ["## Hardware and time", ""]
    walls = [_num(r.value("wall_time")) for r in finished]
    walls = [w for w in walls if w is not None]
    lines.append(f"- Hardware: {hardware_text(study)}.")
    lines.append(
        f"- Total wall time of the finished runs (sum of summary.json `wall_time`): {_duration(sum(walls))} over "
        f"{len(walls)} runs" + (f" (per run {_duration(min(walls))} to {_duration(max(walls))})." if walls else ".")
    )
    launches = read_jsonl(study.out_dir / "ablate_runs.jsonl")
    if launches:
        total = sum(_num(x.get("seconds")) or 0 for x in launches)
        lines.append(
            f"- Launch-to-exit time of the {len(launches)} launches ablate.py made (process start, data loading, "
            f"evaluation and saving included): {_duration(total)}."
        )
    lines.append("")

    # --- what this does and does not show ----------------------------------------------------------------------------
    lines += ["## What this does and does not show", ""]
    lines += what_it_shows(study, finished, best_stats, seeds, lrs)
    lines.append("")
    return "\n".join(lines)


def what_it_shows(study: Study, finished, best_stats, seeds, lrs) -> list[str]:
    out = []
    params = sorted({int(p) for r in finished if (p := _num(r.value("num_parameters")))})
    steps = sorted({int(s) for r in finished if (s := _num(r.value("max_steps") or r.value("steps")))})
    tokens = [
        max((row.get("tokens", 0) for row in r.metrics), default=0) for r in finished if not r.diverged and r.metrics
    ]
    size = ", ".join(_count(p) for p in params) if params else "unknown-size"
    n_seeds = len([s for s in seeds if s is not None]) or 1
    scale = f"{size}-parameter models trained for {', '.join(map(str, steps)) or '?'} steps"
    if tokens:
        scale += f" (about {_count(max(tokens))} training tokens per run)"
    out.append(
        f"- Scale: {scale}, {n_seeds} seed(s) per setting"
        + (f", {len(lrs)} learning rates from {min(lrs):g} to {max(lrs):g}." if lrs else ".")
    )
    out.append(
        "- These are small-scale proxies in the sense of Wortsman et al. (2023): they show which variants train "
        "stably over which learning-rate range at this size and how sensitive the final loss is to the learning "
        "rate. They are not measurements of large models or of long training."
        + (
            " After this few steps the final losses mostly reflect early-training speed, not what each variant "
            "would converge to."
            if steps and max(steps) < 2000
            else ""
        )
    )
    ns = sorted({s.n for s in best_stats.values()})
    if ns == [1] or not ns:
        out.append(
            "- With a single seed per setting there is no estimate of seed-to-seed variation, so no variant is "
            "ranked above another."
        )
    else:
        out.append(
            f"- With {'/'.join(map(str, ns))} seeds the spread estimate is itself rough: differences smaller than "
            "it are reported as not distinguishable, and a resolved difference at this seed count is a hint, not a "
            "significance test."
        )
    if study.lr_key:
        out.append(
            "- The best LR is chosen on the same runs its loss is reported for, which slightly favours variants "
            "with noisier results; the LR grid is coarse, so a variant's true optimum may lie between grid points."
        )
    diverged = [r for r in finished if r.diverged]
    if diverged:
        out.append(
            f"- {len(diverged)} of {len(finished)} finished runs diverged; they enter LR sensitivity at the loss at "
            "initialization and are excluded from the loss means."
        )
    missing = [r for r in study.runs if not r.finished]
    if missing:
        out.append(
            f"- {len(missing)} of {len(study.runs)} runs of the grid have no result yet (missing, running or failed): "
            "the statistics above cover only the finished ones, and LR sensitivity only seeds with the whole LR grid."
        )
    out.append(
        "- Wall-clock and tokens/s are specific to the hardware above (and to whatever else ran on it); on CPU they "
        "say nothing about GPU kernels such as the fused Triton RMSNorm."
    )
    return out


def write_report(out_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> Study:
    study = load_study(Path(out_dir))
    fig_dir = study.out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    write_summary_csv(study, study.out_dir / "summary.csv")
    figures: dict[str, str | None] = {
        "loss_curves": fig_loss_curves(study, fig_dir / "loss_curves.png"),
        "loss_per_lr": fig_per_lr(
            study, fig_dir / "loss_per_lr.png", "loss", "training loss (nats/token)", "Training loss per learning rate"
        ),
        "final_loss_vs_lr": fig_final_vs_lr(study, fig_dir / "final_loss_vs_lr.png"),
        "grad_norm_per_lr": fig_per_lr(
            study,
            fig_dir / "grad_norm_per_lr.png",
            "grad_norm",
            "grad norm (before clipping)",
            "Gradient norm per learning rate",
            log=True,
        ),
        "attn_logit_per_lr": fig_per_lr(
            study,
            fig_dir / "attn_logit_per_lr.png",
            "attn_logit_max",
            "max attention logit",
            "Largest attention logit (max over layers) per learning rate",
            log=True,
            reduce=max,
        ),
        "resid_rms_depth": fig_resid_depth(study, fig_dir / "resid_rms_depth.png"),
    }
    sens = study_sensitivity(study)
    figures["lr_sensitivity"] = fig_sensitivity(sens, _colors(study), fig_dir / "lr_sensitivity.png")
    # Drop figures left from an earlier report that this one did not draw, so report.md and figures/ agree.
    drawn = {name for name in figures.values() if name}
    for stale in fig_dir.glob("*.png"):
        if stale.name not in drawn:
            stale.unlink()
    (study.out_dir / "report.md").write_text(build_report(study, tolerance, figures, sens))
    return study


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write summary.csv, report.md and figures/ for a sweep directory.")
    parser.add_argument("dir", help="sweep output directory (holds runs/<name>/ and sweep.yaml)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest stable LR: mean final loss within this many nats of the best LR's (default {DEFAULT_TOLERANCE})",
    )
    args = parser.parse_args(argv)
    try:
        study = write_report(Path(args.dir), args.tolerance)
    except ReportError as err:
        print(f"report.py: error: {err}", file=sys.stderr)
        return 2
    done = len(study.finished())
    print(f"report: {done}/{len(study.runs)} runs finished; wrote {study.out_dir / 'report.md'}, summary.csv, figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
