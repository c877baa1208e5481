"""Faults and hostile inputs, through the real entry point: nothing a user owns is lost, no checkpoint is poisoned or
runs code, a preempted run resumes exactly, and a resumed run is the run it claims to be."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from trainer_runs import (
    FRONT_DOOR,
    command,
    flags,
    losses,
    refused,
    run,
    start,
    stopped,
    summary,
    train_here,
    wait_for_step,
)

from train import checkpoints as ckpt
from train.config import REPO_ROOT
from train.run_directory import MetricsLog, RunStatus


@pytest.fixture(scope="module")
def finished(corpus, cache, tmp_path_factory) -> Path:
    """A completed 12-step run with checkpoints at 6 and 12, copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run(command(corpus, cache, out))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".normgpt.lock"))
    return dst


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------------------------
# Output directories


def test_overwrite_never_removes_what_normgpt_did_not_write(corpus, cache, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("\\chapter{years of work}")
    (out / "code").mkdir()
    (out / "code" / "analysis.py").write_text("print(1)")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    message = refused(flags(corpus, cache, out, overwrite_output_dir="true"))
    assert "it holds files normgpt did not write (code, thesis.tex)" in message
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_overwrite_refuses_the_working_directory_its_parents_and_home(corpus, cache, tmp_path, where, monkeypatch):
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    target = {"cwd": work, "parent": work.parent, "home": tmp_path / "home"}[where]
    (target / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')  # it looks like a run directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    given = "." if where == "cwd" else str(target)
    message = refused(flags(corpus, cache, Path(given), overwrite_output_dir="true"))
    assert "--overwrite_output_dir refuses" in message
    assert (target / "metrics.jsonl").is_file()


def user_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["model files", "with --overwrite_output_dir", "a link to a source tree", "cwd"])
def test_a_directory_that_holds_no_run_is_refused_not_adopted(corpus, cache, tmp_path, monkeypatch, case):
    """A fresh run into a folder of someone else's files would have replaced or deleted them at its end."""
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "config.json").write_text('{"mine": 1}')
    (mine / "model.safetensors").write_text("W")
    (mine / "my-q4.gguf").write_text("G")
    (mine / "src" / "app.py").write_text("print(1)")
    out = {"a link to a source tree": tmp_path / "link", "cwd": Path(".")}.get(case, mine)
    (tmp_path / "link").symlink_to(mine, target_is_directory=True)
    monkeypatch.chdir(mine)
    before = user_files(tmp_path)
    overwrite = {"overwrite_output_dir": "true"} if case == "with --overwrite_output_dir" else {}
    message = refused(flags(corpus, cache, out, **overwrite))
    assert message == (
        f"output_dir '{out}' is not empty and holds no normgpt run (config.json, model.safetensors, my-q4.gguf, "
        "src); a run writes only into a new or empty directory: pass another --output_dir"
    )
    assert user_files(tmp_path) == before and not (mine / ".normgpt.lock").exists()


def test_staging_names_are_never_written_through_a_planted_link(corpus, cache, finished, tmp_path):
    """Links planted at the names of the final model's and a checkpoint's scratch directories (and of the lock):
    the run removes the links, never writes through them, and the folders they point at stay empty."""
    out = copy_run(finished, tmp_path / "run")
    outside = {name: tmp_path / f"outside{i}" for i, name in enumerate([".final.tmp", "checkpoint-14.tmp"])}
    for name, target in outside.items():
        target.mkdir()
        (out / name).symlink_to(target, target_is_directory=True)
    (out / "mine-q4.gguf").write_text("G")  # a user's file beside the run: publishing never deletes it
    train_here(flags(corpus, cache, out, resume_from_checkpoint="latest", max_steps=14))
    assert summary(out).status is RunStatus.COMPLETED and (out / "checkpoint-14" / "manifest.json").is_file()
    assert all(not any(target.iterdir()) for target in outside.values())
    assert not [name for name in outside if (out / name).is_symlink()]
    assert (out / "mine-q4.gguf").read_text() == "G"
    # The lock is opened for writing: a link at its name is refused, and what it points at is left alone.
    (tmp_path / "precious").write_text("keep")
    (out / ".normgpt.lock").unlink()
    (out / ".normgpt.lock").symlink_to(tmp_path / "precious")
    message = refused(flags(corpus, cache, out, resume_from_checkpoint="latest", max_steps=16))
    assert message.startswith(f"'{out / '.normgpt.lock'}' is not normgpt's lock file (a link or a directory)")
    assert (tmp_path / "precious").read_text() == "keep"


def test_overwrite_replaces_a_run_directory_and_only_its_files(corpus, cache, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    old_metrics = (out / "metrics.jsonl").read_bytes()
    train_here(flags(corpus, cache, out, overwrite_output_dir="true", max_steps=4, save_steps=0))
    assert (out / "metrics.jsonl").read_bytes() != old_metrics
    assert not list(out.glob("checkpoint-*")) and summary(out).steps == 4
    # --save_steps 0 keeps no checkpoint, not even the final one: such a run is finished for good, and says so.
    assert refused(flags(corpus, cache, out, max_steps=8)) == (
        f"output_dir '{out}' already holds a completed run (4 of 4 steps), with no checkpoint to extend it from; "
        "pass --overwrite_output_dir to replace it, or another --output_dir"
    )
    assert refused(flags(corpus, cache, out, max_steps=8, resume_from_checkpoint="latest")) == (
        f"the run in '{out}' completed without keeping a checkpoint (--save_steps 0), so it cannot be extended; "
        "train a longer run with --overwrite_output_dir or another --output_dir"
    )


def test_output_dir_that_is_a_file_or_cannot_be_created_is_refused_before_data_work(cache, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    never_read = tmp_path / "no-such-dataset"  # the data error would come first if the output check came later
    message = refused(flags(never_read, cache, a_file))
    assert message == f"output_dir '{a_file}' is a file, not a directory; pass a directory path"
    message = refused(flags(never_read, cache, a_file / "run"))
    assert "cannot be created" in message and a_file.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_refused(cache, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "is not writable" in refused(flags(tmp_path / "nope", cache, ro / "run"))
    finally:
        ro.chmod(0o755)


def test_two_runs_into_one_directory_the_second_fails_at_once(corpus, cache, tmp_path):
    out = tmp_path / "shared"
    first = start(command(corpus, cache, out, max_steps=400, save_steps=0, eval_steps=0))
    try:
        wait_for_step(out, 2, first)
        assert "is in use by another normgpt run" in refused(flags(corpus, cache, out, overwrite_output_dir="true"))
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    steps = [r["step"] for r in MetricsLog(out / "metrics.jsonl").rows() if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, in order, none interleaved


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite values never reach the weights or a checkpoint


def test_non_finite_steps_are_skipped_and_stop_the_run_within_a_step(corpus, cache, tmp_path):
    out = tmp_path / "nan"
    proc = run(
        command(corpus, cache, out, learning_rate=1e3, warmup_steps=0, logging_steps=10, save_steps=1, max_steps=200)
    )
    s = summary(out)
    assert s.status is RunStatus.DIVERGED and "non-finite gradient norm" in s.stop_reason, proc.stdout[-500:]
    first_bad = min(r["step"] for r in MetricsLog(out / "metrics.jsonl").rows() if r.get("loss") is None and "lr" in r)
    assert s.steps <= first_bad + 10  # patience 10, then at most one step late
    assert s.skipped_steps >= 10
    kept = ckpt.list_checkpoints(out)
    assert kept, "the newest finite checkpoints must survive rotation"
    for _, path in kept:
        assert all(torch.isfinite(t).all() for t in load_file(path / "model.safetensors").values()), path
    for name in ("summary.json", "metrics.jsonl"):
        text = (out / name).read_text()
        for line in text.splitlines() if name.endswith("jsonl") else [text]:
            strict_json(line)  # non-finite numbers are null, never a bare NaN


# ---------------------------------------------------------------------------------------------------------------------
# Damaged and hostile checkpoints


class Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(Payload(marker), f)


def checkpoint_files() -> list[str]:
    return ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json"]


@pytest.mark.parametrize("name", checkpoint_files())
def test_a_payload_in_any_checkpoint_file_runs_nothing_and_is_refused(corpus, cache, finished, tmp_path, name):
    out = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "PWNED"
    target = out / "checkpoint-6" / name
    plant(target, marker)
    before = (out / "summary.json").read_bytes()
    resume = {"resume_from_checkpoint": str(out / "checkpoint-6"), "max_steps": 20}  # a completed run, extended
    message = refused(flags(corpus, cache, out, **resume))
    assert f"'{target}' does not match the checkpoint's manifest" in message
    # An attacker who also rewrites the manifest gets no further: the unpickler loads plain data only.
    ckpt.write_manifest(out / "checkpoint-6", 6)
    message = refused(flags(corpus, cache, out, **resume))
    assert str(target) in message
    assert not marker.exists()
    assert (out / "summary.json").read_bytes() == before


def test_random_bytes_in_the_optimizer_state_are_refused_naming_the_file(corpus, cache, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    with open(out / "checkpoint-12" / "optimizer.bin", "ab") as f:
        f.write(os.urandom(4096))
    before = (out / "summary.json").read_bytes()
    message = refused(flags(corpus, cache, out, resume_from_checkpoint="latest", max_steps=20))
    assert "optimizer.bin' does not match the checkpoint's manifest" in message
    assert (out / "summary.json").read_bytes() == before


def test_legacy_checkpoint_with_a_hostile_pickle_runs_nothing(corpus, cache, tmp_path):
    """Checkpoints of normgpt < 0.2 have no manifest: the weights-only unpickler is what protects them."""
    out = tmp_path / "legacy"
    shutil.copytree(Path(__file__).parent / "data" / "legacy_run", out)
    marker = tmp_path / "PWNED"
    plant(out / "checkpoint-6" / "custom_checkpoint_1.pkl", marker)
    message = refused(flags(corpus, cache, out, resume_from_checkpoint=str(out / "checkpoint-6"), max_steps=20))
    assert "custom_checkpoint_1.pkl" in message and "not a plain-data checkpoint file" in message
    assert not marker.exists()


def test_latest_skips_an_incomplete_checkpoint_and_a_path_to_one_is_refused(corpus, cache, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    (out / "checkpoint-99").mkdir()
    assert ckpt.resolve_checkpoint("latest", out) == out / "checkpoint-12"
    message = refused(flags(corpus, cache, out, resume_from_checkpoint=str(out / "checkpoint-99")))
    assert "has no manifest.json (it was never completely written)" in message


# ---------------------------------------------------------------------------------------------------------------------
# A checkpoint belongs to its run; a finished run is finished


def test_another_runs_checkpoint_is_never_resumed_and_init_from_starts_a_new_run_from_it(
    corpus, cache, finished, tmp_path
):
    before = user_files(finished)
    new = tmp_path / "new"
    message = refused(flags(corpus, cache, new, resume_from_checkpoint=str(finished / "checkpoint-12"), seed=3))
    assert message == (
        f"checkpoint '{finished / 'checkpoint-12'}' is not in output_dir '{new}': a run resumes only its own "
        f"checkpoints; to start a new run from its weights pass --init_from {finished / 'checkpoint-12'} (and a new "
        "--output_dir)"
    )
    assert not new.exists()
    message = refused(flags(corpus, cache, new, init_from=finished / "checkpoint-12", hidden_size=64))
    assert message.startswith(f"cannot start from '{finished / 'checkpoint-12'}': this run differs in hidden_size 32")
    # Weights and AdamW moments from the other run, a new seed, its tokenizer loaded from the finished run's folder
    # (with a --vocab_size that cannot apply: said in one line, and the real vocabulary recorded).
    start_from = {"init_from": finished / "checkpoint-12", "tokenizer": finished, "vocab_size": 512}
    printed = train_here(
        [*flags(corpus, cache, new, **start_from, seed=3, max_steps=4, save_steps=6), "--init_optimizer_state"]
    )
    assert "note: --vocab_size 512 not used: the model's vocabulary is the tokenizer's (320 tokens" in printed
    record = summary(new)
    assert record.init_from == {
        "checkpoint": str((finished / "checkpoint-12").resolve()),
        "step": 12,
        "optimizer_state": True,
    }
    assert record.init_val_loss == summary(finished).final_val_loss  # it started from exactly those weights
    config = yaml.safe_load((new / "run_config.yaml").read_text())
    assert config["training"]["init_from"] == str(finished / "checkpoint-12") and config["model"]["vocab_size"] == 320
    # A run shorter than --save_steps still keeps its final step, so it can be extended; reusing it says "completed".
    assert sorted(p.name for p in new.glob("checkpoint-*")) == ["checkpoint-4"]
    assert "already holds a completed run (4 of 4 steps); pass --resume_from_checkpoint latest with a larger" in (
        refused(flags(corpus, cache, new, **start_from, seed=3, max_steps=4, save_steps=6))
    )
    assert user_files(finished) == before


def test_a_completed_run_is_called_completed_and_resuming_it_unchanged_does_nothing(corpus, cache, finished, tmp_path):
    out = copy_run(finished, tmp_path / "run")
    assert refused(flags(corpus, cache, out)) == (
        f"output_dir '{out}' already holds a completed run (12 of 12 steps); pass --resume_from_checkpoint latest "
        "with a larger --max_steps to extend it, --overwrite_output_dir to replace it, or another --output_dir"
    )
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    printed = train_here(flags(corpus, cache, out, resume_from_checkpoint="latest"))
    assert printed.strip() == (
        f"train.py: the run in '{out}' already completed at step 12 of 12; nothing to do (a larger --max_steps "
        "extends it; --overwrite_output_dir, without --resume_from_checkpoint, trains it again)"
    )
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before


class Killed(BaseException):
    """What a kill -9 does to the process, as far as the run directory can tell."""


def test_a_kill_while_the_final_model_is_exported_repeats_no_evaluation(corpus, cache, tmp_path, monkeypatch):
    import train.trainer

    out = tmp_path / "run"
    real = train.trainer.save_final_model

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(train.trainer, "save_final_model", killed)
    with pytest.raises(Killed):
        train_here(flags(corpus, cache, out, max_steps=12, save_steps=6))
    assert not (out / "summary.json").exists() and (out / "checkpoint-12").is_dir()
    monkeypatch.setattr(train.trainer, "save_final_model", real)
    train_here(flags(corpus, cache, out, max_steps=12, save_steps=6, resume_from_checkpoint="latest"))
    rows = MetricsLog(out / "metrics.jsonl").rows()
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 6, 12]  # the final evaluation logged once
    assert summary(out).status is RunStatus.COMPLETED and (out / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Resume integrity


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"hidden_size": 64}, "hidden_size 32 -> 64"),
        ({"norm": "layer"}, "norm_type 'rms' -> 'layer'"),
        ({"per_device_train_batch_size": 8}, "per_device_train_batch_size 4 -> 8"),
        ({"learning_rate": 1e-2}, "learning_rate 0.003 -> 0.01"),
        ({"seed": 1}, "seed 0 -> 1"),
    ],
)
def test_resume_with_different_settings_is_refused_before_anything_is_written(
    corpus, cache, finished, tmp_path, change, expected
):
    out = copy_run(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    message = refused(flags(corpus, cache, out, resume_from_checkpoint="latest", max_steps=20, **change))
    assert message.startswith(f"cannot resume from '{out / 'checkpoint-12'}' with different settings: ")
    assert expected in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".normgpt.lock"} == {
        k: v for k, v in before.items() if k != ".normgpt.lock"
    }


def test_extending_max_steps_resumes_and_drops_damaged_metrics_lines(corpus, cache, finished, tmp_path):
    """A completed run is extended from its final checkpoint. A line nested 100,000 deep (which would exhaust the
    parser's stack) and a torn last line (what a kill mid-write leaves) are dropped like any damaged line."""
    out = copy_run(finished, tmp_path / "run")
    with open(out / "metrics.jsonl", "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
        f.write('{"step": 13, "loss": 4.')
    with pytest.warns(UserWarning) as warned:
        train_here(flags(corpus, cache, out, resume_from_checkpoint="latest", max_steps=16))
    problems = " ".join(str(w.message) for w in warned)
    assert "is nested too deeply to read; dropped" in problems and "torn last line" in problems
    assert list(losses(out)) == list(range(1, 17)) and summary(out).status is RunStatus.COMPLETED


# ---------------------------------------------------------------------------------------------------------------------
# Preemption


def test_sigterm_checkpoints_and_resume_repeats_the_uninterrupted_losses(corpus, cache, tmp_path):
    common = {"max_steps": 60, "save_steps": 0, "eval_steps": 20}
    full = tmp_path / "full"
    run(command(corpus, cache, full, **common))
    out = tmp_path / "preempted"
    proc = start(command(corpus, cache, out, **common))
    wait_for_step(out, 10, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    s = summary(out)
    assert s.status is RunStatus.INTERRUPTED and "SIGTERM" in s.stop_reason
    assert ckpt.list_checkpoints(out)[-1][0] == s.steps < 60
    run(command(corpus, cache, out, resume_from_checkpoint="latest", **common))
    assert losses(out) == losses(full)
    assert summary(out).status is summary(full).status and summary(out).status.finished


def test_a_repeated_sigterm_is_the_same_request_and_a_second_ctrl_c_is_final(tmp_path):
    """A cluster signals every process of a job, launcher and training processes alike, and torchrun then forwards the
    signal once more: a checkpointing trainer must outlive the second SIGTERM (or SIGUSR1). Ctrl-C twice still quits."""
    from train.config import parse_args
    from train.trainer import STOP_SIGNALS, Trainer

    trainer = Trainer(parse_args(["--output_dir", str(tmp_path / "run")]))
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        trainer._install_signal_handlers()
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.raise_signal(sig)
            signal.raise_signal(sig)  # with the default action back, this would end pytest here
            assert trainer.signal_seen == sig and signal.getsignal(sig) == trainer._on_signal
        signal.raise_signal(signal.SIGINT)
        assert trainer.signal_seen == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def ddp_launcher() -> list[str]:
    """The two-process launch the README gives: the shipped CPU config (gloo, on any machine), so these runs are also
    its launch test (tests/test_launch.py checks how accelerate reads it)."""
    config = str(REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--main_process_port", "0"]


def test_sigterm_under_ddp_stops_every_rank_at_the_same_step_and_resumes_exactly(corpus, cache, tmp_path):
    common = {"max_steps": 40, "save_steps": 0, "eval_steps": 0}
    full = tmp_path / "full"
    done = run(command(corpus, cache, full, launcher=ddp_launcher(), **common))
    # real DDP over gloo: both ranks' tokens are counted, and the replicas end identical
    assert "2 process(es)" in done.stdout and "ranks agree: parameters identical on all 2 processes" in done.stdout
    assert [r["tokens"] for r in MetricsLog(full / "metrics.jsonl").rows() if "loss" in r][-1] == 40 * 2 * 4 * 32
    out = tmp_path / "preempted"
    proc = start(command(corpus, cache, out, launcher=ddp_launcher(), **common))
    wait_for_step(out, 8, proc)
    proc.send_signal(signal.SIGTERM)  # the launcher forwards it to both ranks
    proc.wait(timeout=120)
    s = summary(out)
    assert s.status is RunStatus.INTERRUPTED and s.steps < 40
    step, path = ckpt.list_checkpoints(out)[-1]
    assert step == s.steps and sorted(p.name for p in path.glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    assert len(json.loads((path / ckpt.STATE).read_text())["kernels"]) == 2  # each rank's kernel record
    # The resume goes through the front door, `accelerate launch -m train train`: the same run, exactly.
    resume = dict(launcher=ddp_launcher(), entry=FRONT_DOOR, resume_from_checkpoint="latest")
    run(command(corpus, cache, out, **resume, **common))
    assert losses(out) == losses(full)


def test_a_run_killed_before_its_first_checkpoint_gets_a_hint_not_a_dead_end(corpus, cache, tmp_path):
    out = tmp_path / "killed"
    proc = start(command(corpus, cache, out, max_steps=400, save_steps=0, eval_steps=0))
    wait_for_step(out, 2, proc)
    proc.kill()
    proc.wait()
    again = refused(flags(corpus, cache, out))
    assert "(it stopped before its first checkpoint)" in again and "--overwrite_output_dir" in again
    latest = refused(flags(corpus, cache, out, resume_from_checkpoint="latest"))
    assert "start it again with --overwrite_output_dir" in latest
    run(command(corpus, cache, out, overwrite_output_dir="true", max_steps=4, save_steps=0))
    assert summary(out).status is RunStatus.COMPLETED


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("block_size", 1, "block_size must be >= 2"),
        ("logging_steps", 0, "logging_steps must be > 0, got 0"),
        ("learning_rate", "inf", "learning_rate must be a finite number, got inf"),
        ("max_grad_norm", "nan", "max_grad_norm must be a finite number, got nan"),
        ("adam_epsilon", -1, "adam_epsilon must be > 0, got -1.0"),
    ],
)
def test_bad_values_are_one_line_before_anything_is_written(corpus, cache, tmp_path, flag, value, message):
    out = tmp_path / "run"
    assert message in refused(flags(corpus, cache, out, **{flag: value}))
    assert not out.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (  # a validation split with fewer tokens than one window: found only after the data is prepared
            {"validation_split_percentage": 0.5, "block_size": 1024, "max_position_embeddings": 1024},
            "the validation split has 594 tokens but evaluation needs at least 1024",
        ),
        (
            {"max_train_bytes": 1, "validation_split_percentage": 0},
            "the train split has 2 tokens but one step needs 128",
        ),
        ({"rms_impl": "triton"}, "--rms_impl triton cannot run on this machine's cpu: it needs Triton and a CUDA"),
    ],
)
def test_inputs_found_bad_late_are_still_refused_before_anything_is_written(
    corpus, cache, tmp_path, monkeypatch, change, message
):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the kernel's interpreter would run it on the CPU
    out = tmp_path / "run"
    assert message in refused(flags(corpus, cache, out, **change))
    assert not out.exists()  # so the corrected command just works


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))


def test_a_full_disk_is_one_line_and_loses_nothing(corpus, cache, finished, tmp_path, monkeypatch):
    import accelerate

    import train.run_directory

    # While a checkpoint is saved: the partial one is removed, the run says where it can resume.
    out = tmp_path / "run"
    real = accelerate.Accelerator.save_state

    def fills_the_disk(self, output_dir, **kwargs):
        if output_dir.endswith("checkpoint-6.tmp"):
            Path(output_dir, "model.safetensors").write_bytes(b"half a model")
            no_space(Path(output_dir, "optimizer.bin"))
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", fills_the_disk)
    message = stopped(flags(corpus, cache, out, max_steps=12, save_steps=3))
    assert message == (
        f"the run stopped at step 6: No space left on device ('{out / 'checkpoint-6.tmp' / 'optimizer.bin'}'); every "
        "file written before is whole and checkpoint-3 is its newest checkpoint: free space, then resume with "
        "--resume_from_checkpoint latest"
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert summary(out).status is RunStatus.FAILED and "No space left" in summary(out).stop_reason
    # While a resume writes its config: nothing of the run changes.
    out = copy_run(finished, tmp_path / "finished")
    before = user_files(out)
    monkeypatch.setattr(train.run_directory, "atomic_write", no_space)
    message = refused(flags(corpus, cache, out, resume_from_checkpoint="latest", max_steps=20))
    assert message.startswith(f"the run could not start: No space left on device ('{out / 'run_config.yaml'}'); ")
    assert message.endswith(
        "checkpoint-12 is its newest checkpoint: free space, then resume with --resume_from_checkpoint latest"
    )
    assert user_files(out) == before


def test_json_outputs_are_strict_even_with_non_finite_values(tmp_path):
    from train.atomic_io import dumps_strict
    from train.run_directory import MetricsLog as Log
    from train.run_directory import Summary

    Log(tmp_path / "m.jsonl").append({"step": 3, "loss": math.nan, "grad_norm": math.inf})
    row = strict_json((tmp_path / "m.jsonl").read_text())
    assert row == {"step": 3, "loss": None, "grad_norm": None, "nonfinite": ["loss", "grad_norm"]}
    s = Summary(status=RunStatus.DIVERGED, steps=3, max_steps=9, max_grad_norm=math.inf)
    assert strict_json(dumps_strict(s.to_dict()))["max_grad_norm"] is None
