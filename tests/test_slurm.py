"""The SLURM recipe of configs/slurm/ rehearsed on one machine: train.sbatch and node.sh run as SLURM would run them,
with stand-ins for srun and scontrol, as two "nodes" of one process each on 127.0.0.1.

The wiring test (every node's accelerate command line) runs everywhere. The rehearsal proper trains through the
recipe, stops it the two ways a cluster does (preemption: SIGTERM to every process of the job; the time limit: USR1 to
the batch script, which has srun signal the step, then requeues) and resumes it to the losses of an uninterrupted run.
It starts about thirty processes, two to three minutes of CPU: opt-in (`pytest --opt-in tests/test_slurm.py`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from synthetic_corpus import write_corpus
from trainer_runs import flags, losses, run, start, summary, wait_for_step

from train import checkpoints as ckpt
from train.config import REPO_ROOT
from train.launcher import launch_arguments
from train.run_directory import DATA_INFO, RunStatus, read_json
from train.sweep.scheduler import free_port

SLURM = REPO_ROOT / "configs" / "slurm"
JOB_ID = "4242"

# srun on one machine: the command once per node with SLURM_NODEID set. A signal it gets goes to every process of the
# step, as slurmstepd delivers it (to the whole cgroup: each node's launcher and its training processes alike).
SRUN = """#!/usr/bin/env bash
while [[ $1 == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" &
    pids+=($!)
done
tree() { local child; for child in $(ps -o pid= --ppid "$1"); do echo "$child"; tree "$child"; done; }
trap 'for pid in "${pids[@]}"; do kill -TERM "$pid" $(tree "$pid") 2>/dev/null; done' TERM
status=0
for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    wait "$pid"
    rc=$?
    if ((rc > status)); then status=$rc; fi
done
exit $status
"""
# scontrol: the job's hosts are this machine; a requeue is written down.
SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
"show hostnames") printf '127.0.0.1\\n127.0.0.1\\n' ;;
"requeue "*) echo "$2" >>"$SLURM_REHEARSAL/requeued" ;;
*) exit 1 ;;
esac
"""
# accelerate, for the wiring test: each node's command line, one argument a line.
ACCELERATE = """#!/usr/bin/env bash
printf '%s\\n' "$@" >"$SLURM_REHEARSAL/node$SLURM_NODEID"
"""


def stand_ins(directory: Path, **programs: str) -> Path:
    directory.mkdir()
    for name, text in programs.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return directory


def cluster_env(tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    """What SLURM sets for a two-node job, the stand-ins first on PATH, this interpreter's environment after them."""
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {
        **os.environ,
        "PATH": path,
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        "SLURM_REHEARSAL": str(tmp_path),
        "NORMGPT_ENV": "",  # this interpreter's environment is already first on PATH
        "NORMGPT_PROCS_PER_NODE": "1",
        "NORMGPT_ACCELERATE_CONFIG": str(REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"),
        "MASTER_PORT": str(free_port()),
        "TQDM_DISABLE": "1",
    }


def test_each_node_launches_its_rank_of_the_job(tmp_path):
    bin_dir = stand_ins(tmp_path / "bin", srun=SRUN, accelerate=ACCELERATE)
    env = cluster_env(tmp_path, bin_dir) | {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "23456"}
    out = tmp_path / "run"
    done = subprocess.run(
        ["srun", "--ntasks-per-node=1", "bash", str(SLURM / "node.sh"), str(out), "--norm", "layer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for node in (0, 1):
        argv = (tmp_path / f"node{node}").read_text().splitlines()
        assert argv[:14] == [
            "launch",
            "--config_file",
            env["NORMGPT_ACCELERATE_CONFIG"],
            "--num_machines",
            "2",
            "--machine_rank",
            str(node),
            "--num_processes",
            "2",
            "--main_process_ip",
            "10.1.2.3",
            "--main_process_port",
            "23456",
            str(REPO_ROOT / "train" / "train.py"),
        ]
        # no checkpoint in the output directory yet: a fresh start, not a resume
        assert argv[14:] == ["--output_dir", str(out), "--norm", "layer"]
    # A requeued job: its output directory holds complete checkpoints (as train/checkpoints.py decides), so it resumes.
    legacy = REPO_ROOT / "tests" / "data" / "legacy_run"
    node0 = {**env, "SLURM_NODEID": "0"}
    subprocess.run(["bash", str(SLURM / "node.sh"), str(legacy)], env=node0, check=True, timeout=120)
    assert (tmp_path / "node0").read_text().splitlines()[14:] == [
        "--output_dir",
        str(legacy),
        "--resume_from_checkpoint",
        "latest",
    ]


def test_the_data_step_builds_the_cache_once_and_refuses_a_bad_flag_in_one_line(tmp_path, capsys):
    from train import prepare as prepare_data

    corpus = write_corpus(tmp_path / "corpus")
    train_flags = flags(corpus, tmp_path / "cache", tmp_path / "not_written", max_steps=5)
    assert prepare_data.main(train_flags) == 0 and prepare_data.main(train_flags) == 0
    built, found = capsys.readouterr().out.splitlines()
    assert built.startswith(f"token cache built: {tmp_path / 'cache'}") and found.startswith("token cache found: ")
    assert built.split(": ", 1)[1] == found.split(": ", 1)[1] and not (tmp_path / "not_written").exists()
    assert prepare_data.main([*train_flags, "--no_such_flag", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "prepare: error: unrecognized arguments: --no_such_flag 1 (see --help)"
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The rehearsal


def sbatch(out: Path, train_flags: list[str]) -> list[str]:
    return ["bash", str(SLURM / "train.sbatch"), str(out), *train_flags]


def preempt(batch: subprocess.Popen) -> None:
    """What SLURM does to a preempted job: SIGTERM to every process of it, the batch script, srun, each node's launcher
    and each training process (srun then forwards its own copy to the step, so most get it twice)."""
    everyone = [psutil.Process(batch.pid), *psutil.Process(batch.pid).children(recursive=True)]
    launchers = [p for p in everyone if launch_arguments(cmdline(p)) is not None]
    assert len(launchers) == 2, [cmdline(p) for p in everyone]  # one per node, and their workers below them
    assert all(p.children() for p in launchers)
    for process in everyone:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)


def cmdline(process: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return process.cmdline()
    return []


@pytest.mark.opt_in
def test_the_recipe_trains_two_nodes_stops_like_a_cluster_and_resumes_exactly(corpus, tmp_path):
    env = cluster_env(tmp_path, stand_ins(tmp_path / "bin", srun=SRUN, scontrol=SCONTROL))
    train_flags = flags(corpus, tmp_path / "cache", None, max_steps=60, save_steps=0, eval_steps=20)

    full = tmp_path / "full"
    done = run(sbatch(full, train_flags), env=env)
    assert "token cache built" in done.stdout  # by prepare_data.py, before the launch: the ranks only opened it
    assert read_json(full / DATA_INFO)["cache_hit"]
    assert "2 process(es) on cpu" in done.stdout
    assert "ranks agree: parameters identical on all 2 processes" in done.stdout

    # Preemption: SLURM sends SIGTERM to every task (the node launchers) and to the batch script, which must wait.
    out = tmp_path / "preempted"
    batch = start(sbatch(out, train_flags), env=env)
    wait_for_step(out, 5, batch)
    preempt(batch)
    assert batch.wait(timeout=180) != 0
    stopped = summary(out)
    assert stopped.status is RunStatus.INTERRUPTED and "SIGTERM" in stopped.stop_reason
    step, path = ckpt.list_checkpoints(out)[-1]
    assert step == stopped.steps < 60
    assert sorted(p.name for p in path.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert not (tmp_path / "requeued").exists()  # SLURM itself requeues a preempted job

    # The requeued job resumes; near its time limit, USR1 to the batch script stops it and requeues it.
    batch = start(sbatch(out, train_flags), env=env)
    wait_for_step(out, 30, batch)
    batch.send_signal(signal.SIGUSR1)
    assert batch.wait(timeout=180) != 0
    assert (tmp_path / "requeued").read_text().split() == [JOB_ID]
    assert summary(out).status is RunStatus.INTERRUPTED and step < summary(out).steps < 60

    # The second requeue finishes the run: the losses of the uninterrupted one, step for step.
    done = run(sbatch(out, train_flags), env=env)
    assert "token cache found" in done.stdout and "resumed from" in done.stdout
    assert losses(out) == losses(full)
    assert summary(out).status is summary(full).status and summary(out).status.finished
