"""Launching a sweep's runs: one `accelerate launch` per run, over device slots.

With several GPUs each run gets one (a slot is a CUDA_VISIBLE_DEVICES value) and as many runs go at once as there
are GPUs; otherwise runs go one after another. Each launch is its own process group. Stopping it sends SIGTERM once
to each trainer under the launcher, never to the launcher: accelerate >= 1.16's launcher answers SIGTERM by
terminating its child's process tree and killing it 5 s later (a second signal, and too soon for a checkpoint), and
older ones die of it at once; every one exits by itself when its trainer does. Whatever of the group is left after
a grace period gets SIGKILL. The status of a launch is what the summary.json it wrote says: a non-zero exit is a
failure unless that summary says the run was interrupted (the trainer exits non-zero when a signal stops it, and
`accelerate launch` turns every non-zero exit into 1).

`runs_per_gpu` K gives each GPU K slots: K runs at once on it, each its own process (small models leave a large GPU
mostly idle). Without GPUs, K runs at once share the CPU cores, each told its share of the threads
(NORMGPT_CPU_THREADS, which the trainer honours).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from train.arguments import REPO_ROOT
from train.hardware import CPU_THREADS_ENV, available_cores
from train.output_dir import OutputDirError
from train.run_directory import ERROR_LOG, SUMMARY, TRAIN_LOG, RunStatus, load_run
from train.sweep.directory import Launch, append_launch, run_dir
from train.sweep.plan import Action, clear_for_restart
from train.sweep.spec import RunSpec

TRAIN = REPO_ROOT / "train" / "train.py"
STDERR_TAIL_BYTES = 64 * 1024
STOP_GRACE_SECONDS = 60.0  # time a stopped run gets to write its checkpoint and summary
PROGRESS_SECONDS = 5.0  # how often the progress bar shows each active run's step


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA: run on whatever the trainer picks
        return 0


def gpu_slots() -> list[str | None]:
    """One slot per visible GPU when there are several (the CUDA_VISIBLE_DEVICES value for it), else one slot."""
    count = gpu_count()
    if count <= 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def device_slots(runs_per_gpu: int = 1) -> list[str | None]:
    """`gpu_slots`, each `runs_per_gpu` times, interleaved so that the first runs spread over the GPUs."""
    return [slot for _ in range(runs_per_gpu) for slot in gpu_slots()]


def cpu_threads(runs_per_gpu: int) -> int | None:
    """The threads each of K runs at once gets on the CPU (the cores split evenly); None for one run at a time, or
    where NORMGPT_CPU_THREADS is already set (the user's choice)."""
    if runs_per_gpu <= 1 or os.environ.get(CPU_THREADS_ENV):
        return None
    return max(1, available_cores() // runs_per_gpu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    spec: RunSpec, directory: Path, action: Action, parallel: bool, accelerate_config: str | None = None
) -> list[str]:
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        launcher += ["--config_file", accelerate_config]
    launcher += ["--num_processes", "1", "--num_machines", "1"]
    if parallel:
        # Pin the GPU through CUDA_VISIBLE_DEVICES; 'all' keeps an accelerate config's gpu_ids from overriding it,
        # and a port of its own keeps concurrent launches from colliding if the config makes them torchrun.
        launcher += ["--gpu_ids", "all", "--main_process_port", str(free_port())]
    cmd = [*launcher, "--quiet", str(TRAIN), *spec.args, "--output_dir", str(directory.resolve())]
    if action is Action.RESUME:
        cmd += ["--resume_from_checkpoint", "latest"]
    return cmd


def command_line(cmd: Sequence[str], slot: str | None, threads: int | None = None) -> str:
    threads_env = f"{CPU_THREADS_ENV}={threads} " if threads is not None else ""
    return threads_env + (f"CUDA_VISIBLE_DEVICES={slot} " if slot is not None else "") + shlex.join(cmd)


def summary_stamp(directory: Path) -> tuple[int, int] | None:
    """Identity of the summary.json now in `directory` (it is replaced by a rename, so a new one has a new inode)."""
    try:
        st = (directory / SUMMARY).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def launch_status(exit_code: int, directory: Path, before: tuple[int, int] | None) -> tuple[RunStatus, str | None]:
    """(status, why it failed) of a launch that ended with `exit_code`; only a summary it wrote itself counts."""
    run = load_run(directory)
    summary = run.summary if summary_stamp(directory) not in (None, before) else None
    if summary is None:
        why = "; ".join(run.problems[:1]) or "it wrote no summary.json"
        return RunStatus.FAILED, f"exit code {exit_code}" if exit_code else f"exit code 0 but {why}"
    if summary.status is RunStatus.INTERRUPTED:
        return RunStatus.INTERRUPTED, None
    if exit_code:
        return RunStatus.FAILED, f"exit code {exit_code} (summary.json says {summary.status})"
    if summary.status is RunStatus.FAILED:
        return RunStatus.FAILED, f"summary.json says failed ({summary.stop_reason or 'no reason given'})"
    return summary.status, None


def tail_lines(data: bytes, n: int = 40) -> list[str]:
    """The last n lines, with progress-bar redraws (carriage returns) reduced to their final state."""
    lines = [line.split("\r")[-1].rstrip() for line in data.decode("utf-8", "replace").split("\n")]
    return [line for line in lines if line][-n:]


@dataclass
class Outcome:
    spec: RunSpec
    status: RunStatus
    exit_code: int
    seconds: float


@dataclass
class Launcher:
    """One launch of the trainer into one run directory: its process, its log and the end of its stderr."""

    spec: RunSpec
    directory: Path
    action: Action
    slot: str | None
    cmd: list[str]
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = None
    tail: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    before: tuple[int, int] | None = None
    stopped: set[int] = field(default_factory=set)  # pids `stop_trainers` sent SIGTERM to
    threads: int | None = None  # CPU threads when runs share the cores (`cpu_threads`)

    def start(self) -> None:
        if self.action is Action.FRESH:
            clear_for_restart(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / ERROR_LOG).unlink(missing_ok=True)
        self.before = summary_stamp(self.directory)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.slot
        if self.threads is not None:
            env[CPU_THREADS_ENV] = str(self.threads)
        self.log = (self.directory / TRAIN_LOG).open("ab")  # append: a resumed run keeps its earlier attempts' log
        when = f"{datetime.now():%Y-%m-%d %H:%M:%S}"
        line = command_line(self.cmd, self.slot, self.threads)
        self.log.write(f"\n=== ablate.py {when} ({self.action}): {line}\n".encode())
        self.log.flush()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.PIPE, env=env, start_new_session=True)

    def finish(self) -> tuple[Outcome, str | None]:
        """Copy the child's stderr into train.log as it comes (keeping its end), wait for the exit, and judge it."""
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self.log.write(chunk)
            self.log.flush()
            self.tail.extend(chunk)
            del self.tail[:-STDERR_TAIL_BYTES]
        code = self.proc.wait()
        seconds = time.monotonic() - self.started
        self.log.write(f"=== ablate.py: exit code {code} after {seconds:.1f} s\n".encode())
        self.log.close()
        status, why = launch_status(code, self.directory, self.before)
        return Outcome(self.spec, status, code, seconds), why

    def signal(self, signum: int) -> None:
        """`signum` to the whole launch: the launcher's process group."""
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def stop_trainers(self) -> None:
        """SIGTERM, once, to each trainer of the launch: the processes of its group that the launcher started (or that
        outlived it), never the launcher. A launcher that has started nothing yet gets it itself (it has nothing to
        protect, and dies of it). Called again while the launch stops, so that a trainer started meanwhile gets it."""
        import psutil

        group = {}
        for proc in psutil.process_iter(["pid", "ppid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.info["pid"]) == self.proc.pid:
                    group[proc.info["pid"]] = proc.info["ppid"]
        leader = self.proc.pid
        trainers = [pid for pid, parent in group.items() if pid != leader and (parent == leader or parent not in group)]
        if not trainers and leader in group and not self.stopped:
            trainers = [leader]
        for pid in trainers:
            if pid not in self.stopped:
                self.stopped.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def running(self) -> bool:
        """Whether anything of the launch's process group is left. The launcher may be gone (it dies at once on
        SIGTERM) while the trainer under it still writes its checkpoint: the group, not the launcher, is the run."""
        self.proc.poll()  # reap an exited launcher, which would otherwise linger in the group as a zombie
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the launch (its trainers first, `stop_all`), then kill what is left of its group after `grace`."""
        stop_all([self], grace)


def stop_all(launchers: Sequence[Launcher], grace: float) -> None:
    """SIGTERM to every trainer at once (each then finishes its step, writes a checkpoint and a summary saying
    `interrupted`, and its launcher exits after it), then SIGKILL to whatever is left after `grace`, or at once on a
    second Ctrl-C. SIGTERM rather than SIGINT: a job started in the background of a shell inherits SIGINT ignored."""
    deadline = time.monotonic() + grace
    try:
        while True:
            for launcher in launchers:
                launcher.stop_trainers()
            if not any(launcher.running() for launcher in launchers) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: do not wait for checkpoints
    for launcher in launchers:
        if launcher.running():
            launcher.signal(signal.SIGKILL)
        launcher.proc.wait()


def record(out_dir: Path, launcher: Launcher, outcome: Outcome, why: str | None, stopped: bool) -> None:
    """A row in the launch log; for a failure this tool did not cause, ablate_error.log with the end of stderr."""
    row = Launch(
        name=outcome.spec.name,
        action=str(launcher.action),
        slot=launcher.slot,
        finished=datetime.now().isoformat(timespec="seconds"),
        seconds=round(outcome.seconds, 2),
        exit_code=outcome.exit_code,
        status=outcome.status.value,
    )
    append_launch(out_dir, row)
    if outcome.status is RunStatus.FAILED and not stopped:
        text = [
            f"command: {command_line(launcher.cmd, launcher.slot, launcher.threads)}",
            f"result: {why}",
            "--- end of stderr ---",
        ]
        with contextlib.suppress(OSError):  # a directory that cannot be written: the launch log and stdout say it
            (launcher.directory / ERROR_LOG).write_text("\n".join([*text, *tail_lines(bytes(launcher.tail))]) + "\n")


class Scheduler:
    """Runs `(spec, action)` launches over device slots (`runs_per_gpu` per GPU, or sharing the CPU), with a
    progress bar; Ctrl-C or SIGTERM stops them all."""

    def __init__(
        self,
        out_dir: Path,
        accelerate_config: str | None = None,
        slots: list[str | None] | None = None,
        runs_per_gpu: int = 1,
    ):
        self.out_dir = Path(out_dir)
        self.accelerate_config = accelerate_config
        self.slots = device_slots(runs_per_gpu) if slots is None else slots
        self.threads = cpu_threads(runs_per_gpu)
        self.free: queue.Queue[str | None] = queue.Queue()
        for slot in self.slots:
            self.free.put(slot)
        self.active: dict[str, Launcher] = {}
        self.lock = threading.Lock()
        self.stopping = False

    def launch(self, spec: RunSpec, action: Action) -> Outcome | None:
        """One run, start to finish, in a worker thread; None when the sweep was stopped before it started."""
        slot = self.free.get()  # a worker exists per slot, so one is free
        try:
            directory = run_dir(self.out_dir, spec.name)
            cmd = launch_command(spec, directory, action, len(self.slots) > 1, self.accelerate_config)
            launcher = Launcher(spec, directory, action, slot, cmd, threads=self.threads)
            with self.lock:
                if self.stopping:
                    return None
                try:
                    launcher.start()
                except (OSError, OutputDirError) as err:  # a directory that cannot be written, or a live run's
                    outcome = Outcome(spec, RunStatus.FAILED, -1, 0.0)
                    record(self.out_dir, launcher, outcome, f"could not start: {err}", stopped=False)
                    return outcome
                self.active[spec.name] = launcher
            outcome, why = launcher.finish()
            with self.lock:
                del self.active[spec.name]
                record(self.out_dir, launcher, outcome, why, self.stopping)
            return outcome
        finally:
            self.free.put(slot)

    def progress(self) -> str:
        with self.lock:
            active = list(self.active.values())
        steps = ((a.spec, load_run(a.directory).last_step()) for a in active)
        return " | ".join(f"{spec.name} step {step or 0}/{spec.max_steps}" for spec, step in steps)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            active = list(self.active.values())
        stop_all(active, STOP_GRACE_SECONDS)

    def run(self, todo: Sequence[tuple[RunSpec, Action]], total: int, done: int) -> list[Outcome]:
        """Every launch of `todo`, in order as slots free up. Raises KeyboardInterrupt after stopping them all."""
        from tqdm.auto import tqdm

        outcomes: list[Outcome] = []
        bar = tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True, mininterval=1.0)
        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="launch")
        try:
            pending: set[Future] = {pool.submit(self.launch, spec, action) for spec, action in todo}
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    if (outcome := future.result()) is not None:
                        outcomes.append(outcome)
                        self.announce(bar, outcome)
                bar.set_postfix_str(self.progress(), refresh=True)
        except KeyboardInterrupt:
            with self.lock:
                running = len(self.active)
            bar.write(f"interrupted: stopping {running} run(s); run the same command again to resume")
            self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return outcomes

    def announce(self, bar: Any, outcome: Outcome) -> None:
        if outcome.status is RunStatus.FAILED:
            error_log = run_dir(self.out_dir, outcome.spec.name) / ERROR_LOG
            bar.write(f"failed: {outcome.spec.name} (exit code {outcome.exit_code}); see {error_log}")
        bar.update(1)
