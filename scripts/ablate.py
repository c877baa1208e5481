"""Run an ablation sweep: a grid of training runs through the training entry point, then the report.

    python scripts/ablate.py configs/ablations/cpu_study.yaml --output_dir runs/cpu_study
    python scripts/ablate.py SWEEP.yaml --output_dir DIR --dry_run      # validate and print the commands only

A sweep file names a base training config, overrides applied to every run, and a grid whose cartesian product is
the set of runs (keys are the trainer's flags without `--`, exactly as on its command line, `norm` included):

    base: configs/tiny.yaml                 # any training config (default: the trainer's default preset)
    overrides: {max_steps: 300}             # every run
    grid:                                   # one run per combination
      norm: [rms, layer]
      learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]
      seed: [0, 1]
    exclude:                                # optional: drop the combinations matching any of these
      - {norm: layer, learning_rate: 1.0e-2}
    description: one paragraph for the report   # optional

Every run is `accelerate launch --num_processes 1 train/train.py --config BASE <overrides> <grid values>
--output_dir DIR/runs/<name>`, named from its grid values (`norm=rms,learning_rate=0.003,seed=0`); mixed precision
and the rest come from your accelerate config (or `--accelerate_config FILE`). With several GPUs one run goes to each
GPU at a time (the first alone until its data is prepared, so the token cache is built once); otherwise runs go one
after another. All runs of the first seed come first, so an interrupted sweep already covers the whole grid once.

Output, in DIR: `sweep.yaml` (the resolved sweep, written first), `runs/<name>/` (the run, its stdout/stderr in
`train.log`, and `ablate_error.log` with the end of stderr if it failed), `ablate_runs.jsonl` (one row per launch),
then summary.csv, report.md and figures/ from scripts/report.py.

Running the same command again resumes: runs with a summary.json are skipped, a run with a checkpoint but no summary
continues with `--resume_from_checkpoint latest`, and a run with neither starts over (ablate.py clears the trainer's
files itself, keeping its own logs, rather than passing --overwrite_output_dir: the trainer would delete the
directory, train.log included, while this script writes into it). A finished or resumable run whose run_config.yaml
disagrees with the sweep is an error, not silently reused. Failed runs are listed at the end and make the exit code
1; bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

SCRIPTS = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import report  # noqa: E402

from train import checkpoints as ckpt  # noqa: E402
from train.config import (  # noqa: E402
    DEFAULT_CONFIG,
    SECTIONS,
    ConfigError,
    build_parser,
    parse_args,
    read_yaml_mapping,
)
from train.metrics import available_cores, cpu_model  # noqa: E402

TRAIN = REPO_ROOT / "train" / "train.py"
SWEEP_KEYS = ("base", "overrides", "grid", "exclude", "description")
# Flags ablate.py sets itself for every run.
CONTROLLED = {
    "output_dir": "ablate.py sets it to DIR/runs/<name>",
    "overwrite_output_dir": "ablate.py decides how each run starts",
    "resume_from_checkpoint": "ablate.py resumes interrupted runs itself",
    "config": "use the top-level 'base' key",
    "help": "not a training setting",
}
# Resolved-config fields allowed to differ between a run on disk and the sweep that finds it.
BOOKKEEPING = report.BOOKKEEPING
# What the trainer writes into a run directory, removed before a run starts over; ablate.py's own files stay.
OWN_FILES = ("train.log", "ablate_error.log")
STDERR_TAIL_BYTES = 64 * 1024
POLL_SECONDS = 1.0


class SweepError(ValueError):
    """A bad sweep file, or a run directory that does not belong to this sweep; the message is one line."""


@dataclass(frozen=True)
class Flag:
    dest: str  # the config field
    section: str  # model, data or training
    takes_value: bool


@dataclass
class Run:
    name: str
    grid: dict[str, Any]  # grid key -> typed value, in grid order
    args: list[str]  # trainer arguments without --output_dir and resume flags
    config: dict[str, Any]  # the resolved config, flat
    max_steps: int


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
    runs: list[Run] = field(default_factory=list)


def trainer_flags() -> dict[str, Flag]:
    """Every flag of the trainer's parser (without `--`, aliases and dashed spellings included) -> its field."""
    section_of = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    flags = {}
    for action in build_parser()._actions:  # argparse has no public accessor for its actions
        for option in action.option_strings:
            if option.startswith("--"):
                flags[option[2:]] = Flag(action.dest, section_of.get(action.dest, ""), action.nargs != 0)
    return flags


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")


def run_name(grid: dict[str, Any]) -> str:
    """`key=value,...` in grid order from the typed values (so 3e-4 and 0.0003 name the same run), with anything
    outside [A-Za-z0-9._+=,-] replaced by `_`."""
    name = ",".join(f"{key}={report.fmt_value(value)}" for key, value in grid.items())
    return _UNSAFE.sub("_", name)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _resolve_base(given: Any, sweep_path: Path) -> Path:
    if not isinstance(given, str) or not given:
        raise SweepError(f"sweep '{sweep_path}': 'base' must be a path to a training config")
    for candidate in (Path(given), REPO_ROOT / given):
        if candidate.is_file():
            return candidate.resolve()
    raise SweepError(f"sweep '{sweep_path}': base config '{given}' does not exist")


def _check_keys(where: str, keys, flags: dict[str, Flag], sweep_path: Path) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise SweepError(f"sweep '{sweep_path}': {where} key {key!r} is not a flag name")
        if key in CONTROLLED:
            raise SweepError(f"sweep '{sweep_path}': {where} key '{key}' is not allowed ({CONTROLLED[key]})")
        if key not in flags:
            raise SweepError(
                f"sweep '{sweep_path}': {where} key '{key}' is not a training flag (see python train/train.py --help)"
            )
        if not flags[key].takes_value:
            raise SweepError(
                f"sweep '{sweep_path}': {where} key '{key}' is a switch; set '{flags[key].dest}: true' or false instead"
            )


def _read_yaml(path: Path) -> dict:
    try:
        return read_yaml_mapping(path, "sweep file", SWEEP_KEYS)
    except ConfigError as err:
        raise SweepError(str(err)) from None


def load_sweep(path: Path, flags: dict[str, Flag] | None = None) -> Sweep:
    """Read and validate a sweep file, and resolve every run through the trainer's own parser (so a bad value, or a
    combination the model rejects, fails here with the trainer's message, before anything runs)."""
    path = Path(path)
    raw = _read_yaml(path)
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"sweep '{path}': unknown top-level key '{unknown[0]}'; valid: {', '.join(SWEEP_KEYS)}")
    flags = trainer_flags() if flags is None else flags
    base_given = raw.get("base", str(DEFAULT_CONFIG.relative_to(REPO_ROOT)))
    base = _resolve_base(base_given, path)

    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"sweep '{path}': 'overrides' must be a mapping of flag: value")
    _check_keys("overrides", overrides, flags, path)
    for key, value in overrides.items():
        if not _is_scalar(value):
            raise SweepError(f"sweep '{path}': overrides.{key} must be a single value, got {value!r}")

    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"sweep '{path}': 'grid' must be a non-empty mapping of flag: [values]")
    _check_keys("grid", grid, flags, path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep '{path}': grid.{key} must be a non-empty list of values, got {values!r}")
        bad = [v for v in values if not _is_scalar(v)]
        if bad:
            raise SweepError(f"sweep '{path}': grid.{key} holds {bad[0]!r}; values must be single values")
        if len({report.fmt_value(v) for v in values}) < len(values):
            raise SweepError(f"sweep '{path}': grid.{key} lists a value twice")

    seen: dict[str, str] = {}
    for where, keys in (("grid", grid), ("overrides", overrides)):
        for key in keys:
            dest = flags[key].dest
            if dest in seen:
                raise SweepError(f"sweep '{path}': '{key}' ({where}) sets {dest}, which '{seen[dest]}' already sets")
            seen[dest] = f"{key}"

    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise SweepError(f"sweep '{path}': 'exclude' must be a list of {{grid key: value}} mappings")
    for entry in exclude:
        for key, value in entry.items():
            if key not in grid:
                raise SweepError(f"sweep '{path}': exclude names '{key}', which is not a grid key")
            if report.fmt_value(value) not in {report.fmt_value(v) for v in grid[key]}:
                raise SweepError(f"sweep '{path}': exclude {key}={value!r} is not among grid.{key}")

    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise SweepError(f"sweep '{path}': 'description' must be text")

    sweep = Sweep(
        path=path,
        base=base,
        base_given=str(base_given),
        overrides=dict(overrides),
        grid={k: list(v) for k, v in grid.items()},
        exclude=exclude,
        description=description,
        fields={k: flags[k].dest for k in [*grid, *overrides]},
    )
    sweep.runs = _expand(sweep, flags)
    return sweep


def _expand(sweep: Sweep, flags: dict[str, Flag]) -> list[Run]:
    keys = list(sweep.grid)
    # Seed varies slowest, so a sweep cut short has covered the whole grid with the first seed(s).
    order = sorted(keys, key=lambda k: flags[k].dest != "seed")
    override_args = [a for k, v in sweep.overrides.items() for a in (f"--{k}", report.fmt_value(v))]
    runs, names = [], {}
    typed_values: dict[str, list[Any]] = {k: [] for k in keys}
    for combo in itertools.product(*(sweep.grid[k] for k in order)):
        raw = {k: combo[order.index(k)] for k in keys}
        if any(all(report.fmt_value(raw[k]) == report.fmt_value(v) for k, v in e.items()) for e in sweep.exclude):
            continue
        grid_args = [a for k in keys for a in (f"--{k}", report.fmt_value(raw[k]))]
        args = ["--config", str(sweep.base), *override_args, *grid_args]
        label = ",".join(f"{k}={report.fmt_value(v)}" for k, v in raw.items())
        try:
            resolved = parse_args(args)
        except ConfigError as err:
            raise SweepError(f"sweep '{sweep.path}': run {label}: {err}") from None
        typed = {k: getattr(getattr(resolved, flags[k].section), flags[k].dest) for k in keys}
        # Launch with the values as the trainer understood them, so commands and logs show one spelling.
        args = [
            "--config",
            str(sweep.base),
            *override_args,
            *(a for k in keys for a in (f"--{k}", report.fmt_value(typed[k]))),
        ]
        for k in keys:
            if typed[k] not in typed_values[k]:
                typed_values[k].append(typed[k])
        name = run_name(typed)
        if name in names:
            raise SweepError(f"sweep '{sweep.path}': runs {names[name]} and {label} get the same name '{name}'")
        names[name] = label
        flat = {k: v for section in resolved.to_yaml_dict().values() for k, v in section.items()}
        runs.append(Run(name, typed, args, flat, resolved.training.max_steps))
    if not runs:
        raise SweepError(f"sweep '{sweep.path}': 'exclude' removes every run of the grid")
    # From here on the sweep speaks in typed values (3e-4 written as a string in YAML 1.1 becomes 0.0003).
    sweep.grid = {k: typed_values[k] for k in keys}
    return runs


# --------------------------------------------------------------------------------------------------------------------
# Run directories
# --------------------------------------------------------------------------------------------------------------------


def plan(run_dir: Path) -> str:
    """done: summary.json exists; resume: a checkpoint but no summary; fresh: neither."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if ckpt.list_checkpoints(run_dir):
        return "resume"
    return "fresh"


def config_mismatch(run: Run, run_dir: Path) -> str | None:
    """The first field where the run on disk differs from what the sweep asks for (fields both know only)."""
    recorded = report._flat_config(run_dir / "run_config.yaml")
    for key, wanted in run.config.items():
        if key in BOOKKEEPING or key not in recorded:
            continue
        if recorded[key] != wanted:
            return f"{key}={recorded[key]!r} on disk, {wanted!r} in this sweep"
    return None


def clear_for_restart(run_dir: Path) -> None:
    """Remove what an unfinished, checkpoint-less attempt left, keeping ablate.py's own log."""
    if not run_dir.is_dir():
        return
    for child in run_dir.iterdir():
        if child.name in OWN_FILES:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def gpu_slots() -> list[str | None]:
    """One slot per visible GPU when there are several (the CUDA_VISIBLE_DEVICES value for it), else one slot."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no usable CUDA: run on whatever the trainer picks, one run at a time
        count = 0
    if count <= 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    run: Run, run_dir: Path, action: str, slot: str | None, parallel: bool, accelerate_config: str | None = None
) -> list[str]:
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        launcher += ["--config_file", accelerate_config]
    launcher += ["--num_processes", "1", "--num_machines", "1"]
    if parallel:
        # Pin the GPU through CUDA_VISIBLE_DEVICES; 'all' keeps an accelerate config's gpu_ids from overriding it,
        # and a port of its own keeps concurrent launches from colliding if the config makes them torchrun.
        launcher += ["--gpu_ids", "all", "--main_process_port", str(_free_port())]
    cmd = [*launcher, "--quiet", str(TRAIN), *run.args, "--output_dir", str(run_dir.resolve())]
    if action == "resume":
        cmd += ["--resume_from_checkpoint", "latest"]
    return cmd


def current_step(run_dir: Path) -> int | None:
    """The step of the last complete row of the run's metrics.jsonl (read from the end of the file)."""
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read()
    except OSError:
        return None
    for line in reversed(data.splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def hardware() -> dict[str, Any]:
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
    except Exception:
        info["gpus"] = []
    return info


def write_sweep_yaml(sweep: Sweep, out_dir: Path) -> None:
    resolved = {
        "sweep_file": str(sweep.path),
        "description": sweep.description,
        "base": sweep.base_given,
        "base_resolved": str(sweep.base),
        "overrides": sweep.overrides,
        "grid": sweep.grid,
        "exclude": sweep.exclude or None,
        "fields": sweep.fields,
        "runs": [{"name": r.name, "grid": r.grid} for r in sweep.runs],
        "hardware": hardware(),
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    resolved = {k: v for k, v in resolved.items() if v is not None}
    tmp = out_dir / "sweep.yaml.tmp"
    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    os.replace(tmp, out_dir / "sweep.yaml")


# --------------------------------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Active:
    run: Run
    run_dir: Path
    action: str
    cmd: list[str]
    proc: subprocess.Popen
    log: Any
    pump: threading.Thread
    tail: bytearray
    started: float
    slot: str | None


@dataclass
class Outcome:
    run: Run
    status: str  # completed, diverged or failed
    exit_code: int
    seconds: float


def _pump(src, log, tail: bytearray) -> None:
    """Copy the child's stderr into train.log as it comes, keeping the last bytes for an error report."""
    for chunk in iter(lambda: src.read1(65536), b""):
        log.write(chunk)
        log.flush()
        tail.extend(chunk)
        del tail[:-STDERR_TAIL_BYTES]


def start(
    run: Run, run_dir: Path, action: str, slot: str | None, parallel: bool, accelerate_config: str | None
) -> Active:
    if action == "fresh":
        clear_for_restart(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ablate_error.log").unlink(missing_ok=True)
    cmd = launch_command(run, run_dir, action, slot, parallel, accelerate_config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    log = (run_dir / "train.log").open("ab")  # append: a resumed run keeps the log of its earlier attempts
    pin = f"CUDA_VISIBLE_DEVICES={slot} " if slot is not None else ""
    log.write(f"\n=== ablate.py {datetime.now():%Y-%m-%d %H:%M:%S} ({action}): {pin}{shlex.join(cmd)}\n".encode())
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, env=env, start_new_session=True)
    tail = bytearray()
    pump = threading.Thread(target=_pump, args=(proc.stderr, log, tail), daemon=True)
    pump.start()
    return Active(run, run_dir, action, cmd, proc, log, pump, tail, time.monotonic(), slot)


def _tail_lines(data: bytes, n: int = 40) -> list[str]:
    """The last n lines, with progress-bar redraws (carriage returns) reduced to their final state."""
    lines = []
    for line in data.decode("utf-8", "replace").split("\n"):
        line = line.split("\r")[-1].rstrip()
        if line:
            lines.append(line)
    return lines[-n:]


def finish(active: Active, out_dir: Path) -> Outcome:
    code = active.proc.wait()
    active.pump.join(timeout=30)
    seconds = time.monotonic() - active.started
    active.log.write(f"=== ablate.py: exit code {code} after {seconds:.1f} s\n".encode())
    active.log.close()
    summary = active.run_dir / "summary.json"
    status = "failed"  # a non-zero exit is a failure even after summary.json (e.g. a crash saving the model)
    if summary.is_file() and code == 0:
        try:
            data = json.loads(summary.read_text())
            status = "diverged" if data.get("diverged") or data.get("status") == "diverged" else "completed"
        except json.JSONDecodeError:
            status = "failed"
    if status == "failed":
        why = f"exit code {code}" if code else "exit code 0 but no summary.json"
        text = [f"command: {shlex.join(active.cmd)}", f"result: {why}", "--- end of stderr ---"]
        text += _tail_lines(bytes(active.tail))
        (active.run_dir / "ablate_error.log").write_text("\n".join(text) + "\n")
    row = {
        "name": active.run.name,
        "action": active.action,
        "slot": active.slot,
        "finished": datetime.now().isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "exit_code": code,
        "status": status,
    }
    with (out_dir / "ablate_runs.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    return Outcome(active.run, status, code, seconds)


def stop(active: Active, grace: float = 15.0) -> None:
    """Interrupt a run we started (its whole process group: the launcher and the trainer), then kill it."""
    try:
        os.killpg(active.proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        active.proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(active.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        active.proc.wait()
    active.pump.join(timeout=5)
    active.log.close()


def _data_ready(active: Active) -> bool:
    """The run got past data preparation (the token cache is built) or ended."""
    return active.proc.poll() is not None or (active.run_dir / "metrics.jsonl").is_file()


def execute(
    todo: list[tuple[Run, str]], out_dir: Path, total: int, done: int, accelerate_config: str | None = None
) -> list[Outcome]:
    from tqdm.auto import tqdm

    slots = gpu_slots()
    parallel = len(slots) > 1
    free = list(slots)
    pending = list(todo)
    active: list[Active] = []
    outcomes: list[Outcome] = []
    first: Active | None = None
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True, mininterval=1.0)
    try:
        while pending or active:
            # In parallel, the first run goes alone until its data is prepared, so the others find the token cache
            # built instead of all tokenizing the same corpus at once.
            while pending and free and (first is None or _data_ready(first)):
                run, action = pending.pop(0)
                a = start(run, out_dir / "runs" / run.name, action, free.pop(0), parallel, accelerate_config)
                active.append(a)
                first = first or a
            time.sleep(POLL_SECONDS)
            for a in [a for a in active if a.proc.poll() is not None]:
                active.remove(a)
                free.append(a.slot)
                outcome = finish(a, out_dir)
                outcomes.append(outcome)
                if outcome.status == "failed":
                    bar.write(
                        f"failed: {a.run.name} (exit code {outcome.exit_code}); see {a.run_dir / 'ablate_error.log'}"
                    )
                bar.update(1)
            progress = [f"{a.run.name} step {current_step(a.run_dir) or 0}/{a.run.max_steps}" for a in active]
            bar.set_postfix_str(" | ".join(progress), refresh=True)
    except KeyboardInterrupt:
        bar.write(f"interrupted: stopping {len(active)} run(s); run the same command again to resume")
        for a in active:
            stop(a)
        raise
    finally:
        bar.close()
    return outcomes


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a grid of training runs (an ablation sweep), then write its report.",
        epilog="See the module docstring (scripts/ablate.py) for the sweep file format.",
    )
    parser.add_argument("sweep", help="sweep YAML file (base, overrides, grid, exclude, description)")
    parser.add_argument("--output_dir", required=True, help="sweep directory: DIR/runs/<name>/, report, figures")
    parser.add_argument("--dry_run", action="store_true", help="validate and print each run's command; run nothing")
    parser.add_argument("--no_report", action="store_true", help="skip scripts/report.py at the end")
    parser.add_argument(
        "--accelerate_config",
        help="accelerate config file for every run (mixed precision etc.; default: your `accelerate config`); "
        "ablate.py still sets one process per run and pins GPUs itself",
    )
    args = parser.parse_args(argv)
    out_dir = Path(args.output_dir)
    try:
        if args.accelerate_config and not Path(args.accelerate_config).is_file():
            raise SweepError(f"accelerate config '{args.accelerate_config}' does not exist")
        sweep = load_sweep(Path(args.sweep))
        actions = {}
        for run in sweep.runs:
            run_dir = out_dir / "runs" / run.name
            actions[run.name] = plan(run_dir)
            if actions[run.name] != "fresh" and (why := config_mismatch(run, run_dir)):
                raise SweepError(
                    f"run directory '{run_dir}' holds a run made with other settings ({why}); "
                    "delete it or use another --output_dir"
                )
    except SweepError as err:
        print(f"ablate.py: error: {err}", file=sys.stderr)
        return 2

    todo = [(run, actions[run.name]) for run in sweep.runs if actions[run.name] != "done"]
    done = len(sweep.runs) - len(todo)
    counts = {a: sum(1 for x in actions.values() if x == a) for a in ("done", "resume", "fresh")}
    print(
        f"sweep {sweep.path}: {_runs(len(sweep.runs))}; {counts['done']} finished (skipped), {counts['resume']} to "
        f"resume, {counts['fresh']} to start; output in {out_dir}",
        flush=True,
    )
    if args.dry_run:
        slots = gpu_slots()
        for i, run in enumerate(sweep.runs):
            action = actions[run.name]
            run_dir = out_dir / "runs" / run.name
            if action == "done":
                print(f"# {run.name}: finished, skipped")
                continue
            slot = slots[i % len(slots)]
            pin = f"CUDA_VISIBLE_DEVICES={slot} " if slot is not None else ""
            print(f"# {run.name}: {action}")
            cmd = launch_command(run, run_dir, action, slot, len(slots) > 1, args.accelerate_config)
            print(pin + shlex.join(cmd))
        return 0

    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    write_sweep_yaml(sweep, out_dir)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        outcomes = execute(todo, out_dir, len(sweep.runs), done, args.accelerate_config) if todo else []
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not todo:
        print(f"nothing to launch: all {len(sweep.runs)} runs finished")
    failed = [o for o in outcomes if o.status == "failed"]
    diverged = [o for o in outcomes if o.status == "diverged"]
    if outcomes:
        print(
            f"launched {_runs(len(outcomes))}: {len(outcomes) - len(failed) - len(diverged)} completed, "
            f"{len(diverged)} diverged, {len(failed)} failed"
        )
    for o in failed:
        print(f"  failed: {o.run.name} (exit code {o.exit_code}): {out_dir / 'runs' / o.run.name / 'ablate_error.log'}")
    code = 1 if failed else 0
    if not args.no_report:
        code = max(code, 1 if report.main([str(out_dir)]) else 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
