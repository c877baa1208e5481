"""scripts/ablate.py: sweep validation (one line, exit 2), run naming and order, how each run directory is picked up
again, and a 2x2 mini-sweep end to end through accelerate launch and the real trainer, whose second invocation
launches nothing."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml
from scripts_loader import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
ABLATE = REPO_ROOT / "scripts" / "ablate.py"


ablate = load_script("ablate")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAINER_WRITES_SUMMARY = "summary.json" in (REPO_ROOT / "train" / "train.py").read_text()
CORPUS_MODULES = ["argparse.py", "csv.py", "difflib.py", "json/decoder.py", "textwrap.py", "shlex.py"]
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


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------

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
    "unknown grid flag": ("grid: {sed: [0]}\n", "grid key 'sed' is not a training flag"),
    "unknown override flag": ("grid: {seed: [0]}\noverrides: {max_step: 5}\n", "'max_step' is not a training flag"),
    "controlled flag": ("grid: {output_dir: [a, b]}\n", "'output_dir' is not allowed"),
    "base as a flag": ("grid: {seed: [0]}\noverrides: {config: x.yaml}\n", "use the top-level 'base' key"),
    "same field twice": ("grid: {norm: [rms]}\noverrides: {norm_type: layer}\n", "which 'norm' already sets"),
    "bad value": ("grid: {norm: [rms, rmsnorm]}\n", "invalid choice: 'rmsnorm'"),
    "bad type": ("grid: {max_steps: [ten]}\n", "invalid int value: 'ten'"),
    "bad combination": ("grid: {hidden_size: [100]}\n", "must be even for RoPE"),
    "missing base": ("base: configs/nope.yaml\ngrid: {seed: [0]}\n", "base config 'configs/nope.yaml' does not exist"),
    "bad exclude key": ("grid: {seed: [0, 1]}\nexclude: [{norm: rms}]\n", "exclude names 'norm'"),
    "bad exclude value": ("grid: {seed: [0, 1]}\nexclude: [{seed: 2}]\n", "exclude seed=2 is not among grid.seed"),
    "exclude everything": ("grid: {seed: [0]}\nexclude: [{seed: 0}]\n", "removes every run"),
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


def test_every_flag_of_the_trainer_is_accepted_with_aliases():
    flags = ablate.trainer_flags()
    assert flags["norm"].dest == flags["norm_type"].dest == "norm_type"
    assert flags["learning_rate"].section == "training" and flags["block_size"].section == "data"
    assert flags["norm"].section == "model"


# ---------------------------------------------------------------------------------------------------------------------
# Naming, order, planning
# ---------------------------------------------------------------------------------------------------------------------


def test_run_names_are_stable_filesystem_safe_and_follow_grid_order():
    assert ablate.run_name({"norm": "rms", "learning_rate": 0.003, "seed": 0}) == "norm=rms,learning_rate=0.003,seed=0"
    assert ablate.run_name({"qk_norm": True, "z_loss": 1e-4}) == "qk_norm=true,z_loss=0.0001"
    assert ablate.run_name({"dataset": "data/my corpus*"}) == "dataset=data_my_corpus_"


def test_sweep_resolves_values_orders_seeds_last_and_applies_exclude(tmp_path):
    # YAML 1.1 reads 3e-3 (no dot) as a string; the trainer's parser makes it 0.003 and so does the name.
    path = write_sweep(
        tmp_path / "s.yaml",
        "overrides: {max_steps: 7}\n"
        "grid:\n  seed: [0, 1]\n  norm: [rms, layer]\n  learning_rate: [1.0e-3, 3e-3]\n"
        "exclude:\n  - {norm: layer, learning_rate: 1.0e-3}\n",
    )
    sweep = ablate.load_sweep(path)
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


def test_plan_dry_run_and_config_mismatch(tmp_path, capsys):
    sweep_path = write_sweep(tmp_path / "s.yaml", {"overrides": {"max_steps": 5}, "grid": {"seed": [0, 1, 2]}})
    out = tmp_path / "out"
    runs = out / "runs"
    (runs / "seed=0").mkdir(parents=True)
    (runs / "seed=0" / "summary.json").write_text("{}")
    (runs / "seed=1" / "checkpoint-3").mkdir(parents=True)
    assert [ablate.plan(runs / f"seed={i}") for i in range(3)] == ["done", "resume", "fresh"]

    assert ablate.main([str(sweep_path), "--output_dir", str(out), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "1 finished (skipped), 1 to resume, 1 to start" in printed
    commands = [line for line in printed.splitlines() if "accelerate.commands.launch" in line]
    assert len(commands) == 2 and "--num_processes 1" in commands[0] and "--quiet" in commands[0]
    assert commands[0].endswith("--resume_from_checkpoint latest")
    assert "--overwrite_output_dir" not in printed and not (out / "sweep.yaml").exists()

    # A finished run made with other settings is not silently counted as this sweep's.
    (runs / "seed=0" / "run_config.yaml").write_text(yaml.safe_dump({"training": {"max_steps": 9, "seed": 0}}))
    assert ablate.main([str(sweep_path), "--output_dir", str(out), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_steps=9 on disk, 5 in this sweep" in err[0]


def test_restart_clears_the_trainers_files_but_keeps_the_log(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-2.tmp").mkdir(parents=True)
    for name in ("metrics.jsonl", "run_config.yaml", "train.log"):
        (run_dir / name).write_text("x")
    ablate.clear_for_restart(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["train.log"]


def test_one_run_per_gpu_when_there_are_several(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ablate.gpu_slots() == [None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert ablate.gpu_slots() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert ablate.gpu_slots() == ["4", "6"]
    run = ablate.Run("seed=0", {"seed": 0}, ["--seed", "0"], {}, 5)
    cmd = ablate.launch_command(run, Path("/tmp/x"), "fresh", "4", parallel=True)
    assert cmd[cmd.index("--gpu_ids") + 1] == "all" and "--main_process_port" in cmd


@pytest.mark.parametrize(
    "script, status",
    [
        ("write_summary(diverged=True)", "diverged"),
        ("write_summary(diverged=False)", "completed"),
        ("sys.stderr.write('boom\\n'); sys.exit(3)", "failed"),
        ("pass", "failed"),  # exit 0 without a summary.json
        ("write_summary(diverged=False); sys.stderr.write('crash saving\\n'); sys.exit(1)", "failed"),
    ],
)
def test_outcome_of_a_launch(script, status, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "seed=0"
    prog = (
        "import json, pathlib, sys\n"
        f"def write_summary(diverged):\n"
        f"    pathlib.Path({str(run_dir)!r}, 'summary.json').write_text(json.dumps({{'diverged': diverged}}))\n"
        f"{script}\n"
    )
    monkeypatch.setattr(ablate, "launch_command", lambda *a, **k: [sys.executable, "-c", prog])
    run = ablate.Run("seed=0", {"seed": 0}, [], {}, 5)
    outcome = ablate.finish(ablate.start(run, run_dir, "fresh", None, False, None), tmp_path)
    assert outcome.status == status
    assert (run_dir / "ablate_error.log").exists() == (status == "failed")
    if "boom" in script:
        error = (run_dir / "ablate_error.log").read_text()
        assert "result: exit code 3" in error and error.rstrip().endswith("boom")
        assert "boom" in (run_dir / "train.log").read_text()
    row = json.loads((tmp_path / "ablate_runs.jsonl").read_text())
    assert row["status"] == status and row["name"] == "seed=0"


def _alive(pid: int) -> bool:
    """Running (a killed child not yet reaped by whoever adopted it is a zombie: not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_stop_ends_the_launched_process_group(tmp_path, monkeypatch):
    # A launcher that ignores SIGINT and has a child: stop() must still end both.
    pid_file = tmp_path / "child.pid"
    prog = (
        "import pathlib, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setattr(ablate, "launch_command", lambda *a, **k: [sys.executable, "-c", prog])
    run = ablate.Run("seed=0", {"seed": 0}, [], {}, 5)
    active = ablate.start(run, tmp_path / "run", "fresh", None, False, None)
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    ablate.stop(active, grace=1.0)
    assert active.proc.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_shipped_studies_are_valid_and_sized_as_documented():
    flags = ablate.trainer_flags()
    if "norm_placement" not in flags or "qk_norm" not in flags:
        pytest.skip("the trainer has no --norm_placement/--qk_norm yet")
    cpu = ablate.load_sweep(REPO_ROOT / "configs" / "ablations" / "cpu_study.yaml", flags)
    assert len(cpu.grid["learning_rate"]) == 5 and cpu.grid["seed"] == [0, 1]
    variants = {(r.grid["norm"], r.grid["norm_placement"]) for r in cpu.runs}
    assert variants == {("rms", "pre"), ("layer", "pre"), ("rms", "post")} and len(cpu.runs) == 30
    assert cpu.base.name == "tiny.yaml" and cpu.runs[0].config["save_steps"] == 0

    gpu = ablate.load_sweep(REPO_ROOT / "configs" / "ablations" / "gpu_study.yaml", flags)
    lrs = gpu.grid["learning_rate"]
    assert len(lrs) == 7 and lrs[0] == 3e-4 and lrs[-1] == 3e-1 and lrs == sorted(lrs)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert all(2.9 < r < 3.4 for r in ratios)  # log-spaced: about sqrt(10) apart
    assert gpu.grid["seed"] == [0, 1, 2] and len(gpu.runs) == 168  # the size the file's header states


# ---------------------------------------------------------------------------------------------------------------------
# End to end through accelerate launch and the trainer
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("ablate_corpus")
    for name in CORPUS_MODULES:
        if (root / name).exists():
            shutil.copy(root / name, out / (name.replace("/", "_") + ".txt"))
    return out


def run_ablate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_MININTERVAL": "5"}
    return subprocess.run(
        [sys.executable, str(ABLATE), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


needs_summary = pytest.mark.skipif(not TRAINER_WRITES_SUMMARY, reason="train/train.py does not write summary.json yet")


@needs_summary
@pytest.mark.slow
def test_mini_sweep_end_to_end_then_resume_launches_nothing(corpus, tmp_path):
    overrides = {**TINY, "dataset": str(corpus), "cache_dir": str(tmp_path / "cache")}
    sweep = {"overrides": overrides, "grid": {"norm": ["rms", "layer"], "learning_rate": [1e-3, 1e-2]}}
    sweep_path = write_sweep(tmp_path / "mini.yaml", sweep)
    out = tmp_path / "sweep"
    proc = run_ablate(str(sweep_path), "--output_dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "launched 4 runs" in proc.stdout

    names = [r["name"] for r in yaml.safe_load((out / "sweep.yaml").read_text())["runs"]]
    assert names == [
        "norm=rms,learning_rate=0.001",
        "norm=rms,learning_rate=0.01",
        "norm=layer,learning_rate=0.001",
        "norm=layer,learning_rate=0.01",
    ]
    for name in names:
        run_dir = out / "runs" / name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["model"]["norm_type"] == name.split(",")[0].split("=")[1]
        assert "accelerate.commands.launch" in (run_dir / "train.log").read_text()
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"norm", "learning_rate", "final_val_loss", "best_val_loss", "diverged", "max_grad_norm"} <= set(header)
    assert len((out / "summary.csv").read_text().splitlines()) == 5
    md = (out / "report.md").read_text()
    assert "float32" in md and "placement" in md and "norm=rms vs norm=layer" in md
    links = [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) >= 5
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_MAGIC

    mtimes = {n: (out / "runs" / n / "summary.json").stat().st_mtime_ns for n in names}
    again = run_ablate(str(sweep_path), "--output_dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 finished (skipped), 0 to resume, 0 to start" in again.stdout
    assert "nothing to launch: all 4 runs finished" in again.stdout
    assert {n: (out / "runs" / n / "summary.json").stat().st_mtime_ns for n in names} == mtimes
    assert len((out / "ablate_runs.jsonl").read_text().splitlines()) == 4  # one row per launch, none new


@needs_summary
@pytest.mark.slow
def test_failed_run_is_recorded_and_the_sweep_goes_on(corpus, tmp_path):
    # The first value passes the parser but the trainer cannot load it: that run fails and the next still runs.
    overrides = {**TINY, "cache_dir": str(tmp_path / "cache")}
    sweep = {"overrides": overrides, "grid": {"dataset": [str(tmp_path / "no_such_corpus"), str(corpus)]}}
    out = tmp_path / "sweep"
    proc = run_ablate(str(write_sweep(tmp_path / "s.yaml", sweep)), "--output_dir", str(out))
    assert proc.returncode == 1
    assert "1 completed, 0 diverged, 1 failed" in proc.stdout
    failed = next(p for p in (out / "runs").iterdir() if "no_such_corpus" in p.name)
    error = (failed / "ablate_error.log").read_text()
    assert "exit code" in error and "train.py: error:" in error and "no_such_corpus" in error
    assert "Traceback" not in error  # --quiet: the launcher adds no traceback of its own
    assert (out / "report.md").is_file() and "failed" in (out / "summary.csv").read_text()
