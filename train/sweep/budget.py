"""A study's time budget: the arithmetic `normgpt sweep --dry_run` prints, from the sweep file's `budget:` mapping.

    budget:
      seconds_per_run: 23.2         # one run alone, launch to exit (measured; --seconds_per_run overrides it)
      device_seconds_per_run: 3.2   # of which the shared device is busy (default: all of it)
      runs_per_gpu: 10              # K, the runs at once per GPU the study is designed for (--runs_per_gpu wins)
      early_stop_share: 0.08        # share of the runs expected to stop within a few steps: no device time
      idle: 0.1                     # allowance on the device's busy time for moments every slot is in its fixed part
      prepare_seconds: 15           # preparing the data, once
      limit_minutes: 8              # what the study must fit
      device: one H100/H200         # what the seconds were measured or assumed on

The model. A run is a fixed part (process start, imports, data, the final export: host work that overlaps between
runs) and a device part (training and evaluation, which runs sharing a device take turns at). K runs at once per GPU
(or K runs sharing the CPU cores, each with its share of the threads) give K x GPUs slots; the study then takes

    prepare + max(device-bound, slot-bound)
    device-bound = (runs - early stops) x device seconds x (1 + idle) / devices      (early stops: share x runs)
    slot-bound   = ceil(runs / slots) x seconds per run

the larger of what the devices must compute and what the slots must go through one run after another. Without a
device share (device seconds = seconds per run) K changes nothing: the conservative reading for a machine whose
every core a single run already keeps busy. It is an estimate: the first run of a study on its machine replaces each
number with a measurement (ablate_runs.jsonl's `seconds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


class BudgetError(ValueError):
    """A bad `budget:` mapping; the message is one line."""


@dataclass(frozen=True)
class Budget:
    seconds_per_run: float | None = None
    device_seconds_per_run: float | None = None  # None: all of seconds_per_run
    runs_per_gpu: int = 1
    early_stop_share: float = 0.0
    idle: float = 0.0
    prepare_seconds: float = 0.0
    limit_minutes: float | None = None
    device: str | None = None

    @classmethod
    def from_mapping(cls, raw: Any) -> Budget:
        """The sweep file's `budget:` (None: no budget declared). Raises BudgetError."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise BudgetError(f"'budget' must be a mapping of {', '.join(KEYS)} to numbers")
        values = {}
        for key, value in raw.items():
            if key not in KEYS:
                raise BudgetError(f"unknown budget key '{key}'; valid: {', '.join(KEYS)}")
            if key == "device":
                if not isinstance(value, str) or not value.strip():
                    raise BudgetError(f"budget.device must be text (what the seconds are for), got {value!r}")
                values[key] = value
                continue
            if key == "early_stop_share" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise BudgetError(f"budget.early_stop_share must be a share between 0 and 1, got {value!r}")
            integer = key == "runs_per_gpu"
            kinds = (int,) if integer else (int, float)
            least = 1 if key == "runs_per_gpu" else 0
            positive = key in ("seconds_per_run", "device_seconds_per_run", "limit_minutes")
            if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
                raise BudgetError(f"budget.{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
            if value < least or (positive and value <= 0):
                raise BudgetError(f"budget.{key} must be {'> 0' if positive else f'>= {least}'}, got {value!r}")
            values[key] = value
        budget = cls(**values)
        if budget.device_seconds_per_run is not None and budget.seconds_per_run is not None:
            if budget.device_seconds_per_run > budget.seconds_per_run:
                raise BudgetError("budget.device_seconds_per_run must not exceed budget.seconds_per_run")
        return budget

    def record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


KEYS = tuple(f.name for f in fields(Budget))


@dataclass(frozen=True)
class Estimate:
    runs: int
    early_stops: int
    slots: int
    devices: int
    device_bound: float
    slot_bound: float
    prepare: float

    @property
    def seconds(self) -> float:
        return self.prepare + max(self.device_bound, self.slot_bound)


def estimate(budget: Budget, runs: int, runs_per_gpu: int, gpus: int, seconds_per_run: float) -> Estimate:
    """The study's wall time by the model above, for `runs` runs, K = `runs_per_gpu` and `gpus` GPUs (0: the CPU)."""
    devices = max(1, gpus)
    device = budget.device_seconds_per_run if budget.device_seconds_per_run is not None else seconds_per_run
    device = min(device, seconds_per_run)  # a --seconds_per_run below the file's device share caps it
    slots = runs_per_gpu * devices
    early = round(budget.early_stop_share * runs)
    busy = (runs - early) * device * (1 + budget.idle) / devices
    return Estimate(
        runs, early, slots, devices, busy, math.ceil(runs / slots) * seconds_per_run, budget.prepare_seconds
    )


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s = {seconds / 60:.1f} minutes"


def lines(
    budget: Budget, runs: int, total: int, runs_per_gpu: int, k_source: str, gpus: int, seconds: float
) -> list[str]:
    """What --dry_run prints: the inputs, the bounds, the estimate against the limit, and one run at a time."""
    est = estimate(budget, runs, runs_per_gpu, gpus, seconds)
    device = min(seconds, budget.device_seconds_per_run if budget.device_seconds_per_run is not None else seconds)
    where = f"{gpus} GPU(s) here" if gpus else "no GPU here (on the CPU, runs at once share its cores)"
    target = f"; the seconds are for {budget.device}" if budget.device else ""
    out = [
        f"  {runs} runs to launch (of {total}); K = {runs_per_gpu} ({k_source}); {where}: {est.slots} slot(s){target}"
    ]
    if device < seconds:
        out += [
            f"  a run alone: {seconds:g} s, of which {device:g} s on the device; {est.early_stops} of the runs "
            f"expected to stop early ({budget.early_stop_share:.0%}: no device time); idle allowance {budget.idle:.0%}",
            f"  device-bound: ({runs} - {est.early_stops}) x {device:g} s x {1 + budget.idle:g} / {est.devices} "
            f"= {est.device_bound:.1f} s; slot-bound: ceil({runs} / {est.slots}) x {seconds:g} s "
            f"= {est.slot_bound:.1f} s",
        ]
    else:
        share = "" if runs_per_gpu == 1 else " (no budget.device_seconds_per_run: runs at once gain nothing here)"
        out.append(f"  {runs} runs x {seconds:g} s = {max(est.device_bound, est.slot_bound):.0f} s{share}")
    verdict = ""
    if budget.limit_minutes is not None:
        fits = est.seconds <= budget.limit_minutes * 60
        verdict = f" (limit {budget.limit_minutes:g} minutes: {'fits' if fits else 'OVER the limit'})"
    prepare = f"{budget.prepare_seconds:g} s to prepare the data + {max(est.device_bound, est.slot_bound):.1f} s = "
    out.append(f"  estimate: {prepare if budget.prepare_seconds else ''}{minutes(est.seconds)}{verdict}")
    if runs_per_gpu > 1:
        out.append(f"  one run at a time (K = 1): {minutes(estimate(budget, runs, 1, gpus, seconds).seconds)}")
    return out
