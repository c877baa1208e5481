"""Sweeps (train/sweep/: spec, plan, scheduler, ablate): sweep validation (one line, exit 2), run naming and order, how
each run directory is picked up again, the status of a launch, stopping, one run per GPU slot, the data prepared once,
and a 2x2 mini-sweep end to end through accelerate launch and the real trainer, whose second invocation launches
nothing."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from train.atomic_io import read_json
from train.checkpoints import list_checkpoints, write_manifest
from train.config import build_parser
from train.output_dir import OutputDirError, OutputLock
from train.run_directory import (
    DATA_INFO,
    ERROR_LOG,
    METRICS,
    TRAIN_LOG,
    MetricsLog,
    RunStatus,
    Summary,
    load_run,
    write_run_config,
)
from train.sweep import ablate, budget, plan, scheduler, spec
from train.sweep.directory import (
    LAUNCHES,
    SWEEP_LOCK,
    read_launches,
    read_sweep_record,
    run_dir,
    write_sweep_record,
)
from train.sweep.plan import Action

REPO_ROOT = Path(__file__).resolve().parent.parent
ABLATE = REPO_ROOT / "scripts" / "ablate.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A model small enough that a run is mostly process start-up.
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "block_size": 32,
    "max_position_embeddings": 32,
    "vocab_size": 300,
    "per_device_train_batch_size": 4,
    "max_steps": 4,
    "warmup_steps": 1,
    "eval_steps": 2,
    "max_eval_batches": 2,
    "logging_steps": 1,
    "save_steps": 0,
    "sample_max_new_tokens": 0,
}


def write_sweep(path: Path, sweep: dict | str) -> Path:
    path.write_text(sweep if isinstance(sweep, str) else yaml.safe_dump(sweep, sort_keys=False))
    return path


def one_run(tmp_path: Path, grid: str = "grid: {seed: [0]}\n") -> spec.RunSpec:
    return spec.load_sweep(write_sweep(tmp_path / "one.yaml", grid)).runs[0]


def write_checkpoint(directory: Path, step: int = 3) -> None:
    """A complete checkpoint as far as listing goes: a file and its manifest."""
    checkpoint = directory / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    write_manifest(checkpoint, step)


def write_summary(directory: Path, status: RunStatus, steps: int = 5) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    Summary(status=status, steps=steps, max_steps=5).write(directory)


# ---------------------------------------------------------------------------------------------------------------------
# Validation

BAD_SWEEPS = {
    "missing file": (None, "does not exist"),
    "bad yaml": ("grid: [1\n", "not valid YAML at line"),
    "not a mapping": ("- 1\n- 2\n", "must be a mapping"),
    "unknown top-level key": ("grids: {seed: [0]}\n", "unknown top-level key 'grids'"),
    "no grid": ("overrides: {max_steps: 5}\n", "'grid' must be a non-empty mapping"),
    "empty grid": ("grid: {}\n", "'grid' must be a non-empty mapping"),
    "empty grid axis": ("grid: {seed: []}\n", "grid.seed must be a non-empty list"),
    "scalar grid axis": ("grid: {seed: 0}\n", "grid.seed must be a non-empty list"),
    "nested grid value": ("grid: {seed: [[0, 1]]}\n", "values must be single values"),
    "duplicate grid value": ("grid: {seed: [0, 0]}\n", "lists a value twice"),
    "infinite learning rate": ("grid: {learning_rate: [1.0e-3, .inf]}\n", "grid.learning_rate holds inf"),
    "nan override": ("grid: {seed: [0]}\noverrides: {learning_rate: .nan}\n", "numbers must be finite"),
    "inf as text": ("grid: {learning_rate: [inf]}\n", "finite"),
    "unknown grid flag": ("grid: {sed: [0]}\n", "grid key 'sed' is not a training flag"),
    "unknown override flag": ("grid: {seed: [0]}\noverrides: {max_step: 5}\n", "'max_step' is not a training flag"),
    "controlled flag": ("grid: {output_dir: [a, b]}\n", "'output_dir' is not allowed"),
    "base as a flag": ("grid: {seed: [0]}\noverrides: {config: x.yaml}\n", "use the top-level 'base' key"),
    "a switch": ("grid: {seed: [0]}\noverrides: {no_stability_metrics: 1}\n", "set 'stability_metrics: true'"),
    "same field twice": ("grid: {norm: [rms]}\noverrides: {norm_type: layer}\n", "which 'norm' already sets"),
    "bad value": ("grid: {norm: [rms, rmsnorm]}\n", "invalid choice: 'rmsnorm'"),
    "bad type": ("grid: {max_steps: [ten]}\n", "invalid int value: 'ten'"),
    "bad combination": ("grid: {hidden_size: [100]}\n", "must be even for RoPE"),
    "missing base": ("base: configs/nope.yaml\ngrid: {seed: [0]}\n", "base config 'configs/nope.yaml' does not exist"),
    "bad exclude key": ("grid: {seed: [0, 1]}\nexclude: [{norm: rms}]\n", "exclude names 'norm'"),
    "bad exclude value": ("grid: {seed: [0, 1]}\nexclude: [{seed: 2}]\n", "exclude seed=2 is not among grid.seed"),
    "exclude everything": ("grid: {seed: [0]}\nexclude: [{seed: 0}]\n", "removes every run"),
    # A findings declaration (train/sweep/findings.py) is checked against the grid and the runs' resolved settings.
    "unknown finding": ("grid: {norm: [rms, layer]}\nfindings: {e: {}}\n", "unknown finding 'e' under 'findings'"),
    "role not in the grid": (
        "grid: {norm: [rms, layer]}\nfindings: {a: {rms: {norm: rms}, layer: {norm: dyt}}}\n",
        "findings.a.layer: norm=dyt is not among grid.norm (rms, layer)",
    ),
    "swapped roles": (
        "grid: {norm: [rms, layer]}\nfindings: {a: {rms: {norm: layer}, layer: {norm: rms}}}\n",
        "findings.a.rms selects a variant with norm_type=layer; role 'rms' needs norm_type=rms",
    ),
    "role in the wrong placement": (
        "grid: {norm: [rms, layer]}\noverrides: {norm_placement: post}\n"
        "findings: {a: {rms: {norm: rms}, layer: {norm: layer}}}\n",
        "findings.a.rms selects a variant with norm_placement=post; role 'rms' needs norm_placement=pre",
    ),
    "roles differing elsewhere": (
        "grid: {norm: [rms, layer], hidden_size: [64, 128]}\n"
        "findings: {a: {rms: {norm: rms, hidden_size: 64}, layer: {norm: layer, hidden_size: 128}}}\n",
        "roles rms and layer also differ in hidden_size (64 vs 128); finding a's roles may differ only in norm_type",
    ),
    "warm-up not shared": (
        "grid: {norm_placement: [pre, post], warmup_steps: [0, 100], learning_rate: [1.0e-3]}\nfindings: {b: {"
        "pre: {norm_placement: pre, warmup_steps: 100}, post: {norm_placement: post, warmup_steps: 0}, "
        "post_warmup: {norm_placement: post, warmup_steps: 100}}}\n",
        "findings.b: roles pre and post must share a warm-up (warmup_steps 100 vs 0)",
    ),
    "billion laughs": (
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\nb: &b [*a, *a, *a, *a, *a, *a]\n'
        "grid: {seed: [*b, *b, *b, *b, *b, *b, *b, *b, *b]}\n",
        "uses a YAML alias (*a) at line 2; anchors and aliases are not read",
    ),
    "nested too deeply": ("grid: {seed: " + "[" * 20000 + "]" * 20000 + "}\n", "is nested too deeply to read"),
    "a million runs": (
        "grid: {seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], learning_rate: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],"
        " warmup_steps: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], max_steps: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],"
        " logging_steps: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], eval_steps: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n",
        "the grid has 1,000,000 points, more than the 10,000 runs a sweep may launch; shrink it, or raise --max_runs",
    ),
    "no learning-rate axis": (
        "grid: {qk_norm: [false, true]}\nfindings: {c: {plain: {qk_norm: false}, qk_norm: {qk_norm: true}}}\n",
        "finding c needs a learning_rate axis in the grid",
    ),
    # The time budget --dry_run adds up (train/sweep/budget.py).
    "budget not a mapping": ("grid: {seed: [0]}\nbudget: 25\n", "'budget' must be a mapping of seconds_per_run"),
    "unknown budget key": ("grid: {seed: [0]}\nbudget: {minutes: 8}\n", "unknown budget key 'minutes'; valid:"),
    "negative cost": ("grid: {seed: [0]}\nbudget: {seconds_per_run: -4}\n", "budget.seconds_per_run must be > 0"),
    "fractional K": ("grid: {seed: [0]}\nbudget: {runs_per_gpu: 2.5}\n", "budget.runs_per_gpu must be an integer"),
    "device share above the run": (
        "grid: {seed: [0]}\nbudget: {seconds_per_run: 4, device_seconds_per_run: 5}\n",
        "budget.device_seconds_per_run must not exceed budget.seconds_per_run",
    ),
    "share above 1": ("grid: {seed: [0]}\nbudget: {early_stop_share: 2}\n", "early_stop_share must be a share"),
}


@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_bad_sweep_is_one_error_line_and_exit_2(case, tmp_path, capsys):
    text, message = BAD_SWEEPS[case]
    path = tmp_path / "sweep.yaml"
    if text is not None:
        path.write_text(text)
    code = ablate.main([str(path), "--output_dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate.py: error: "), captured.err
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_max_runs_raises_the_cap_and_exclusions_count(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", "grid: {seed: [0, 1, 2]}\nexclude: [{seed: 2}]\n")
    out = tmp_path / "out"
    assert ablate.main([str(path), "--output_dir", str(out), "--max_runs", "1", "--dry_run"]) == 2
    assert "the grid has 3 points, more than the 1 runs a sweep may launch" in capsys.readouterr().err
    assert ablate.main([str(path), "--output_dir", str(out), "--max_runs", "2", "--dry_run"]) == 0
    assert "2 runs; 0 finished (skipped), 0 to resume, 2 to start" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        ("compute_environment: [LOCAL\n", "is not valid YAML at line 2"),
        ("a: &x {distributed_type: NO}\nb: *x\n", "uses a YAML alias (*x) at line 2"),
        ("just text\n", "cannot be used: 'str' object has no attribute 'get'"),
        ("distributed_type: SIDEWAYS\n", "cannot be used: 'SIDEWAYS' is not a valid DistributedType"),
    ],
)
def test_a_bad_accelerate_config_is_one_line_before_anything_is_launched(tmp_path, capsys, content, message):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"grid": {"seed": [0]}})
    (tmp_path / "acc.yaml").write_text(content)
    args = [str(sweep_path), "--output_dir", str(tmp_path / "out"), "--accelerate_config", str(tmp_path / "acc.yaml")]
    assert ablate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"accelerate config '{tmp_path / 'acc.yaml'}' {message}" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_second_sweep_into_a_sweep_directory_in_use_is_refused_in_one_line(tmp_path, capsys):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"grid": {"seed": [0]}})
    out = tmp_path / "out"
    running = OutputLock(out, SWEEP_LOCK, "sweep")  # what a sweep running there holds
    running.acquire()
    try:
        assert ablate.main([str(sweep_path), "--output_dir", str(out)]) == 2
    finally:
        running.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"output_dir '{out}' is in use by another normgpt sweep" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [SWEEP_LOCK]  # nothing written: no sweep.yaml, no run
    assert ablate.main([str(sweep_path), "--output_dir", str(out), "--dry_run"]) == 0  # reading needs no lock


def test_every_flag_of_the_trainer_is_accepted_with_aliases():
    flags = spec.trainer_flags()
    assert flags["norm"].dest == flags["norm_type"].dest == flags["norm-type"].dest == "norm_type"
    assert flags["learning_rate"].section == "training" and flags["block_size"].section == "data"
    assert flags["norm"].section == "model" and not flags["no_stability_metrics"].takes_value
    # The same set of options the trainer's parser documents in its --help, read from the dataclasses.
    documented = set(re.findall(r"--([A-Za-z][\w-]*)", build_parser().format_help()))
    assert documented - {"help", "config"} == set(flags)


# ---------------------------------------------------------------------------------------------------------------------
# Naming, order, planning


def test_run_names_are_stable_filesystem_safe_and_follow_grid_order():
    assert spec.run_name({"norm": "rms", "learning_rate": 0.003, "seed": 0}) == "norm=rms,learning_rate=0.003,seed=0"
    assert spec.run_name({"qk_norm": True, "z_loss": 1e-4}) == "qk_norm=true,z_loss=0.0001"
    assert spec.run_name({"dataset": "data/my corpus*"}) == "dataset=data_my_corpus_"


def test_sweep_resolves_values_orders_seeds_last_and_applies_exclude(tmp_path):
    # YAML 1.1 reads 3e-3 (no dot) as a string; the trainer's parser makes it 0.003 and so does the name.
    path = write_sweep(
        tmp_path / "s.yaml",
        "overrides: {max_steps: 7}\n"
        "grid:\n  seed: [0, 1]\n  norm: [rms, layer]\n  learning_rate: [1.0e-3, 3e-3]\n"
        "exclude:\n  - {norm: layer, learning_rate: 1.0e-3}\n",
    )
    sweep = spec.load_sweep(path)
    names = [r.name for r in sweep.runs]
    assert names[:3] == [
        "seed=0,norm=rms,learning_rate=0.001",
        "seed=0,norm=rms,learning_rate=0.003",
        "seed=0,norm=layer,learning_rate=0.003",
    ]
    assert len(names) == 6 and all(n.startswith("seed=1") for n in names[3:])  # every seed-0 run comes first
    assert sweep.grid["learning_rate"] == [0.001, 0.003]
    run = sweep.runs[1]
    assert run.config["max_steps"] == 7 and run.config["norm_type"] == "rms" and run.max_steps == 7
    assert run.args[-6:] == ["--seed", "0", "--norm", "rms", "--learning_rate", "0.003"]
    record = sweep.record()
    assert record.fields["norm"] == "norm_type" and [r.name for r in record.runs] == names
    assert record.hardware["cpu_cores"] >= 1


def test_a_findings_declaration_is_checked_against_the_settings_and_recorded(tmp_path):
    text = (
        "grid: {qk_norm: [false, true], learning_rate: [1.0e-3, 1.0e-2], seed: [0, 1]}\n"
        "findings: {c: {qk_norm: {qk_norm: 'true'}, plain: {qk_norm: false}}}\n"
    )
    # Role c needs pre-norm RMSNorm: the norm comes from the base config, the placement from the model's default.
    sweep = spec.load_sweep(write_sweep(tmp_path / "s.yaml", text))
    assert sweep.findings == {"c": {"plain": {"qk_norm": False}, "qk_norm": {"qk_norm": True}}}
    write_sweep_record(tmp_path, sweep.record())
    assert read_sweep_record(tmp_path).extra == {"findings": sweep.findings}
    assert "findings" not in spec.load_sweep(write_sweep(tmp_path / "t.yaml", "grid: {seed: [0]}\n")).record().extra


@pytest.mark.parametrize(
    "status, checkpoint, action",
    [
        (RunStatus.COMPLETED, False, Action.DONE),
        (RunStatus.DIVERGED, True, Action.DONE),
        (RunStatus.STALLED, False, Action.DONE),
        (RunStatus.INTERRUPTED, True, Action.RESUME),
        (RunStatus.FAILED, True, Action.RESUME),
        (RunStatus.FAILED, False, Action.FRESH),
        (None, True, Action.RESUME),  # killed: no summary, but a checkpoint
        (None, False, Action.FRESH),
    ],
)
def test_plan_skips_finished_runs_and_resumes_from_a_checkpoint(status, checkpoint, action, tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    MetricsLog(directory / METRICS).append({"step": 1, "loss": 5.0})
    if status is not None:
        write_summary(directory, status)
    if checkpoint:
        write_checkpoint(directory)
    assert plan.plan(load_run(directory)) is action
    assert plan.plan(load_run(tmp_path / "nothing")) is Action.FRESH


def test_dry_run_and_config_mismatch(tmp_path, capsys):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"overrides": {"max_steps": 5}, "grid": {"seed": [0, 1, 2]}})
    out = tmp_path / "out"
    write_summary(run_dir(out, "seed=0"), RunStatus.COMPLETED)
    write_summary(run_dir(out, "seed=1"), RunStatus.INTERRUPTED)
    write_checkpoint(run_dir(out, "seed=1"))

    assert ablate.main([str(sweep_path), "--output_dir", str(out), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "1 finished (skipped), 1 to resume, 1 to start" in printed
    commands = [line for line in printed.splitlines() if "accelerate.commands.launch" in line]
    assert len(commands) == 2 and "--num_processes 1" in commands[0] and "--quiet" in commands[0]
    assert commands[0].endswith("--resume_from_checkpoint latest")
    assert "--overwrite_output_dir" not in printed and not (out / "sweep.yaml").exists()

    # A finished run made with other settings is not silently counted as this sweep's.
    write_run_config(run_dir(out, "seed=0") / "run_config.yaml", {"training": {"max_steps": 9, "seed": 0}})
    assert ablate.main([str(sweep_path), "--output_dir", str(out), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_steps=9 on disk, 5 in this sweep" in err[0]
    (run_dir(out, "seed=0") / "run_config.yaml").write_text("training: [\n")
    assert ablate.main([str(sweep_path), "--output_dir", str(out), "--dry_run"]) == 2
    assert "run_config.yaml cannot be read" in capsys.readouterr().err


BUDGET = {"seconds_per_run": 23.2, "device_seconds_per_run": 3.2, "runs_per_gpu": 10, "early_stop_share": 0.08}
BUDGET |= {"idle": 0.1, "prepare_seconds": 15, "limit_minutes": 8, "device": "one H100"}


def test_a_dry_run_prints_the_budget_arithmetic_of_the_study(tmp_path, capsys, monkeypatch):
    """The GPU window's numbers: 125 runs, K = 10 on one GPU, 3.2 of 23.2 s on the GPU, 10 runs stopping early."""
    monkeypatch.setattr(ablate, "gpu_count", lambda: 1)
    grid = {"learning_rate": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3], "warmup_steps": [1, 2, 3, 4, 5], "seed": [0, 1, 2, 3, 4]}
    sweep_path = write_sweep(tmp_path / "s.yaml", {"grid": grid, "budget": BUDGET})
    assert ablate.main([str(sweep_path), "--output_dir", str(tmp_path / "out"), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "125 runs to launch (of 125); K = 10 (the sweep file's budget.runs_per_gpu; launch with" in printed
    assert "1 GPU(s) here: 10 slot(s); the seconds are for one H100" in printed
    assert (
        "device-bound: (125 - 10) x 3.2 s x 1.1 / 1 = 404.8 s; slot-bound: ceil(125 / 10) x 23.2 s = 301.6" in printed
    )
    assert "estimate: 15 s to prepare the data + 404.8 s = 420 s = 7.0 minutes (limit 8 minutes: fits)" in printed
    assert "one run at a time (K = 1): 2915 s = 48.6 minutes" in printed
    # Flags win over the file: a slower run and K = 2 no longer fit; --seeds keeps the pilot's runs only.
    argv = [str(sweep_path), "--output_dir", str(tmp_path / "out"), "--dry_run", "--runs_per_gpu", "2"]
    assert ablate.main([*argv, "--seconds_per_run", "60", "--seeds", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert "sweep " in printed and ": 50 runs;" in printed and "seed=2" not in printed
    assert "50 runs to launch (of 50); K = 2 (--runs_per_gpu)" in printed and "OVER the limit" in printed
    assert "slot-bound: ceil(50 / 2) x 60 s = 1500.0 s" in printed
    # Without a cost per run there is nothing to add up, and it says how to give one.
    plain = write_sweep(tmp_path / "plain.yaml", {"grid": {"seed": [0, 1]}})
    assert ablate.main([str(plain), "--output_dir", str(tmp_path / "o2"), "--dry_run"]) == 0
    assert "declare\n  budget.seconds_per_run in the sweep file, or pass --seconds_per_run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--runs_per_gpu", "0"], "--runs_per_gpu must be an integer >= 1, got 0"),
        (["--seconds_per_run", "-1"], "--seconds_per_run must be a number of seconds > 0, got -1.0"),
        (["--seeds", "0,7"], "--seeds 7 is not among grid.seed (0, 1)"),
    ],
)
def test_bad_runs_per_gpu_seeds_or_cost_is_one_line_and_exit_2(flags, message, tmp_path, capsys):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"grid": {"seed": [0, 1]}})
    assert ablate.main([str(sweep_path), "--output_dir", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ablate.py: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()
    no_seed = write_sweep(tmp_path / "n.yaml", {"grid": {"norm": ["rms"]}})
    assert ablate.main([str(no_seed), "--output_dir", str(tmp_path / "out"), "--seeds", "0"]) == 2
    assert "--seeds needs a seed axis in the grid" in capsys.readouterr().err


def test_a_dry_run_piped_into_head_ends_quietly(tmp_path):
    """`ablate.py --dry_run | head`: the reader leaves after one line, far more than a pipe buffer still to come."""
    sweep = REPO_ROOT / "configs" / "ablations" / "gpu_study.yaml"  # 168 runs: ~150 kB of commands
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "ablate.py"), str(sweep), "--output_dir", str(tmp_path / "o")]
    proc = subprocess.Popen([*cmd, "--dry_run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"sweep ")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""
    assert not (tmp_path / "o").exists()


def test_a_run_directory_holding_other_files_is_refused_not_cleared(tmp_path, capsys):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"grid": {"seed": [0]}})
    notes = run_dir(tmp_path / "out", "seed=0") / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    assert ablate.main([str(sweep_path), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files that are not a normgpt run (notes.txt)" in err[0]
    assert notes.read_text() == "mine"


def test_an_unusable_output_dir_is_one_line_and_exit_2(tmp_path, capsys):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"grid": {"seed": [0]}})
    (tmp_path / "file").write_text("mine")
    assert ablate.main([str(sweep_path), "--output_dir", str(tmp_path / "file")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert ablate.main([str(sweep_path), "--output_dir", str(locked / "out")]) == 2
        assert "cannot write to --output_dir" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_restart_clears_the_trainers_files_but_keeps_the_logs_and_never_a_live_runs(tmp_path):
    directory = tmp_path / "run"
    (directory / "checkpoint-2.tmp").mkdir(parents=True)
    for name in ("metrics.jsonl", "run_config.yaml", TRAIN_LOG, ERROR_LOG):
        (directory / name).write_text("x")
    # A run holds the directory (another sweep's launch, or one started by hand): nothing of it is touched.
    live = OutputLock(directory)
    live.acquire()
    with pytest.raises(OutputDirError, match="is in use by another normgpt run"):
        plan.clear_for_restart(directory)
    assert (directory / "metrics.jsonl").is_file() and (directory / "checkpoint-2.tmp").is_dir()
    live.release()
    plan.clear_for_restart(directory)
    assert sorted(p.name for p in directory.iterdir()) == [".normgpt.lock", ERROR_LOG, TRAIN_LOG]


def test_data_is_prepared_once_per_distinct_data_config(tmp_path, monkeypatch):
    import train.data

    calls = []
    monkeypatch.setattr(train.data, "prepare_data", lambda args, vocab, first: calls.append((args.dataset, vocab)))
    grid = "grid: {norm: [rms, layer], dataset: [a.txt, b.txt], seed: [0, 1]}\noverrides: {vocab_size: 320}\n"
    sweep = spec.load_sweep(write_sweep(tmp_path / "s.yaml", grid))
    lines = []
    plan.prepare_data_once(sweep.runs, say=lines.append)
    assert sorted(calls) == [("a.txt", 320), ("b.txt", 320)]
    assert lines[0] == "preparing data 1/2 (a.txt; 4 run(s))"


# ---------------------------------------------------------------------------------------------------------------------
# Launching


def test_one_run_per_gpu_when_there_are_several(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert scheduler.gpu_slots() == [None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert scheduler.gpu_slots() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert scheduler.gpu_slots() == ["4", "6"]
    cmd = scheduler.launch_command(one_run(tmp_path), Path("/tmp/x"), Action.FRESH, parallel=True)
    assert cmd[cmd.index("--gpu_ids") + 1] == "all" and "--main_process_port" in cmd


def child(directory: Path, body: str) -> list[str]:
    """A stand-in for the launcher: a Python program that may write a summary.json through run_directory."""
    prog = (
        "import sys\n"
        "from train.run_directory import RunStatus, Summary\n"
        f"def summary(status):\n    Summary(status=RunStatus(status), steps=5, max_steps=5).write({str(directory)!r})\n"
        f"{body}\n"
    )
    return [sys.executable, "-c", prog]


@pytest.mark.parametrize(
    "body, status",
    [
        ("summary('diverged')", RunStatus.DIVERGED),
        ("summary('completed')", RunStatus.COMPLETED),
        ("summary('stalled')", RunStatus.STALLED),
        ("summary('interrupted'); sys.exit(1)", RunStatus.INTERRUPTED),  # a signal stopped it: resumable
        ("summary('failed')", RunStatus.FAILED),
        ("sys.stderr.write('boom\\n'); sys.exit(3)", RunStatus.FAILED),
        ("pass", RunStatus.FAILED),  # exit 0 without a summary.json
        ("summary('completed'); sys.stderr.write('crash saving\\n'); sys.exit(1)", RunStatus.FAILED),
        ("sys.exit(1)", RunStatus.FAILED),  # the interrupted summary of the earlier attempt does not count
    ],
)
def test_status_of_a_launch_comes_from_the_summary_it_wrote(body, status, tmp_path):
    out = tmp_path / "sweep"
    directory = run_dir(out, "seed=0")
    write_summary(directory, RunStatus.INTERRUPTED)  # left by an earlier attempt
    write_checkpoint(directory)
    launcher = scheduler.Launcher(one_run(tmp_path), directory, Action.RESUME, None, child(directory, body))
    launcher.start()
    outcome, why = launcher.finish()
    scheduler.record(out, launcher, outcome, why, stopped=False)
    assert outcome.status is status
    assert (directory / ERROR_LOG).exists() == (status is RunStatus.FAILED)
    if "boom" in body:
        error = (directory / ERROR_LOG).read_text()
        assert "result: exit code 3" in error and error.rstrip().endswith("boom")
        assert "boom" in (directory / TRAIN_LOG).read_text()
    rows, problems = read_launches(out)
    assert not problems and rows[0]["status"] == status.value and rows[0]["name"] == "seed=0"
    assert rows[0]["action"] == "resume"


def _alive(pid: int) -> bool:
    """Running (a killed child not yet reaped by whoever adopted it is a zombie: not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_stop_ends_the_launched_process_group(tmp_path):
    # A launcher that ignores the stop signal and has a child: stop() must still end both.
    pid_file = tmp_path / "child.pid"
    prog = (
        "import pathlib, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    cmd = [sys.executable, "-c", prog]
    launcher = scheduler.Launcher(one_run(tmp_path), tmp_path / "run", Action.FRESH, None, cmd)
    launcher.start()
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    launcher.stop(grace=1.0)
    assert launcher.proc.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid)


def test_runs_per_gpu_gives_each_gpu_k_slots_and_splits_the_cpu_threads(monkeypatch):
    monkeypatch.setattr(scheduler, "gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert scheduler.device_slots(1) == ["4", "6"]
    assert scheduler.device_slots(3) == ["4", "6", "4", "6", "4", "6"]  # the first runs spread over the GPUs
    monkeypatch.setattr(scheduler, "gpu_count", lambda: 0)
    assert scheduler.device_slots(3) == [None, None, None]
    monkeypatch.delenv("NORMGPT_CPU_THREADS", raising=False)
    monkeypatch.setattr(scheduler, "available_cores", lambda: 8)
    assert scheduler.cpu_threads(1) is None and scheduler.cpu_threads(3) == 2 and scheduler.cpu_threads(16) == 1
    monkeypatch.setenv("NORMGPT_CPU_THREADS", "4")  # the user's choice stands
    assert scheduler.cpu_threads(3) is None


def test_k_runs_at_once_share_the_cpu_each_told_its_threads(tmp_path, monkeypatch):
    """runs_per_gpu=2 without a GPU: two launches overlap, each with NORMGPT_CPU_THREADS = cores / 2."""
    monkeypatch.setattr(scheduler, "gpu_count", lambda: 0)
    monkeypatch.setattr(scheduler, "available_cores", lambda: 4)
    monkeypatch.delenv("NORMGPT_CPU_THREADS", raising=False)
    sweep = spec.load_sweep(write_sweep(tmp_path / "s.yaml", "grid: {seed: [0, 1]}\n"))

    def fake_command(run, directory, action, parallel, accelerate_config=None):
        body = (
            "import os, pathlib, time\n"
            f"mark = pathlib.Path({str(tmp_path)!r}, {run.name!r})\n"
            "mark.write_text(os.environ['NORMGPT_CPU_THREADS'])\n"
            f"others = [pathlib.Path({str(tmp_path)!r}, n) for n in ('seed=0', 'seed=1')]\n"
            "deadline = time.monotonic() + 20\n"
            "while not all(p.exists() for p in others) and time.monotonic() < deadline: time.sleep(0.05)\n"
            "summary('completed' if all(p.exists() for p in others) else 'failed')"
        )
        return child(directory, body)

    monkeypatch.setattr(scheduler, "launch_command", fake_command)
    todo = [(run, Action.FRESH) for run in sweep.runs]
    outcomes = scheduler.Scheduler(tmp_path / "out", runs_per_gpu=2).run(todo, total=2, done=0)
    assert [o.status for o in outcomes] == [RunStatus.COMPLETED] * 2  # each saw the other running
    assert (tmp_path / "seed=0").read_text() == (tmp_path / "seed=1").read_text() == "2"
    log = (run_dir(tmp_path / "out", "seed=0") / TRAIN_LOG).read_text()
    assert "NORMGPT_CPU_THREADS=2 " in log  # the launch line says how it was started


def test_scheduler_runs_one_launch_per_slot_at_a_time(tmp_path, monkeypatch):
    """Two slots, four runs: at most two at once, each pinned to its own slot, every launch recorded."""
    sweep = spec.load_sweep(write_sweep(tmp_path / "s.yaml", "grid: {seed: [0, 1, 2, 3]}\n"))
    out = tmp_path / "sweep"

    def fake_command(run, directory, action, parallel, accelerate_config=None):
        assert parallel
        body = (
            "import os, time\n"
            f"open({str(tmp_path)!r} + '/' + os.environ['CUDA_VISIBLE_DEVICES'] + '.' + {run.name!r}, 'w')\n"
            "time.sleep(0.5)\nsummary('completed')"
        )
        return child(directory, body)

    monkeypatch.setattr(scheduler, "launch_command", fake_command)
    todo = [(run, Action.FRESH) for run in sweep.runs]
    outcomes = scheduler.Scheduler(out, slots=["a", "b"]).run(todo, total=4, done=0)
    assert sorted(o.spec.name for o in outcomes) == [r.name for r in sweep.runs]
    assert all(o.status is RunStatus.COMPLETED for o in outcomes)
    rows, _ = read_launches(out)
    assert len(rows) == 4 and {r["slot"] for r in rows} == {"a", "b"}
    markers = [p.name for p in tmp_path.iterdir() if p.name[:2] in ("a.", "b.")]
    assert len(markers) == 4


TRAINER = """
import pathlib, signal, sys, time
from train.run_directory import RunStatus, Summary
def stop(*_):
    time.sleep(1.0)  # the last step and the checkpoint, while the launcher above is already gone
    Summary(status=RunStatus.INTERRUPTED, steps=2, max_steps=5, stop_reason="SIGTERM").write(sys.argv[1])
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[1], "started").write_text("yes")
time.sleep(60)
"""
DRIVER = """
import signal, sys
from pathlib import Path
from train.sweep import ablate, scheduler, spec
from train.sweep.plan import Action
tmp = Path(sys.argv[1])
runs = spec.load_sweep(tmp / "s.yaml").runs
# Like `accelerate launch`: a launcher that dies at once on SIGTERM, over the trainer.
launcher = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, sys.argv[1], sys.argv[2]]))"
child = lambda run, directory, *a: [sys.executable, "-c", launcher, str(tmp / "trainer.py"), str(directory)]
scheduler.launch_command = child
signal.signal(signal.SIGTERM, ablate.interrupt)
try:
    scheduler.Scheduler(tmp / "out", slots=["a", "b"]).run([(run, Action.FRESH) for run in runs], len(runs), 0)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
def test_sigterm_stops_every_run_and_each_records_that_it_was_interrupted(tmp_path):
    write_sweep(tmp_path / "s.yaml", "grid: {seed: [0, 1, 2]}\n")
    (tmp_path / "trainer.py").write_text(TRAINER)
    cmd = [sys.executable, "-c", DRIVER, str(tmp_path)]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = [run_dir(tmp_path / "out", f"seed={i}") / "started" for i in (0, 1)]
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, output[-2000:]
    assert "interrupted: stopping 2 run(s)" in output
    for i in (0, 1):  # both running runs were stopped and wrote their summary; the third never started
        assert Summary.read(run_dir(tmp_path / "out", f"seed={i}")).status is RunStatus.INTERRUPTED
        assert not (run_dir(tmp_path / "out", f"seed={i}") / ERROR_LOG).exists()
    assert not run_dir(tmp_path / "out", "seed=2").exists()
    rows, _ = read_launches(tmp_path / "out")
    assert sorted(r["name"] for r in rows) == ["seed=0", "seed=1"] and {r["status"] for r in rows} == {"interrupted"}


def test_shipped_studies_are_valid_and_sized_as_documented():
    flags = spec.trainer_flags()
    cpu = spec.load_sweep(REPO_ROOT / "configs" / "ablations" / "cpu_study.yaml", flags)
    assert len(cpu.grid["learning_rate"]) == 5 and cpu.grid["seed"] == [0, 1]
    variants = {(r.grid["norm"], r.grid["norm_placement"]) for r in cpu.runs}
    assert variants == {("rms", "pre"), ("layer", "pre"), ("rms", "post")} and len(cpu.runs) == 30
    assert cpu.base.name == "tiny.yaml" and cpu.runs[0].config["save_steps"] == 0

    for name in ("gpu_study.yaml", "gpu_study_96m.yaml"):
        path = REPO_ROOT / "configs" / "ablations" / name
        gpu = spec.load_sweep(path, flags)
        lrs = gpu.grid["learning_rate"]
        assert len(lrs) == 7 and lrs[0] == 3e-4 and lrs[-1] == 3e-1 and lrs == sorted(lrs)
        ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
        assert all(2.9 < r < 3.4 for r in ratios)  # log-spaced: about sqrt(10) apart
        assert gpu.grid["seed"] == [0, 1, 2] and list(gpu.findings) == ["a", "b", "c", "d"]
        assert len(gpu.runs) == 168 and "= 168 runs" in path.read_text()  # the size the file's header states
        assert 10e6 <= parameters(gpu.runs[0]) <= 100e6


def parameters(run: spec.RunSpec) -> int:
    import torch

    from model.modeling_normgpt import NormGPTForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in NormGPTForCausalLM(run.resolved.model_config()).parameters())


def test_the_findings_cpu_study_tests_each_finding_with_3_seeds_within_25_minutes():
    """Each file's header states runs x 72 s per run (a 200-step run's measured cost on the 2-core machine)."""
    flags, declared = spec.trainer_flags(), []
    for path in sorted((REPO_ROOT / "configs" / "ablations" / "findings_cpu").glob("*.yaml")):
        sweep = spec.load_sweep(path, flags)
        assert sweep.base.name == "tiny.yaml" and sweep.grid["seed"] == [0, 1, 2], path.name
        assert {r.max_steps for r in sweep.runs} == {200} and len(sweep.findings) == 1
        declared += list(sweep.findings)
        runs, minutes = re.search(r"(\d+) runs x 72 s = ([\d.]+) minutes", path.read_text()).groups()
        assert int(runs) == len(sweep.runs) and float(minutes) == round(len(sweep.runs) * 72 / 60, 1) <= 25
    assert declared == ["a", "b", "c", "d"]


PAIRED_CPU = REPO_ROOT / "configs" / "ablations" / "paired_cpu"


def test_the_paired_cpu_studies_have_5_or_more_seeds_a_pilot_each_and_fit_25_minutes():
    """Each study states its budget as runs x measured seconds per run, and its `budget:` adds up to the same (what
    --dry_run prints); its pilot is the same file with --seeds 0,1 into the study's directory (the study keeps those
    runs)."""
    flags, declared = spec.trainer_flags(), []
    for path in sorted(PAIRED_CPU.glob("[abcd]_*.yaml")):
        sweep, text = spec.load_sweep(path, flags), path.read_text()
        seeds = sweep.grid["seed"]
        assert sweep.base.name == "tiny.yaml" and seeds == list(range(len(seeds))) and len(seeds) >= 5, path.name
        (key,) = sweep.findings
        assert sweep.findings[key]["tolerance"] > 0, path.name  # declared before the study runs
        declared.append(key)
        runs, seconds, minutes = re.search(r"= (\d+) runs x (\d+) s = ([\d.]+) minutes", text).groups()
        assert int(runs) == len(sweep.runs) and float(minutes) == round(len(sweep.runs) * int(seconds) / 60, 1) <= 25
        estimate = budget.estimate(sweep.budget, len(sweep.runs), 1, 0, sweep.budget.seconds_per_run)
        assert sweep.budget.seconds_per_run == int(seconds) and estimate.seconds <= sweep.budget.limit_minutes * 60
        study, pilot = re.search(
            r"#   (python scripts/ablate.py \S+ --output_dir \S+)( --seeds 0,1)?   # pilot", text
        ).groups()
        assert pilot and re.search(rf"#   {re.escape(study)}\s+# study", text) and str(path.name) in study, path.name
    assert declared == ["a", "b", "c", "d"]


def test_the_gpu_window_study_fits_8_minutes_by_its_own_arithmetic():
    path = REPO_ROOT / "configs" / "ablations" / "gpu_window.yaml"
    gpu, text = spec.load_sweep(path, spec.trainer_flags()), path.read_text()
    assert gpu.grid["seed"] == [0, 1, 2, 3, 4] and list(gpu.findings) == ["a", "b", "c", "d"]
    assert f"= {len(gpu.runs)} runs" in text
    run = gpu.runs[0].resolved
    tokens = run.training.max_steps * run.training.per_device_train_batch_size * run.data.block_size
    cpu_tokens = 200 * 16 * 128  # the CPU study's runs: tiny model, 200 steps of 16 x 128
    assert tokens >= 20 * cpu_tokens and f"{tokens:,}" in text
    # The header's arithmetic is the file's `budget:`, which --dry_run adds up on one GPU with the K it declares.
    stated = float(re.search(r"= ([\d.]+) minutes \(limit: 8\)", text).group(1))
    plan = gpu.budget
    estimate = budget.estimate(plan, len(gpu.runs), plan.runs_per_gpu, 1, plan.seconds_per_run)
    assert round(estimate.seconds / 60, 1) == stated <= plan.limit_minutes == 8
    assert f"--runs_per_gpu {plan.runs_per_gpu}" in text
    assert 1e6 <= parameters(gpu.runs[0]) <= 10e6 and f"{parameters(gpu.runs[0]) / 1e6:.2f}M parameters" in text


# ---------------------------------------------------------------------------------------------------------------------
# End to end through accelerate launch and the trainer


def run_ablate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_MININTERVAL": "5"}
    return subprocess.run(
        [sys.executable, str(ABLATE), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_mini_sweep_end_to_end_then_resume_launches_nothing(corpus, tmp_path):
    """The 2x2 smoke sweep CI runs: a findings declaration travels through sweep.yaml into a computed verdict."""
    overrides = {**TINY, "dataset": str(corpus), "cache_dir": str(tmp_path / "cache")}
    sweep = {"overrides": overrides, "grid": {"norm": ["rms", "layer"], "learning_rate": [1e-3, 1e-2]}}
    sweep["findings"] = {"a": {"rms": {"norm": "rms"}, "layer": {"norm": "layer"}}}
    sweep_path = write_sweep(tmp_path / "mini.yaml", sweep)
    out = tmp_path / "sweep"
    proc = run_ablate(str(sweep_path), "--output_dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "preparing data 1/1" in proc.stdout and "launched 4 runs" in proc.stdout

    names = [r["name"] for r in yaml.safe_load((out / "sweep.yaml").read_text())["runs"]]
    assert names == [
        "norm=rms,learning_rate=0.001",
        "norm=rms,learning_rate=0.01",
        "norm=layer,learning_rate=0.001",
        "norm=layer,learning_rate=0.01",
    ]
    for name in names:
        run = load_run(run_dir(out, name))
        assert run.status.finished and not run.problems
        assert read_json(run.path / DATA_INFO)["cache_hit"]  # the token cache was built before the first launch
        assert run.summary.model["norm_type"] == name.split(",")[0].split("=")[1]
        assert "accelerate.commands.launch" in (run.path / TRAIN_LOG).read_text()
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"norm", "learning_rate", "final_val_loss", "best_val_loss", "diverged", "max_grad_norm"} <= set(header)
    assert len((out / "summary.csv").read_text().splitlines()) == 5
    assert yaml.safe_load((out / "sweep.yaml").read_text())["findings"] == sweep["findings"]
    md = (out / "report.md").read_text()
    assert "float32" in md and "placement" in md and "norm=rms vs norm=layer" in md
    # One seed: the finding's row is there, and its computed verdict says a single paired seed cannot decide it.
    row = next(line for line in md.splitlines() if line.startswith("| (a) RMSNorm ≈ LayerNorm in pre-norm blocks"))
    assert "rms: norm=rms; layer: norm=layer" in row
    assert "1 paired seed(s): no interval and no power estimate [cannot decide]" in row
    assert row.endswith("| **inconclusive** |")
    links = [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) >= 5
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_MAGIC

    mtimes = {n: (run_dir(out, n) / "summary.json").stat().st_mtime_ns for n in names}
    again = run_ablate(str(sweep_path), "--output_dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 finished (skipped), 0 to resume, 0 to start" in again.stdout
    assert "nothing to launch: all 4 runs finished" in again.stdout
    assert {n: (run_dir(out, n) / "summary.json").stat().st_mtime_ns for n in names} == mtimes
    assert len((out / LAUNCHES).read_text().splitlines()) == 4  # one row per launch, none new
    assert "| **inconclusive** |" in (out / "report.md").read_text()  # the report, rewritten


@pytest.mark.slow
def test_failed_run_is_recorded_and_the_sweep_goes_on(corpus, tmp_path):
    # The first value passes the parser but the data cannot be loaded: preparing it says so, that run fails with the
    # trainer's message, and the next still runs.
    overrides = {**TINY, "cache_dir": str(tmp_path / "cache")}
    sweep = {"overrides": overrides, "grid": {"dataset": [str(tmp_path / "no_such_corpus"), str(corpus)]}}
    out = tmp_path / "sweep"
    proc = run_ablate(str(write_sweep(tmp_path / "s.yaml", sweep)), "--output_dir", str(out))
    assert proc.returncode == 1
    assert "could not be prepared" in proc.stdout and "1 completed, 0 diverged, 1 failed" in proc.stdout
    failed = next(p for p in (out / "runs").iterdir() if "no_such_corpus" in p.name)
    error = (failed / ERROR_LOG).read_text()
    assert "exit code" in error and "train.py: error:" in error and "no_such_corpus" in error
    assert "Traceback" not in error  # --quiet: the launcher adds no traceback of its own
    md = (out / "report.md").read_text()
    assert f"last launch failed (see `ablate_error.log` in each): `{failed.name}`" in md
    assert read_launches(out)[0][0]["status"] == "failed"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
def test_sigterm_to_a_sweep_gives_its_trainer_one_signal_and_time_to_checkpoint(corpus, tmp_path):
    """`normgpt sweep` stopped by SIGTERM, through the installed `accelerate launch` and the real trainer: the trainer
    gets the one signal, finishes its step, writes its checkpoint and an `interrupted` summary, and its launcher, never
    signalled, exits after it with the code `--quiet` gives any failure (1). A signalled launcher would exit 143
    (accelerate >= 1.16, which passes SIGTERM on and kills its child 5 s later) or die of it (older ones)."""
    overrides = {**TINY, "max_steps": 100000, "eval_steps": 0, "dataset": str(corpus), "cache_dir": str(tmp_path / "c")}
    sweep_path = write_sweep(tmp_path / "s.yaml", {"overrides": overrides, "grid": {"seed": [0]}})
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(ABLATE), str(sweep_path), "--output_dir", str(out), "--no_report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    directory = run_dir(out, "seed=0")
    deadline = time.monotonic() + 240
    while load_run(directory).last_step() is None or load_run(directory).last_step() < 2:  # training: handler set
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output[-3000:]
    summary = Summary.read(directory)
    assert summary.status is RunStatus.INTERRUPTED and "SIGTERM" in summary.stop_reason, output[-3000:]
    assert list_checkpoints(directory)[-1][0] == summary.steps >= 2
    (launch,) = read_launches(out)[0]
    assert (launch["status"], launch["exit_code"]) == ("interrupted", 1), output[-3000:]
    assert "run the same command again to resume it" in output or "interrupted: stopping 1 run(s)" in output
