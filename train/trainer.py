"""The training loop as a small object: setup, one optimizer step, logging, evaluation, checkpointing, finish.

Everything the run leaves goes through `train/run_directory.py` (names, metrics, summary, config),
`train/checkpoints.py` (checkpoints), `train/output_dir.py` (claiming and locking the directory) and
`train/publish/final_model.py` (the model a finished run leaves). The model knows nothing of any of it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DistributedType,
    ProjectConfiguration,
    TorchDynamoPlugin,
    broadcast_object_list,
    gather_object,
    parse_flag_from_env,
    set_seed,
)
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from model import NormGPTConfig, NormGPTForCausalLM
from model.norms import Norm, describe_norms, norm_eps
from model.rmsnorm_triton import kernel_choices, pin_kernel_choices, triton_can_run
from train import checkpoints as ckpt
from train import output_dir as outdir
from train.arguments import ConfigError, TrainingArguments
from train.atomic_io import fresh_dir, write_json
from train.config import RunConfig
from train.data import PreparedData, TokenBatches, eval_batches, prepare_data
from train.data.tokenizer import tokenizer_identity
from train.flops import flops_per_token, matmul_parameters, peak_flops
from train.hardware import CPU_THREADS_ENV, available_cores, device_name, hardware
from train.launcher import warn_if_fewer_processes
from train.library_noise import quiet_training
from train.plots import plot_loss_curve
from train.publish.export import ExportResult
from train.publish.final_model import card_and_upload, clean_stale, save_final_model
from train.publish.hub import resolve_repo_id
from train.resume import check_init_config, check_resume_config
from train.run_directory import (
    DATA_INFO,
    LOSS_CURVE,
    METRICS,
    RUN_CONFIG,
    RUN_METRICS,
    SAMPLE,
    TENSORBOARD,
    MetricsLog,
    RunStatus,
    Summary,
    checkpoint_dir,
    checkpoint_staging,
    checkpoint_step,
    write_run_config,
)
from train.stability import (
    BlockProbes,
    DivergenceMonitor,
    NonFiniteGuard,
    PlateauDetector,
    SpikeDetector,
    unigram_entropy,
)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@dataclass
class TrainerState:
    """Progress that is not in the model, optimizer or scheduler; saved in every checkpoint."""

    step: int = 0  # optimizer steps completed (skipped non-finite steps included)
    tokens: int = 0  # training tokens seen, all processes together
    elapsed: float = 0.0  # seconds of training so far, summed over resumed segments
    init_val_loss: float | None = None  # validation loss of the initial weights (step 0)
    best_val_loss: float | None = None
    final_val_loss: float | None = None  # the final evaluation's, once done (kept by the final checkpoint)
    max_grad_norm: float = 0.0  # largest finite pre-clipping gradient norm of any step
    last_train_loss: float | None = None  # training loss of the last logged step
    maxima: dict[str, float] = field(default_factory=dict)  # run-wide probe maxima (RUN_METRICS with from_rows)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)
        if state.get("max_attn_logit") is not None:  # a checkpoint of normgpt < 0.2 kept it as a field
            self.maxima.setdefault("max_attn_logit", state["max_attn_logit"])


@dataclass
class LogWindow:
    """Per-step device values between two logging rows: read from the device once per row, not once per step."""

    losses: list[torch.Tensor] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, tokens: int) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm.detach().float().reshape(()))
        self.tokens += tokens

    def drain(self, accelerator: Accelerator) -> tuple[list[float], float | None, float]:
        """(every step's loss averaged over processes, the largest finite grad norm, tokens/s) since the last row."""
        losses = accelerator.reduce(torch.stack(self.losses), reduction="mean").tolist()
        norms = [n for n in torch.stack(self.grad_norms).tolist() if math.isfinite(n)]
        now = time.perf_counter()
        tokens_per_sec = self.tokens / max(now - self.start, 1e-9)
        self.losses, self.grad_norms, self.tokens, self.start = [], [], 0, now
        return losses, max(norms) if norms else None, tokens_per_sec


class LaggedReadback:
    """Copies a small device vector to the host each step and reads the copy of the step before, which by then is
    complete: the host learns of an event one step late, and never waits for the device queue to drain. On the CPU
    nothing is asynchronous and the current value is read."""

    def __init__(self, device: torch.device, size: int) -> None:
        self.cuda = device.type == "cuda"
        self.buffers = [torch.zeros(size, dtype=torch.int64, pin_memory=self.cuda) for _ in range(2)]
        self.events: list[Any] = [None, None]
        self.pushes = 0

    def push(self, values: torch.Tensor) -> None:
        slot = self.pushes % 2
        self.buffers[slot].copy_(values, non_blocking=True)
        if self.cuda:
            self.events[slot] = torch.cuda.Event()
            self.events[slot].record()
        self.pushes += 1

    def previous(self) -> list[int]:
        lag = 2 if self.cuda and self.pushes > 1 else 1
        slot = (self.pushes - lag) % 2
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        return self.buffers[slot].tolist()


def lr_lambda(warmup_steps: int, max_steps: int, min_lr_ratio: float):
    """Linear warm-up from ~0 to the peak, then cosine decay to `min_lr_ratio` of it at `max_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay only the matrices of linear layers. Norm gains, biases and embeddings are not decayed: pulling a norm
    gain toward 0 fights the norm, and the (tied) embedding is a lookup table, not a projection."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, (Norm, torch.nn.Embedding)) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def use_cpu_cores(accelerator: Accelerator) -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 unless its config says the run is CPU-only, which halves a CPU run
    on two cores. On the CPU, split the cores among this machine's processes instead (NORMGPT_CPU_THREADS overrides).
    """
    if accelerator.device.type != "cpu":
        return
    cores = available_cores()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    torch.set_num_threads(int(os.environ.get(CPU_THREADS_ENV, max(1, cores // local_processes))))


def resolve_output_dir(run: RunConfig, state: PartialState) -> Path:
    """Every process must agree on the directory, so the main process picks a timestamped default and broadcasts."""
    chosen = [run.training.output_dir]
    if chosen[0] is None and state.is_main_process:
        stem = Path(run.config_file).stem
        norm = run.model.norm_type or NormGPTConfig.norm_type  # the config's default
        chosen[0] = f"runs/{stem}-{norm}-{datetime.now():%Y%m%d-%H%M%S}"
    if state.num_processes > 1:
        broadcast_object_list(chosen)
    return Path(chosen[0])


class Trainer:
    """Call `setup()`, then `train()`, which returns the run's Summary. `interrupted_by` is the signal that stopped
    the run, if one did. Its state is declared here, group by group; `setup` fills what has no default."""

    # What it was asked to do
    run: RunConfig
    args: TrainingArguments
    # Where it runs: the processes, and the output directory it holds for its whole life
    accelerator: Accelerator
    is_main: bool
    log_with: list[str] | None  # the experiment trackers (--report_to)
    output_dir: Path
    lock: outdir.OutputLock | None = None
    wrote_anything: bool = False  # whether output_dir holds anything of this run yet (a failed setup leaves nothing)
    resume_path: Path | None = None
    resume_state: dict[str, Any] | None = None  # the checkpoint's trainer_state.json
    init_path: Path | None = None  # --init_from: another run's checkpoint this new run starts from
    init_state: dict[str, Any] | None = None  # its trainer_state.json
    saved_step: int | None = None  # step of the newest checkpoint this run wrote or resumed from
    repo_id: str | None = None  # --push_to_hub's repo, resolved before training
    # What it trains, on what
    data: PreparedData
    config: NormGPTConfig
    sections: dict[str, dict[str, Any]]  # the resolved run config, as run_config.yaml holds it
    model: torch.nn.Module  # as accelerate prepared it (DDP/FSDP-wrapped, compiled)
    unwrapped: NormGPTForCausalLM
    eager_model: torch.nn.Module  # the uncompiled module, which probing steps run (a compiled forward skips hooks)
    optimizer: Any
    scheduler: Any
    probes: BlockProbes
    n_params: int
    flops_per_token: float
    peak: float | None  # the GPU's peak FLOP/s, for MFU; None off CUDA or for an unknown GPU
    tokens_per_step: int
    unigram_entropy: float | None
    # Progress a checkpoint keeps: every part of `stateful`, under its key in trainer_state.json
    state: TrainerState
    batches: TokenBatches
    spikes: SpikeDetector
    divergence: DivergenceMonitor
    plateau: PlateauDetector
    guard: NonFiniteGuard
    stateful: dict[str, Any]  # key -> a part with state_dict() and load_state_dict()
    # The current segment (from setup or a resume to the end): what is logged, and flags read one step late
    metrics: MetricsLog
    window: LogWindow
    bar: Any = None  # the progress bar
    readback: LaggedReadback
    stop_flag: torch.Tensor
    lr: float
    grad_norm: torch.Tensor
    segment_start: float
    elapsed_before: float
    # Signals and the outcome
    signal_seen: int | None = None  # set by the handler; sent to every rank with the next step's flags
    stop_sent: bool = False
    interrupted_by: int | None = None
    skipped_steps: int = 0
    export: ExportResult | None = None  # the final model's export (main process)
    upload_failed: bool = False

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.args = run.training

    # ---------------------------------------------------------------------------------------------------------------
    # Setup

    def setup(self) -> None:
        """Check everything, then write: a refused run leaves output_dir as it found it."""
        self._setup_accelerator()
        try:
            self._claim_output_dir()
            self._setup_data_and_config()
            self._setup_model_and_optimizer()
            self._setup_loop_state()
            self._start_writing()
        except OSError as err:  # a full disk, a write refused: the files written before are whole
            raise outdir.OutputDirError(f"the run could not start: {os_error(err)}; {self._nothing_lost()}") from None
        finally:
            if self.lock is not None and not self.wrote_anything:
                self.lock.abandon()

    def _setup_accelerator(self) -> None:
        args = self.args
        quiet_training()  # known, harmless library messages (NORMGPT_VERBOSE=1 shows them)
        self.log_with = {"none": None, "all": ["wandb", "tensorboard"]}.get(args.report_to, [args.report_to])
        # accelerate only forms a multi-process CPU group (gloo) when told to use the CPU; without this, two launched
        # processes on a machine with no GPU would each train alone. ACCELERATE_USE_CPU (`accelerate launch --cpu`)
        # must reach the first PartialState too, which would otherwise take the GPU of a machine that has one.
        multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (multi_process and not torch.accelerator.is_available())
        # The process group comes first: every process must agree on output_dir, which the trackers need at creation.
        self.output_dir = resolve_output_dir(self.run, PartialState(cpu=cpu))
        compile_with = (
            TorchDynamoPlugin(backend="inductor", mode=args.torch_compile_mode) if args.torch_compile else None
        )
        self.accelerator = Accelerator(
            cpu=cpu,
            log_with=self.log_with,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / TENSORBOARD)
            ),
            dynamo_plugin=compile_with,
            step_scheduler_with_optimizer=False,
        )
        self.is_main = self.accelerator.is_main_process
        warn_if_fewer_processes(self.accelerator.num_processes, torch.accelerator.is_available())
        use_cpu_cores(self.accelerator)

    def _claim_output_dir(self) -> None:
        """Everything about the machine, the output directory and the checkpoints that can be checked cheaply, before
        data work; then the lock, held until the process ends."""
        args, out = self.args, self.output_dir
        check_rms_impl(self.run.model.rms_impl, self.accelerator.device)
        outdir.check_path(out)
        if args.resume_from_checkpoint is None:
            outdir.check_fresh(out, args.overwrite_output_dir)
        else:  # a named checkpoint is checked first; 'latest' of a finished run may have none and nothing to do
            if args.resume_from_checkpoint != "latest":
                self.resume_path = ckpt.resolve_checkpoint(args.resume_from_checkpoint, out)
            named_step = checkpoint_step(self.resume_path) if self.resume_path is not None else None
            outdir.check_resumable(out, args.max_steps, named_step)
            self.resume_path = self.resume_path or ckpt.resolve_checkpoint(args.resume_from_checkpoint, out)
        if args.init_from is not None and self.resume_path is None:
            self.init_path = ckpt.resolve_init(args.init_from, out)
        if self.is_main:
            self.lock = outdir.OutputLock(out)
            self.lock.acquire()
        if self.resume_path is not None:
            ckpt.verify(self.resume_path)
            self.resume_state = ckpt.read_state(self.resume_path)
        if self.init_path is not None:
            ckpt.verify(self.init_path)
            self.init_state = ckpt.read_state(self.init_path)
        # Resolved now, not after hours of training: `name` needs the Hub login to become `user/name`.
        self.repo_id = resolve_repo_id(args.hub_model_id or out.resolve().name) if args.push_to_hub else None

    def _setup_data_and_config(self) -> None:
        run, args, accelerator = self.run, self.args, self.accelerator
        set_seed(args.seed)
        self.data = prepare_data(run.data, run.model.bpe_vocab_size, accelerator.main_process_first)
        self.config = run.model_config(self.data.tokenizer)
        self.sections = run.resolved(self.config, self.output_dir, Path(self.data.info["cache_path"]).parent)
        if self.resume_path is not None:
            check_resume_config(
                self.resume_path,
                self.resume_state,
                self.sections,
                self.data.info["cache_key"],
                accelerator.num_processes,
            )
        if self.init_path is not None:
            check_init_config(self.init_path, self.init_state, self.sections, self.data_record()["tokenizer_sha256"])
        self._say_what_was_not_taken()

    def _say_what_was_not_taken(self) -> None:
        """One line for each input a run does not use as given, so that nothing is silently ignored."""
        run = self.run
        if run.not_replayed:
            self.accelerator.print(
                f"note: {', '.join(run.not_replayed)} from '{run.config_file}' not used: where a run goes is taken "
                f"from the command line only (this run: output_dir={self.output_dir})"
            )
        asked = run.model.vocab_size
        if run.data.tokenizer is not None and asked is not None and asked != self.config.vocab_size:
            self.accelerator.print(
                f"note: --vocab_size {asked} not used: the model's vocabulary is the tokenizer's "
                f"({len(self.data.tokenizer)} tokens, {self.config.vocab_size} embedding rows)"
            )

    def data_record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data: the token cache's key, the dataset's fingerprint, and the identity of
        the tokenizer (what `--init_from` compares: weights mean nothing under another vocabulary)."""
        info = self.data.info
        return {
            "cache_key": info["cache_key"],
            "fingerprint": info["fingerprint"],
            "tokenizer_sha256": tokenizer_identity(self.data.tokenizer),
        }

    def _setup_model_and_optimizer(self) -> None:
        args, accelerator = self.args, self.accelerator
        model = NormGPTForCausalLM(self.config)
        model.set_rms_impl(self.run.model.rms_impl)  # runtime options: never part of the saved model
        model.set_loss_impl(self.run.model.loss_impl)
        if args.gradient_checkpointing:
            model.activation_checkpointing_enable()  # non-reentrant: works under DDP, compile and the probes
        self.n_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = flops_per_token(
            matmul_parameters(model), self.config.num_hidden_layers, self.config.hidden_size, self.run.data.block_size
        )
        optimizer = torch.optim.AdamW(
            param_groups(model, args.weight_decay),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            # On CUDA the fused kernel skips a non-finite step on the device (found_inf, as GradScaler uses it); on
            # the CPU nothing is asynchronous, so reading the flag costs nothing and the plain kernel is kept.
            fused=self.accelerator.device.type == "cuda",
        )
        if self.init_path is not None:  # before prepare: the weights a new run starts from, on every process
            if args.init_optimizer_state and accelerator.distributed_type == DistributedType.FSDP:
                raise ConfigError("--init_optimizer_state is not supported under FSDP; start from the weights alone")
            ckpt.load_init(self.init_path, model, optimizer if args.init_optimizer_state else None)
        scheduler = LambdaLR(optimizer, lr_lambda(args.warmup_steps, args.max_steps, args.min_lr_ratio))
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.unwrapped = accelerator.unwrap_model(self.model, keep_torch_compile=False)
        # A compiled forward skips hooks added after compilation: probing steps run the same module uncompiled.
        self.eager_model = getattr(self.model, "_orig_mod", self.model)
        fsdp = self.accelerator.distributed_type == DistributedType.FSDP  # per-shard partial sums
        reduce = (lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum")) if fsdp else (lambda t: t)
        self.probes = BlockProbes(self.unwrapped.model.layers, reduce)

    def _setup_loop_state(self) -> None:
        args, accelerator, data = self.args, self.accelerator, self.data
        self.tokens_per_step = args.tokens_per_step(self.run.data.block_size, accelerator.num_processes)
        self.batches = TokenBatches(
            data.train,
            self.run.data.block_size,
            args.per_device_train_batch_size,
            args.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        self.state = TrainerState()
        self.spikes = SpikeDetector()
        self.divergence = DivergenceMonitor(args.warmup_steps)
        self.unigram_entropy = unigram_entropy(data.train, len(data.tokenizer))
        self.plateau = PlateauDetector(self.unigram_entropy, args.warmup_steps, args.max_steps)
        self.guard = NonFiniteGuard(accelerator.device, args.max_nonfinite_steps)
        self.readback = LaggedReadback(accelerator.device, 3)
        self.stop_flag = torch.zeros((), dtype=torch.int64, device=accelerator.device)
        self.stateful = {
            "trainer": self.state,
            "batches": self.batches,
            "spikes": self.spikes,
            "divergence": self.divergence,
            "plateau": self.plateau,
            "nonfinite": self.guard,
        }
        if self.has_val:  # checked now, not at the first evaluation: a refused run writes nothing
            eval_batches(
                data.val,
                self.run.data.block_size,
                args.per_device_eval_batch_size,
                args.max_eval_batches,
                accelerator.process_index,
                accelerator.num_processes,
            )
        self.metrics = MetricsLog(self.output_dir / METRICS, enabled=self.is_main)
        self.window = LogWindow()

    def _start_writing(self) -> None:
        """Only now, with every input checked, is anything in output_dir replaced or written."""
        args, accelerator = self.args, self.accelerator
        out = self.output_dir
        if self.is_main:
            if args.overwrite_output_dir and self.resume_path is None:
                outdir.clear_run(out)
            ckpt.clean_stale_staging(out)
            clean_stale(out)
            try:
                write_run_config(out / RUN_CONFIG, self.sections)
                write_json(out / DATA_INFO, self.data.info)
            except OSError:
                if self.resume_path is None:  # a new run that could not write its first files leaves none
                    for name in (RUN_CONFIG, DATA_INFO):
                        (out / name).unlink(missing_ok=True)
                raise
        self.wrote_anything = True
        accelerator.wait_for_everyone()
        if self.resume_path is not None:
            self._load_checkpoint()
        if self.log_with:
            self.accelerator.init_trackers(
                "normgpt",
                config={f"{s}.{k}": v for s, d in self.sections.items() for k, v in d.items()},
                init_kwargs={"wandb": {"name": args.run_name or self.output_dir.name, "dir": str(self.output_dir)}},
            )
        device = accelerator.device
        self.peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        accelerator.print(
            f"normgpt: {self.n_params / 1e6:.2f}M parameters, norm={self.config.norm_type}, "
            f"{accelerator.num_processes} process(es) on {device.type}, {self.tokens_per_step} tokens/step, "
            f"output_dir={self.output_dir}"
        )

    # ---------------------------------------------------------------------------------------------------------------
    # Checkpoints

    def _state_dict(self, kernels: list[dict]) -> dict[str, Any]:
        """trainer_state.json: every stateful part, what a resume (or an --init_from) compares against, and each
        process's kernel launch configurations (`_kernel_records`), which a resume pins."""
        return {
            "format": ckpt.FORMAT,
            **{key: part.state_dict() for key, part in self.stateful.items()},
            "num_processes": self.accelerator.num_processes,
            "run_config": self.sections,
            "data": self.data_record(),
            "kernels": kernels,
        }

    def _kernel_records(self) -> list[dict]:
        """The fused RMSNorm's launch configurations of every process, by rank (model.rmsnorm_triton.kernel_choices:
        each key names the kernel, device, shape and dtypes). A configuration fixes the order of the kernels' sums, so
        a resumed run pins the records it was saved with to compute exactly what the uninterrupted run would have.
        Per rank, not one rank's for all: each process chooses by its own measurements (the model never talks to the
        other processes), so each must be given back its own choices. A collective: every process calls it."""
        record = kernel_choices()
        return gather_object([record]) if self.accelerator.num_processes > 1 else [record]

    def _pin_kernels(self, records: list[dict] | None) -> None:
        """Before the first step of a resumed run: this process's recorded launch configurations (none recorded:
        a checkpoint from before the record, or a process the saving run did not have)."""
        rank = self.accelerator.process_index
        if not records or rank >= len(records):
            return
        try:
            pin_kernel_choices(records[rank])
        except ValueError as err:
            message = f"'{self.resume_path / ckpt.STATE}': its kernel record is malformed: {err}"
            raise ckpt.CheckpointError(message) from None

    def _load_checkpoint(self) -> None:
        state = self.resume_state
        with ckpt.accelerate_view(self.resume_path) as view:
            self.accelerator.load_state(str(view))
        # Param groups come back with the saving run's kernel choice; keep this device's.
        fused = self.accelerator.device.type == "cuda"
        for group in self.optimizer.param_groups:
            group["fused"], group["foreach"] = fused, None if fused else group["foreach"]
        for key, part in self.stateful.items():
            if key in state:  # a checkpoint older than a part (plateau, nonfinite) leaves it fresh
                part.load_state_dict(state[key])
        self._pin_kernels(state.get("kernels"))
        self.metrics.truncate_after(self.state.step)
        self.saved_step = self.state.step
        if self.args.max_steps > self.state.step:  # extended: the old horizon's final evaluation is an evaluation
            self.state.final_val_loss = None
        self.accelerator.print(f"resumed from {self.resume_path} at step {self.state.step}")

    def _weights_finite(self) -> bool:
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in self.model.parameters()]).all()
        return bool(self.accelerator.reduce(finite.to(torch.int64).reshape(1), reduction="sum").item()) == bool(
            self.accelerator.num_processes
        )

    def save_checkpoint(self) -> bool:
        """Write checkpoint-<step> (staged, then renamed) and rotate; False, writing nothing, if any weight is not
        finite: a checkpoint is never poisoned."""
        if not self._weights_finite():
            return False
        accelerator = self.accelerator
        final = checkpoint_dir(self.output_dir, self.state.step)
        staging = checkpoint_staging(final)
        if self.is_main:
            fresh_dir(staging)  # never written through a link planted at its name
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        kernels = self._kernel_records()
        accelerator.wait_for_everyone()
        if self.is_main:
            write_json(staging / ckpt.STATE, self._state_dict(kernels))
            ckpt.write_manifest(staging, self.state.step)
            ckpt.publish(staging, final)
            ckpt.rotate(self.output_dir, self.args.save_total_limit)
        accelerator.wait_for_everyone()
        self.saved_step = self.state.step
        return True

    # ---------------------------------------------------------------------------------------------------------------
    # Signals

    def _on_signal(self, signum, frame) -> None:
        self.signal_seen = signum
        # A second Ctrl-C ends the process at once. A repeated SIGTERM or SIGUSR1 is the same request: a cluster signals
        # every process of a job (SLURM: launcher and workers alike) and the launcher then forwards it once more.
        if signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)

    def _install_signal_handlers(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    # ---------------------------------------------------------------------------------------------------------------
    # The loop

    def train(self) -> Summary:
        self._install_signal_handlers()
        try:
            return self._loop()
        except OSError as err:  # a full disk, a write refused: one line, and what was written before stays whole
            if self.bar is not None:
                self.bar.close()  # so the line is a line of its own
            if self.is_main:
                with contextlib.suppress(OSError):  # what the failed write left (it may free the space it took)
                    ckpt.clean_stale_staging(self.output_dir)
                    clean_stale(self.output_dir)
            self._write_failed_summary(err)
            raise outdir.OutputDirError(
                f"the run stopped at step {self.state.step}: {os_error(err)}; {self._nothing_lost()}"
            ) from None
        except Exception as err:
            self._write_failed_summary(err)
            raise
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            if self.lock is not None:
                self.lock.release()

    def _loop(self) -> Summary:
        args, state = self.args, self.state
        if state.step == 0:
            self._log({"step": 0, "unigram_entropy": self.unigram_entropy})
            if self.has_val:
                state.init_val_loss = self.evaluate()
        self.model.train()
        bar = self.bar = tqdm(
            total=args.max_steps, initial=state.step, disable=not self.is_main, desc="train", dynamic_ncols=True
        )
        self.segment_start, self.elapsed_before = time.perf_counter(), state.elapsed
        self.window = LogWindow()
        stop: tuple[RunStatus, str] | None = None
        while state.step < args.max_steps and stop is None:
            log_now = (state.step + 1) % args.logging_steps == 0 or state.step + 1 == args.max_steps
            probes = self.train_step(probing=log_now and args.stability_metrics)
            bar.update(1)
            stop = self._stop_requested()
            if log_now or stop is not None:
                stop = self.log_step(probes, bar) or stop
            if stop is None and self._due(args.eval_steps) and state.step < args.max_steps and self.has_val:
                val_loss = self.evaluate()
                if self.is_main:
                    bar.write(f"step {state.step}: val_loss {val_loss:.4f}")
            if stop is None and self._due(args.save_steps) and state.step < args.max_steps:
                if not self.save_checkpoint():
                    stop = (RunStatus.DIVERGED, f"weights became non-finite by step {state.step}")
        bar.close()
        return self.finish(stop)

    @property
    def has_val(self) -> bool:
        return len(self.data.val) > 0  # --validation_split_percentage 0 trains without evaluation

    def _due(self, every: int) -> bool:
        return bool(every) and self.state.step % every == 0

    def train_step(self, probing: bool) -> dict[str, Any] | None:
        """One optimizer step over `gradient_accumulation_steps` micro-batches. A step whose gradient norm is not
        finite is not applied (on the device). Returns the probes' values on probing steps."""
        args, accelerator, state = self.args, self.accelerator, self.state
        accumulation = args.gradient_accumulation_steps
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(accumulation):
            input_ids = self._next_batch()
            last = micro == accumulation - 1
            # Skip the gradient all-reduce on all but the last micro-batch of the step.
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                loss = self.model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
                accelerator.backward(loss / accumulation)
            step_loss += loss.detach() / accumulation
        if probing:
            self._probe_forward(input_ids)
            self.probes.before_update()
        # Norm of the full gradient before clipping (inf: measure without clipping).
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm or float("inf"))
        self.lr = self.scheduler.get_last_lr()[0]
        self._optimizer_step(self.guard.check(grad_norm))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._push_flags()
        state.step += 1
        state.tokens += self.tokens_per_step
        state.elapsed = self.elapsed_before + time.perf_counter() - self.segment_start
        self.window.add(step_loss, grad_norm, self.tokens_per_step)
        self.grad_norm = grad_norm
        return self.probes.after_update() if probing else None

    def _optimizer_step(self, found_inf: torch.Tensor) -> None:
        """Apply the step unless `found_inf`: on the device for the fused kernel, on the host otherwise (CPU)."""
        inner = self.optimizer.optimizer
        if inner.param_groups[0].get("fused"):
            inner.found_inf = found_inf
            self.optimizer.step()
        elif not found_inf.item():
            self.optimizer.step()

    def _next_batch(self) -> torch.Tensor:
        """The next micro-batch on the device. From pinned memory on CUDA: a copy from pageable memory would make the
        host wait for the device to finish all the work queued so far, every step."""
        batch = self.batches.next_batch()
        if self.accelerator.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.accelerator.device, non_blocking=True)

    @torch.no_grad()
    def _probe_forward(self, input_ids: torch.Tensor) -> None:
        """The forward-pass probes (residual stream, attention logits, log Z) of a logging step, on the first
        sequences of its last micro-batch, with the weights the step's gradients were computed with. A forward of
        its own, without gradients, on the uncompiled module (a compiled forward skips hooks): the training forward
        stays the compiled one, with the loss that never materialises the logits, and probing costs a forward of a
        few sequences instead of an eager training step."""
        with self.probes.forward():
            out = self.eager_model(
                input_ids=input_ids[: self.probes.max_sequences], use_cache=False, output_hidden_states=True
            )
        self.probes.after_forward(out)

    def _push_flags(self) -> None:
        if self.signal_seen is not None and not self.stop_sent:
            self.stop_flag.fill_(self.signal_seen)
            self.stop_sent = True
        flags = torch.stack([self.guard.streak, self.guard.total, self.stop_flag])
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        self.readback.push(flags)

    def _stop_requested(self) -> tuple[RunStatus, str] | None:
        """A stop decided on flags one step old (see LaggedReadback), identical on every rank."""
        streak, self.skipped_steps, signum = self.readback.previous()
        if reason := self.guard.diverged(streak, self.state.step):
            return RunStatus.DIVERGED, reason
        if signum:
            self.interrupted_by = signum
            name = signal.Signals(signum).name
            return RunStatus.INTERRUPTED, f"received {name}; stopped after step {self.state.step}"
        return None

    # ---------------------------------------------------------------------------------------------------------------
    # Logging and evaluation

    def _log(self, row: dict[str, Any]) -> None:
        self.metrics.append(row)
        if self.log_with:
            # Trackers take scalars: per-block lists become one curve per block ("resid_rms/3").
            scalars = {}
            for key, value in row.items():
                if isinstance(value, list):
                    scalars |= {f"{key}/{i}": v for i, v in enumerate(value)} if key != "spikes" else {}
                elif key != "step" and value is not None:
                    scalars[key] = value
            self.accelerator.log(scalars, step=row["step"])

    def log_step(self, probes: dict[str, Any] | None, bar) -> tuple[RunStatus, str] | None:
        """Read the window's losses (one synchronisation), feed the detectors, write the row. Returns a stop when
        the divergence rule fired."""
        state = self.state
        losses, max_norm, tokens_per_sec = self.window.drain(self.accelerator)
        first = state.step - len(losses) + 1
        new_spikes = [first + i for i, value in enumerate(losses) if self.spikes.update(first + i, value)]
        diverged = None
        for i, value in enumerate(losses):
            diverged = diverged or self.divergence.update(first + i, value)
            self.plateau.update(first + i, value)
        if max_norm is not None:
            state.max_grad_norm = max(state.max_grad_norm, max_norm)
        state.last_train_loss = losses[-1]
        row = {
            "step": state.step,
            "loss": losses[-1],
            "lr": self.lr,
            "grad_norm": float(self.grad_norm),
            "tokens": state.tokens,
            "tokens_per_sec": round(tokens_per_sec, 1),
            "elapsed": round(state.elapsed, 3),
        }
        postfix = {"loss": f"{losses[-1]:.3f}", "lr": f"{self.lr:.2e}", "tok/s": f"{tokens_per_sec:,.0f}"}
        if self.peak is not None:
            row["mfu"] = round(tokens_per_sec * self.flops_per_token / (self.peak * self.accelerator.num_processes), 4)
            postfix["mfu"] = f"{row['mfu']:.1%}"
        if probes is not None:
            row |= probes
            for metric in RUN_METRICS:
                metric.fold(state.maxima, probes)
        row |= {"spike_count": len(self.spikes.spike_steps), "spikes": new_spikes, "skipped_steps": self.skipped_steps}
        self._log(row)
        bar.set_postfix(postfix, refresh=False)
        if diverged:
            self._log({"step": state.step, "diverged": True, "reason": diverged})
            return RunStatus.DIVERGED, diverged
        return None

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over a fixed set of validation windows, averaged over all processes; logged as a row."""
        accelerator, run = self.accelerator, self.run
        self.model.eval()
        total = torch.zeros(2, device=accelerator.device)  # [sum of losses, number of batches]
        for batch in eval_batches(
            self.data.val,
            run.data.block_size,
            self.args.per_device_eval_batch_size,
            self.args.max_eval_batches,
            accelerator.process_index,
            accelerator.num_processes,
        ):
            batch = batch.to(accelerator.device)
            loss = self.model(input_ids=batch, labels=batch, use_cache=False).loss.float()
            total += torch.stack([loss, total.new_ones(())])
        self.model.train()
        total = accelerator.reduce(total, reduction="sum")
        val_loss = (total[0] / total[1].clamp(min=1)).item()
        if math.isfinite(val_loss) and self.state.step > 0:
            self.state.best_val_loss = min(val_loss, self.state.best_val_loss or math.inf)
        self._log(
            {
                "step": self.state.step,
                "val_loss": val_loss,
                "tokens": self.state.tokens,
                "elapsed": round(self.state.elapsed, 3),
            }
        )
        return val_loss

    # ---------------------------------------------------------------------------------------------------------------
    # Finish

    def finish(self, stop: tuple[RunStatus, str] | None) -> Summary:
        """The end of a run. One that trained to the end is evaluated, checkpointed at its last step (so that it can
        be extended, and a kill while its model is exported loses nothing and repeats no evaluation), then exported."""
        status, reason = stop or (RunStatus.COMPLETED, None)
        final_val_loss = None
        if status is RunStatus.COMPLETED:
            final_val_loss = self._final_evaluation()
            if why := self.plateau.stalled():
                status, reason = RunStatus.STALLED, why
            check_ranks_agree(self.model, self.accelerator)
            if self.args.save_steps and self.saved_step != self.state.step:
                self.save_checkpoint()
            self.export = save_final_model(self.model, self.accelerator, self.data.tokenizer, self.output_dir)
        elif status is RunStatus.INTERRUPTED and not self.save_checkpoint():
            reason += "; no checkpoint written: the weights are not finite"
        if status in (RunStatus.DIVERGED, RunStatus.STALLED):
            self.accelerator.print(f"{status}: {reason}; at step {self.state.step} of {self.args.max_steps}")
        summary = self._summary(status, reason, final_val_loss)
        if self.is_main:
            self._write_outputs(summary)
        self._end_processes()
        return summary

    def _final_evaluation(self) -> float | None:
        """The final validation loss: evaluated once, and kept by the final checkpoint, so that a run resumed from it
        (killed while exporting) neither evaluates again nor logs the row twice."""
        if self.has_val and self.state.final_val_loss is None:
            self.state.final_val_loss = self.evaluate()
        return self.state.final_val_loss

    def _end_processes(self) -> None:
        """Trackers finished and the process group destroyed, in an order that cannot hang the exit of a DDP run
        (pytorch/pytorch#56297). The DDP reducer holds the process group; left to the interpreter's exit, it is freed
        by the main thread holding the GIL, and with it the gloo group's last reference, whose destructor waits for
        the gloo worker threads, one of which may be waiting for the GIL to release a tensor of its last collective.
        So: a barrier (no collective left in flight on any rank), then the wrapped model goes while the process group
        is still registered (freeing the reducer then only drops a reference), then accelerate destroys the group,
        whose last reference is now Python's."""
        accelerator = self.accelerator
        if accelerator.num_processes > 1:
            accelerator.wait_for_everyone()
            self.model = self.eager_model = None  # the prepared (DDP-wrapped, compiled) model; `unwrapped` stays
            accelerator.free_memory()  # accelerate's references to it (and to the optimizer and scheduler)
            if self.args.torch_compile:
                torch._dynamo.reset()  # compiled code may hold the wrapper too
            gc.collect()
        accelerator.end_training()

    def _summary(self, status: RunStatus, reason: str | None, final_val_loss: float | None) -> Summary:
        state = self.state
        return Summary(
            status=status,
            steps=state.step,
            max_steps=self.args.max_steps,
            stop_reason=reason,
            stop_step=state.step if status in (RunStatus.DIVERGED, RunStatus.INTERRUPTED) else None,
            init_val_loss=state.init_val_loss,
            final_val_loss=final_val_loss,
            best_val_loss=state.best_val_loss,
            final_train_loss=state.last_train_loss,
            spike_count=len(self.spikes.spike_steps),
            spike_steps=self.spikes.spike_steps,
            max_grad_norm=state.max_grad_norm,
            **state.maxima,
            tokens=state.tokens,
            tokens_per_step=self.tokens_per_step,
            tokens_per_sec=round(state.tokens / max(state.elapsed, 1e-9), 1),
            wall_time=round(state.elapsed, 3),
            num_parameters=self.n_params,
            device=device_name(self.accelerator.device),
            num_processes=self.accelerator.num_processes,
            learning_rate=self.args.learning_rate,
            seed=self.args.seed,
            unigram_entropy=self.unigram_entropy,
            skipped_steps=self.skipped_steps,
            model=self._model_record(),
            hardware=hardware(),
            export=self.export.record() if self.export is not None else None,
            init_from=self._init_record(),
            kernels=self._kernel_records(),
        )

    def _init_record(self) -> dict[str, Any] | None:
        """summary.json's `init_from`: the checkpoint this run started from (its config records it too)."""
        if self.args.init_from is None:
            return None
        path = Path(self.args.init_from).resolve()
        return {
            "checkpoint": str(path),
            "step": checkpoint_step(path),
            "optimizer_state": self.args.init_optimizer_state,
        }

    def _model_record(self) -> dict[str, Any]:
        """summary.json's `model`: every model field as the run resolved it (the kernel choice too), the model's
        vocabulary, and the norm's eps and numerics as the norm registry states them."""
        config = self.config
        return {
            **self.sections["model"],
            "vocab_size": config.vocab_size,
            "norm_eps": norm_eps(config),
            "norm_numerics": describe_norms(config),
        }

    def _write_outputs(self, summary: Summary) -> None:
        out = self.output_dir
        summary.write(out)
        plot_loss_curve(out / METRICS, out / LOSS_CURVE, out.name)
        finished_model = summary.status in (RunStatus.COMPLETED, RunStatus.STALLED)
        # An FSDP-sharded model cannot generate from the main process alone.
        fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        if finished_model and self.args.sample_max_new_tokens and not fsdp:
            text = sample_text(self.unwrapped, self.accelerator, self.data, self.args.sample_max_new_tokens)
            (out / SAMPLE).write_text(text + "\n")
            print(f"--- sample (greedy) ---\n{text}\n-----------------------")
        if finished_model:
            self.upload_failed = not card_and_upload(out, self.export, self.repo_id, self.args.hub_private_repo)
        val = summary.final_val_loss
        final = f"final val_loss {val:.4f}" if val is not None else "no final validation loss"
        if not self.has_val:
            final = "no validation split"
        if summary.status is RunStatus.INTERRUPTED:
            final = f"interrupted ({summary.stop_reason}); resume with --resume_from_checkpoint latest"
        print(f"done: {summary.steps} steps, {final}, {summary.wall_time:.1f}s; {summary.status}; run in {out}")

    def _nothing_lost(self) -> str:
        """What a run stopped by the machine (a full disk) still has, and how to go on."""
        if not self.wrote_anything and self.resume_path is None:
            return f"nothing was written to '{self.output_dir}': free space, then run the same command again"
        checkpoints = ckpt.list_checkpoints(self.output_dir)
        if checkpoints:
            return (
                f"every file written before is whole and {checkpoints[-1][1].name} is its newest checkpoint: free "
                "space, then resume with --resume_from_checkpoint latest"
            )
        return "every file written before is whole: free space, then start it again with --overwrite_output_dir"

    def _write_failed_summary(self, err: Exception) -> None:
        """Best effort: a run that crashed says so instead of looking like one still running."""
        if not self.is_main or not self.wrote_anything:
            return
        first = (str(err).strip().splitlines() or [""])[0][:300]
        with contextlib.suppress(Exception):
            Summary(
                status=RunStatus.FAILED,
                steps=self.state.step,
                max_steps=self.args.max_steps,
                stop_reason=f"{type(err).__name__}: {first}",
                stop_step=self.state.step,
            ).write(self.output_dir)


def os_error(err: OSError) -> str:
    """An OSError in the words a one-line message needs: what failed, and on which file."""
    what = err.strerror or type(err).__name__
    return f"{what} ('{err.filename}')" if err.filename else what


def check_rms_impl(impl: str, device: torch.device) -> None:
    """Refuse, before any work, a kernel this machine cannot run (the forward pass would fail after setup)."""
    if impl == "triton" and not triton_can_run(torch.empty(0, device=device)):
        raise ConfigError(
            f"--rms_impl triton cannot run on this machine's {device.type}: it needs Triton and a CUDA device "
            "(TRITON_INTERPRET=1 runs it on a CPU, slowly); pass --rms_impl auto or torch"
        )


def sample_text(model, accelerator: Accelerator, data: PreparedData, max_new_tokens: int) -> str:
    """Greedy continuation of the first tokens of the validation split (of the training split without one): the
    quickest look at what the model learnt."""
    source = data.val if len(data.val) >= 16 else data.train
    model.eval()
    prompt = torch.as_tensor(source[:16].astype("int64"), device=accelerator.device)[None]
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=data.tokenizer.eos_token_id
        )
    model.train()
    return data.tokenizer.decode(out[0])


def check_ranks_agree(model, accelerator: Accelerator) -> None:
    """DDP keeps the replicas identical by construction; one all-gather of a parameter fingerprint proves it, and
    catches a rank that silently trained on something else (a skipped all-reduce, a broken sync)."""
    if accelerator.num_processes == 1 or accelerator.distributed_type == DistributedType.FSDP:
        return
    flat = torch.cat(
        [p.detach().double().flatten() for p in accelerator.unwrap_model(model, keep_torch_compile=False).parameters()]
    )
    fingerprint = torch.stack([flat.sum(), flat.abs().sum(), flat.pow(2).sum()]).to(accelerator.device)
    everyone = accelerator.gather(fingerprint[None]).cpu()  # [num_processes, 3]
    if not (everyone == everyone[0]).all():
        raise RuntimeError(f"ranks disagree after training: parameter fingerprints {everyone.tolist()}")
    accelerator.print(f"ranks agree: parameters identical on all {accelerator.num_processes} processes")
