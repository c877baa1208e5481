"""A sweep file -> a validated `Sweep`: every run resolved through the trainer's own parser before anything runs.

The format (base, overrides, grid, exclude, description, findings) is documented in scripts/ablate.py; `findings`
in train/sweep/findings.py. Keys of `overrides` and
`grid` are the trainer's flags without `--`, exactly as on its command line (aliases such as `norm` included). Every
way a sweep file can be wrong is a `SweepError` with one line.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from train.arguments import shown
from train.config import (
    DEFAULT_CONFIG,
    REPO_ROOT,
    SECTIONS,
    ConfigError,
    RunConfig,
    model_field,
    parse_args,
    read_yaml_mapping,
)
from train.hardware import hardware
from train.run_directory import flat_config
from train.sweep import findings
from train.sweep.budget import Budget, BudgetError
from train.sweep.directory import BOOKKEEPING, LR_FIELD, SEED_FIELD, RecordedRun, SweepRecord, fmt_value

SWEEP_KEYS = ("base", "overrides", "grid", "exclude", "description", "findings", "budget")
MAX_RUNS = 10_000  # a sweep with more runs is refused (a typo in a grid can ask for millions) unless --max_runs says
# Flags the sweep sets itself for every run, and why a sweep file may not.
CONTROLLED = {
    "output_dir": "ablate.py sets it to DIR/runs/<name>",
    "overwrite_output_dir": "ablate.py decides how each run starts",
    "resume_from_checkpoint": "ablate.py resumes interrupted runs itself",
    "config": "use the top-level 'base' key",
    "help": "not a training setting",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")


class SweepError(ValueError):
    """A bad sweep file, or a run directory that does not belong to this sweep; the message is one line."""


def invalid(path: Path, message: str) -> SweepError:
    return SweepError(f"sweep '{path}': {message}")


@dataclass(frozen=True)
class Flag:
    dest: str  # the config field
    section: str  # model, data or training
    takes_value: bool  # False for the `no_<field>` switches


def trainer_flags() -> dict[str, Flag]:
    """Every flag of the trainer's parser (without `--`) -> its field. The parser is `HfArgumentParser` over the
    dataclasses of `train.config.SECTIONS`: a field is `--name` and `--dashed-name`, plus the `aliases` of its
    metadata, and a bool field that defaults to True also gets the switch `--no_name`."""
    flags = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = Flag(f.name, section, True)
            aliases = [a.removeprefix("--") for a in f.metadata.get("aliases", [])]
            flags |= dict.fromkeys([f.name, f.name.replace("_", "-"), *aliases], flag)
            if f.default is True and hints[f.name] in (bool, bool | None):
                switch = Flag(f.name, section, False)
                flags |= dict.fromkeys([f"no_{f.name}", f"no-{f.name.replace('_', '-')}"], switch)
    return flags


def run_name(grid: dict[str, Any]) -> str:
    """`key=value,...` in grid order from the typed values (so 3e-4 and 0.0003 name the same run), with anything
    outside [A-Za-z0-9._+=,-] replaced by `_`."""
    return _UNSAFE.sub("_", ",".join(f"{key}={fmt_value(value)}" for key, value in grid.items()))


@dataclass
class RunSpec:
    """One run of a sweep, as the trainer will see it."""

    name: str
    grid: dict[str, Any]  # grid key -> typed value, in grid order
    args: list[str]  # trainer arguments without --output_dir and resume flags
    resolved: RunConfig  # what the trainer's parser made of `args`

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config, flat, as run_config.yaml will hold it."""
        return flat_config(self.resolved.to_yaml_dict())

    @property
    def max_steps(self) -> int:
        return self.resolved.training.max_steps


@dataclass
class Sweep:
    path: Path
    base: Path
    base_given: str
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    exclude: list[dict[str, Any]]
    description: str | None
    fields: dict[str, str]  # sweep key -> config field
    runs: list[RunSpec] = field(default_factory=list)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # finding -> role -> selector (and tolerance)
    budget: Budget = field(default_factory=Budget)  # train/sweep/budget.py: what --dry_run's arithmetic reads

    def record(self) -> SweepRecord:
        """What sweep.yaml records of this sweep, with this machine's hardware."""
        return SweepRecord(
            grid=self.grid,
            runs=[RecordedRun(r.name, r.grid) for r in self.runs],
            fields=self.fields,
            sweep_file=str(self.path),
            description=self.description,
            base=self.base_given,
            base_resolved=str(self.base),
            overrides=self.overrides,
            exclude=self.exclude,
            hardware=hardware(),
            written=datetime.now().isoformat(timespec="seconds"),
            extra={k: v for k, v in (("findings", self.findings), ("budget", self.budget.record())) if v},
        )


def is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def load_sweep(path: Path, flags: dict[str, Flag] | None = None, max_runs: int = MAX_RUNS) -> Sweep:
    """Read and validate a sweep file, and resolve every run through the trainer's own parser (so a bad value, or a
    combination the model rejects, fails here with the trainer's message, before anything runs). A sweep of more
    than `max_runs` runs is refused before any is resolved."""
    path = Path(path)
    try:
        raw = read_yaml_mapping(path, "sweep file", SWEEP_KEYS)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise invalid(path, f"unknown top-level key '{unknown[0]}'; valid: {', '.join(SWEEP_KEYS)}")
    flags = trainer_flags() if flags is None else flags
    base_given = raw.get("base", str(DEFAULT_CONFIG.relative_to(REPO_ROOT)))
    overrides = check_overrides(path, raw.get("overrides") or {}, flags)
    grid = check_grid(path, raw.get("grid"), flags)
    check_one_key_per_field(path, [*grid, *overrides], flags)
    exclude = check_exclude(path, raw.get("exclude") or [], grid)
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid(path, "'description' must be text")
    sweep = Sweep(
        path=path,
        base=resolve_base(path, base_given),
        base_given=str(base_given),
        overrides=dict(overrides),
        grid={k: list(v) for k, v in grid.items()},
        exclude=exclude,
        description=description,
        fields={k: flags[k].dest for k in [*grid, *overrides]},
    )
    check_size(sweep, max_runs)
    sweep.runs = expand(sweep, flags)
    sweep.findings = check_findings(sweep, raw.get("findings"))
    try:
        sweep.budget = Budget.from_mapping(raw.get("budget"))
    except BudgetError as err:
        raise invalid(path, str(err)) from None
    return sweep


def select_seeds(sweep: Sweep, seeds: list[str]) -> None:
    """Keep only the runs of the given seeds (as the grid spells them): a pilot of the study, run into the study's
    directory, whose sweep.yaml then lists those runs only (the full study rewrites it). Raises SweepError."""
    key = next((k for k in sweep.grid if sweep.fields[k] == SEED_FIELD), None)
    if key is None:
        raise invalid(sweep.path, "--seeds needs a seed axis in the grid")
    spelled = {fmt_value(v): v for v in sweep.grid[key]}
    unknown = [s for s in seeds if s not in spelled]
    if unknown:
        raise invalid(sweep.path, f"--seeds {unknown[0]} is not among grid.{key} ({', '.join(spelled)})")
    sweep.runs = [run for run in sweep.runs if fmt_value(run.grid[key]) in seeds]
    sweep.grid[key] = [spelled[s] for s in spelled if s in seeds]


def resolve_base(path: Path, given: Any) -> Path:
    if not isinstance(given, str) or not given:
        raise invalid(path, "'base' must be a path to a training config")
    for candidate in (Path(given), REPO_ROOT / given):
        if candidate.is_file():
            return candidate.resolve()
    raise invalid(path, f"base config '{given}' does not exist")


def check_keys(path: Path, where: str, keys: Iterable[Any], flags: dict[str, Flag]) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise invalid(path, f"{where} key {shown(key)} is not a flag name")
        if key in CONTROLLED:
            raise invalid(path, f"{where} key '{key}' is not allowed ({CONTROLLED[key]})")
        if key not in flags:
            raise invalid(path, f"{where} key '{key}' is not a training flag (see python train/train.py --help)")
        if not flags[key].takes_value:
            raise invalid(path, f"{where} key '{key}' is a switch; set '{flags[key].dest}: true' or false instead")


def check_value(path: Path, where: str, value: Any) -> None:
    if not is_scalar(value):
        raise invalid(path, f"{where} holds {shown(value)}; values must be single values")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(path, f"{where} holds {value!r}; numbers must be finite")


def check_overrides(path: Path, overrides: Any, flags: dict[str, Flag]) -> dict[str, Any]:
    if not isinstance(overrides, dict):
        raise invalid(path, "'overrides' must be a mapping of flag: value")
    check_keys(path, "overrides", overrides, flags)
    for key, value in overrides.items():
        check_value(path, f"overrides.{key}", value)
    return overrides


def check_grid(path: Path, grid: Any, flags: dict[str, Flag]) -> dict[str, list[Any]]:
    if not isinstance(grid, dict) or not grid:
        raise invalid(path, "'grid' must be a non-empty mapping of flag: [values]")
    check_keys(path, "grid", grid, flags)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise invalid(path, f"grid.{key} must be a non-empty list of values, got {shown(values)}")
        for value in values:
            check_value(path, f"grid.{key}", value)
        if len({fmt_value(v) for v in values}) < len(values):
            raise invalid(path, f"grid.{key} lists a value twice")
    return grid


def check_one_key_per_field(path: Path, keys: list[str], flags: dict[str, Flag]) -> None:
    """Two spellings of one field (`norm` and `norm_type`) in one sweep would make the runs ambiguous."""
    seen: dict[str, str] = {}
    for key in keys:
        dest = flags[key].dest
        if dest in seen:
            raise invalid(path, f"'{key}' sets {dest}, which '{seen[dest]}' already sets")
        seen[dest] = key


def check_exclude(path: Path, exclude: Any, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise invalid(path, "'exclude' must be a list of {grid key: value} mappings")
    for entry in exclude:
        for key, value in entry.items():
            if key not in grid:
                raise invalid(path, f"exclude names '{key}', which is not a grid key")
            if fmt_value(value) not in {fmt_value(v) for v in grid[key]}:
                raise invalid(path, f"exclude {key}={shown(value)} is not among grid.{key}")
    return exclude


def excluded(sweep: Sweep, values: dict[str, Any]) -> bool:
    return any(all(fmt_value(values[k]) == fmt_value(v) for k, v in e.items()) for e in sweep.exclude)


def resolve(sweep: Sweep, values: dict[str, Any], flags: dict[str, Flag]) -> RunSpec:
    """One grid point through the trainer's parser, launched with the values as the trainer understood them (so
    commands, names and logs show one spelling)."""
    overrides = [a for k, v in sweep.overrides.items() for a in (f"--{k}", fmt_value(v))]
    label = ",".join(f"{k}={fmt_value(v)}" for k, v in values.items())
    try:
        resolved = parse_args(["--config", str(sweep.base), *overrides, *grid_args(values)])
    except ConfigError as err:
        raise invalid(sweep.path, f"run {label}: {err}") from None
    typed = {k: getattr(getattr(resolved, flags[k].section), flags[k].dest) for k in [*values, *sweep.overrides]}
    for key, value in typed.items():  # the parser reads the text 'inf' as a number
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid(sweep.path, f"run {label}: {key} is {value!r}; numbers must be finite")
    typed = {k: typed[k] for k in values}
    args = ["--config", str(sweep.base), *overrides, *grid_args(typed)]
    return RunSpec(run_name(typed), typed, args, resolved)


def check_size(sweep: Sweep, max_runs: int) -> None:
    """Refuse a sweep of more than `max_runs` runs, counting its grid points (after exclude) only as far as the cap,
    so that a grid of a million points is refused at once rather than resolved run by run."""
    points = math.prod(len(values) for values in sweep.grid.values())
    if points <= max_runs:
        return
    keys = list(sweep.grid)
    combos = (dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.grid.values()))
    kept = sum(1 for _ in itertools.islice((c for c in combos if not excluded(sweep, c)), max_runs + 1))
    if kept > max_runs:
        raise invalid(
            sweep.path,
            f"the grid has {points:,} points, more than the {max_runs:,} runs a sweep may launch; shrink it, or raise "
            "--max_runs",
        )


def grid_args(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k}", fmt_value(v))]


def expand(sweep: Sweep, flags: dict[str, Flag]) -> list[RunSpec]:
    """Every run of the grid, minus the excluded ones. The seed varies slowest, so a sweep cut short has covered the
    whole grid with its first seed(s)."""
    keys = list(sweep.grid)
    order = sorted(keys, key=lambda k: flags[k].dest != SEED_FIELD)
    runs: list[RunSpec] = []
    labels: dict[str, str] = {}
    for combo in itertools.product(*(sweep.grid[k] for k in order)):
        values = {k: combo[order.index(k)] for k in keys}
        if excluded(sweep, values):
            continue
        run = resolve(sweep, values, flags)
        label = ",".join(f"{k}={fmt_value(v)}" for k, v in values.items())
        if run.name in labels:
            raise invalid(sweep.path, f"runs {labels[run.name]} and {label} get the same name '{run.name}'")
        labels[run.name] = label
        runs.append(run)
    if not runs:
        raise invalid(sweep.path, "'exclude' removes every run of the grid")
    # From here on the sweep speaks in typed values (3e-4 written as a string in YAML 1.1 becomes 0.0003).
    sweep.grid = {k: list(dict.fromkeys(run.grid[k] for run in runs)) for k in keys}
    return runs


MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(SECTIONS["model"]))


def effective_settings(run: RunSpec) -> dict[str, Any]:
    """The run's flat config, with each model field the sweep leaves to the model's default as the model sets it."""
    model = run.resolved.model_config()
    return {k: model_field(model, k) if v is None and k in MODEL_FIELDS else v for k, v in run.config.items()}


def check_findings(sweep: Sweep, raw: Any) -> dict[str, dict[str, Any]]:
    """The `findings:` declaration, checked against the grid, then against the settings of each role's variant."""
    variant_keys = [k for k in sweep.grid if sweep.fields[k] not in (LR_FIELD, SEED_FIELD)]
    lr_axis = any(sweep.fields[k] == LR_FIELD for k in sweep.grid)
    try:
        declared = findings.check_declaration(raw, sweep.grid, variant_keys, [r.grid for r in sweep.runs], lr_axis)
        settings = {
            key: {
                role: effective_settings(next(r for r in sweep.runs if findings.matches(selector, r.grid)))
                for role, selector in findings.role_selectors(roles).items()
            }
            for key, roles in declared.items()
        }
        findings.check_settings(settings, BOOKKEEPING | {LR_FIELD, SEED_FIELD})
    except findings.FindingsError as err:
        raise invalid(sweep.path, str(err)) from None
    return declared
