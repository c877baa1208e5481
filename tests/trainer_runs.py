"""Running the real trainer from tests: a tiny model on the synthetic corpus, each run a few seconds on 2 cores."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from train.config import REPO_ROOT
from train.run_directory import MetricsLog, Summary

TRAIN = str(REPO_ROOT / "train" / "train.py")
FRONT_DOOR = ["-m", "train", "train"]
TINY = {
    "vocab_size": 320,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "block_size": 32,
    "max_position_embeddings": 32,
    "per_device_train_batch_size": 4,
    "max_steps": 12,
    "warmup_steps": 3,
    "learning_rate": 3e-3,
    "logging_steps": 1,
    "eval_steps": 6,
    "max_eval_batches": 2,
    "seed": 0,
    "sample_max_new_tokens": 0,
    "save_steps": 6,
}


def flags(corpus: Path, cache: Path, out: Path, **overrides) -> list[str]:
    args = {**TINY, "dataset": corpus, "cache_dir": cache, "output_dir": out, **overrides}
    return [item for k, v in args.items() if v is not None for item in (f"--{k}", str(v))]


def command(
    corpus: Path, cache: Path, out: Path, launcher: list[str] | None = None, entry: list[str] | None = None, **overrides
) -> list[str]:
    """The trainer's command line: `python train/train.py ...` by default; `entry=FRONT_DOOR` starts it as
    `python -m train train ...` (what `accelerate launch -m train train` runs)."""
    return [*(launcher or [sys.executable]), *(entry or [TRAIN]), *flags(corpus, cache, out, **overrides)]


def refused(argv: list[str]) -> str:
    """Run the entry point in this process (no interpreter start: refusals are checked in a second) and return the
    one line a bad input gets; the exit code must be 2 and nothing else may be printed to stderr."""
    from train.train import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code == 2, f"exit {code}, wanted 2\n{err.getvalue()[-3000:]}"
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err.getvalue()[-3000:]
    return lines[0].removeprefix("train.py: error: ")


def stopped(argv: list[str]) -> str:
    """Like `refused`, for a run that stops on an error after it began training: its progress bar may precede the
    one line it ends with."""
    from train.train import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code == 2, f"exit {code}, wanted 2\n{err.getvalue()[-3000:]}"
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert lines[-1].startswith("train.py: error: ") and "Traceback" not in err.getvalue(), err.getvalue()[-3000:]
    assert not [line for line in lines[:-1] if "error" in line], err.getvalue()[-3000:]
    return lines[-1].removeprefix("train.py: error: ")


def train_here(argv: list[str], code: int = 0) -> str:
    """Run the entry point in this process (no interpreter start) and return what it printed; its exit code must be
    `code`."""
    from train.train import main

    printed, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(err):
        got = main(argv)
    assert got == code, f"exit {got}, wanted {code}\n{err.getvalue()[-3000:]}"
    return printed.getvalue()


def run(cmd: list[str], code: int = 0, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == code, (
        f"exit {proc.returncode}, wanted {code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a bad input gets (and nothing else on stderr)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0].removeprefix("train.py: error: ")


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in MetricsLog(out / "metrics.jsonl").rows() if "loss" in r}


def summary(out: Path) -> Summary:
    return Summary.read(out)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    start = time.time()
    while not any(r["step"] >= step for r in MetricsLog(out / "metrics.jsonl").rows() if "loss" in r):
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read() if proc.stderr else ''}"
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.02)


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, **kwargs.pop("env", {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)
