"""Train a NormGPT model. The one entry point, on a laptop CPU, one GPU, many GPUs or many nodes:

    python train/train.py --norm rms                      # plain process
    accelerate launch train/train.py --norm rms           # whatever `accelerate config` set up
    accelerate launch --multi_gpu --num_processes 2 train/train.py   # 2-process DDP (gloo on a CPU-only machine)

Everything the run produces goes to --output_dir: metrics.jsonl, loss_curve.png, checkpoint-<step>/ directories,
run_config.yaml, and at the end a Hugging Face model (config, safetensors, modeling code, tokenizer) that
`AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)` loads.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script, Python puts train/ itself first on sys.path, where `import train` would find this very file
    # instead of the package. The repository root takes its place (which also works from a clone without pip install).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402
from accelerate import Accelerator, PartialState  # noqa: E402
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list, set_seed  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from model import NormGPTForCausalLM  # noqa: E402
from model.norms import Norm, describe_norms  # noqa: E402
from train import checkpoints as ckpt  # noqa: E402
from train.config import ConfigError, RunConfig, parse_args, save_run_config  # noqa: E402
from train.data import DataError, PreparedData, TokenBatches, eval_batches, prepare_data  # noqa: E402
from train.metrics import (  # noqa: E402
    MetricsWriter,
    device_name,
    flops_per_token,
    peak_flops,
    plot_loss_curve,
    write_json_atomic,
)
from train.stability import (  # noqa: E402
    DivergenceMonitor,
    SpikeDetector,
    block_sq_sums,
    probe,
    snapshot_blocks,
    update_sq_sums,
)

SUMMARY_MODEL_FIELDS = (
    "norm_type",
    "norm_placement",
    "qk_norm",
    "z_loss",
    "rms_norm_eps",
    "rms_impl",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "vocab_size",
)


@dataclass
class TrainerState:
    """Progress that is not in the model, optimizer or scheduler; saved in every checkpoint."""

    step: int = 0  # optimizer steps completed
    tokens: int = 0  # training tokens seen, all processes together
    elapsed: float = 0.0  # seconds of training so far, summed over resumed segments
    init_val_loss: float | None = None  # validation loss of the initial weights (step 0)
    best_val_loss: float | None = None
    max_grad_norm: float = 0.0  # largest pre-clipping gradient norm of any step
    max_attn_logit: float | None = None  # largest attention logit any probe saw

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    torch.set_num_threads(int(os.environ.get("NORMGPT_CPU_THREADS", max(1, cores // local_processes))))


def resolve_output_dir(run: RunConfig, state: PartialState) -> Path:
    """Every process must agree on the directory, so the main process picks a timestamped default and broadcasts."""
    chosen = [run.training.output_dir]
    if chosen[0] is None and state.is_main_process:
        stem = Path(run.config_file).stem
        norm = run.model.norm_type or "rms"
        chosen[0] = f"runs/{stem}-{norm}-{datetime.now():%Y%m%d-%H%M%S}"
    if state.num_processes > 1:
        broadcast_object_list(chosen)
    return Path(chosen[0])


def check_output_dir(run: RunConfig, output_dir: Path) -> None:
    """Refuse to mix a new run into a directory that already holds one (the old run's files would be overwritten)."""
    args = run.training
    if args.resume_from_checkpoint is None and not args.overwrite_output_dir and ckpt.holds_run(output_dir):
        raise ConfigError(
            f"output_dir '{output_dir}' already holds a run; pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )


@torch.no_grad()
def evaluate(model, accelerator: Accelerator, data: PreparedData, run: RunConfig) -> float:
    """Mean loss over a fixed set of validation windows, averaged over all processes."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device)  # [sum of losses, number of batches]
    for batch in eval_batches(
        data.val,
        run.data.block_size,
        run.training.per_device_eval_batch_size,
        run.training.max_eval_batches,
        accelerator.process_index,
        accelerator.num_processes,
    ):
        batch = batch.to(accelerator.device)
        total += torch.stack([model(input_ids=batch, labels=batch, use_cache=False).loss.float(), total.new_ones(())])
    model.train()
    total = accelerator.reduce(total, reduction="sum")
    return (total[0] / total[1].clamp(min=1)).item()


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


def save_final_model(model, accelerator: Accelerator, data: PreparedData, output_dir: Path) -> None:
    """Config, safetensors weights, modeling source and tokenizer into `output_dir`, via a staging directory so the
    run directory never holds a half-written model."""
    staging = output_dir / ".final.tmp"
    # Gathers FSDP shards (all processes must call it). A compiled model's keys carry the wrapper's `_orig_mod.`.
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in accelerator.get_state_dict(model).items()}
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        # The kernel a run trained with is a speed choice, not part of the model: saved models run anywhere.
        impl = unwrapped.config.rms_impl
        unwrapped.config.rms_impl = "auto"
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        unwrapped.config.rms_impl = impl
        data.tokenizer.model_max_length = unwrapped.config.max_position_embeddings
        data.tokenizer.save_pretrained(staging)
        for item in staging.iterdir():
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()
    accelerator.wait_for_everyone()


def sample_text(model, accelerator: Accelerator, data: PreparedData, max_new_tokens: int) -> str:
    """Greedy continuation of the first tokens of the validation split: the quickest look at what the model learnt."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    unwrapped.eval()
    prompt = torch.as_tensor(data.val[:16].astype("int64"), device=accelerator.device)[None]
    with torch.no_grad():
        out = unwrapped.generate(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=data.tokenizer.eos_token_id
        )
    unwrapped.train()
    return data.tokenizer.decode(out[0])


def train(run: RunConfig) -> Path:
    args = run.training
    log_with = {"none": None, "all": ["wandb", "tensorboard"]}.get(args.report_to, [args.report_to])
    # accelerate only forms a multi-process CPU group (gloo) when told to use the CPU; without this, two launched
    # processes on a machine with no GPU would each train alone.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    # The process group comes first: every process must agree on output_dir, which the trackers need at creation.
    output_dir = resolve_output_dir(run, PartialState(cpu=cpu))
    accelerator = Accelerator(
        cpu=cpu,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard")),
        dynamo_backend="inductor" if args.torch_compile else None,
        step_scheduler_with_optimizer=False,
    )
    is_main = accelerator.is_main_process
    use_cpu_cores(accelerator)
    check_output_dir(run, output_dir)
    resume_path = (
        ckpt.resolve_checkpoint(args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else None
    )

    max_positions = run.model_config().max_position_embeddings
    if run.data.block_size > max_positions:  # checked before any data work: it is a config error
        raise ConfigError(f"block_size ({run.data.block_size}) exceeds max_position_embeddings ({max_positions})")
    set_seed(args.seed)
    data = prepare_data(run.data, run.model.vocab_size or 4096, accelerator.main_process_first)
    tokenizer = data.tokenizer
    config = run.model_config(
        vocab_size=64 * math.ceil(len(tokenizer) / 64),  # a multiple of 64 keeps the output matmul efficient
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Only now, with every input checked, is anything in output_dir replaced or created.
    if args.overwrite_output_dir and resume_path is None and is_main and output_dir.exists():
        shutil.rmtree(output_dir)
    accelerator.wait_for_everyone()
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_stale_staging(output_dir)
    model = NormGPTForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = n_params - model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    tokens_per_step = args.per_device_train_batch_size * run.data.block_size * args.gradient_accumulation_steps
    tokens_per_step *= accelerator.num_processes

    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=accelerator.device.type == "cuda",
    )
    scheduler = LambdaLR(optimizer, lr_lambda(args.warmup_steps, args.max_steps, args.min_lr_ratio))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = TokenBatches(
        data.train,
        run.data.block_size,
        args.per_device_train_batch_size,
        args.seed,
        accelerator.process_index,
        accelerator.num_processes,
    )
    state = TrainerState()
    accelerator.register_for_checkpointing(batches, state)

    metrics = MetricsWriter(output_dir / "metrics.jsonl", enabled=is_main)
    if is_main:
        save_run_config(run, output_dir / "run_config.yaml")
        write_json_atomic(output_dir / "data_info.json", data.info)
    if log_with:
        accelerator.init_trackers(
            "normgpt",
            config={f"{s}.{k}": v for s, d in run.to_yaml_dict().items() for k, v in d.items()},
            init_kwargs={"wandb": {"name": args.run_name or output_dir.name, "dir": str(output_dir)}},
        )

    peak = peak_flops(torch.cuda.get_device_name()) if accelerator.device.type == "cuda" else None
    fpt = flops_per_token(n_matmul, config.num_hidden_layers, config.hidden_size, run.data.block_size)
    accelerator.print(
        f"normgpt: {n_params / 1e6:.2f}M parameters, norm={config.norm_type}, {accelerator.num_processes} process(es) "
        f"on {accelerator.device.type}, {tokens_per_step} tokens/step, output_dir={output_dir}"
    )

    def log(row: dict) -> None:
        metrics.write(row)
        if log_with:
            # Trackers take scalars: per-block lists become one curve per block ("resid_rms/3").
            scalars = {}
            for key, value in row.items():
                if isinstance(value, list):
                    scalars |= {f"{key}/{i}": v for i, v in enumerate(value)} if key != "spikes" else {}
                elif key != "step":
                    scalars[key] = value
            accelerator.log(scalars, step=row["step"])

    has_val = len(data.val) > 0  # --validation_split_percentage 0 trains without evaluation

    def run_eval() -> float:
        val_loss = evaluate(model, accelerator, data, run)
        if math.isfinite(val_loss) and state.step > 0:
            state.best_val_loss = min(val_loss, state.best_val_loss or math.inf)
        log({"step": state.step, "val_loss": val_loss, "tokens": state.tokens, "elapsed": round(state.elapsed, 3)})
        return val_loss

    def save_checkpoint() -> None:
        final = output_dir / f"checkpoint-{state.step}"
        staging = ckpt.staging_dir(final)
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if is_main:
            ckpt.publish(staging, final)
            ckpt.rotate(output_dir, args.save_total_limit)
        accelerator.wait_for_everyone()

    spikes = SpikeDetector()
    divergence = DivergenceMonitor(args.warmup_steps)
    accelerator.register_for_checkpointing(spikes, divergence)
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        metrics.truncate_after(state.step)
        accelerator.print(f"resumed from {resume_path} at step {state.step}")
    blocks = accelerator.unwrap_model(model, keep_torch_compile=False).model.layers
    reduce_shards = accelerator.distributed_type == DistributedType.FSDP

    def block_norms(sq_sums: torch.Tensor) -> list[float]:
        if reduce_shards:
            sq_sums = accelerator.reduce(sq_sums.to(accelerator.device), reduction="sum")
        return [round(v, 6) for v in sq_sums.sqrt().tolist()]

    if state.step == 0 and has_val:
        state.init_val_loss = run_eval()
    model.train()
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not is_main, desc="train", dynamic_ncols=True)
    window_start, window_tokens = time.perf_counter(), 0
    window_losses: list[torch.Tensor] = []  # per-step losses, read (one sync) on logging steps only
    window_grad_norms: list[torch.Tensor] = []
    segment_start, elapsed_before = time.perf_counter(), state.elapsed
    diverged: str | None = None
    losses: list[float] = []
    while state.step < args.max_steps:
        log_now = (state.step + 1) % args.logging_steps == 0 or state.step + 1 == args.max_steps
        probing = log_now and args.stability_metrics
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(args.gradient_accumulation_steps):
            input_ids = batches.next_batch().to(accelerator.device, non_blocking=True)
            # Skip the gradient all-reduce on all but the last micro-batch of the step.
            last = micro == args.gradient_accumulation_steps - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                with probe(blocks) if probing and last else contextlib.nullcontext() as found:
                    out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
                accelerator.backward(out.loss / args.gradient_accumulation_steps)
            step_loss += out.loss.detach() / args.gradient_accumulation_steps
        if probing and not found["resid_rms"]:
            # A compiled forward does not run hooks added to its submodules after compilation: probe the same
            # micro-batch with one eager, gradient-free forward instead.
            with torch.no_grad(), probe(blocks) as found:
                accelerator.unwrap_model(model, keep_torch_compile=False)(input_ids=input_ids, use_cache=False)
        if probing:
            grad_blocks = block_norms(block_sq_sums(blocks, "grad"))
            before = snapshot_blocks(blocks)
            log_z = torch.logsumexp(out.logits.detach().float(), dim=-1).mean()
        # Norm of the full gradient before clipping (inf: measure without clipping).
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += tokens_per_step
        window_tokens += tokens_per_step
        state.elapsed = elapsed_before + time.perf_counter() - segment_start
        window_losses.append(step_loss)
        window_grad_norms.append(grad_norm.detach().float().reshape(()))
        bar.update(1)
        if log_now:
            # One synchronisation reads every step's loss since the last row.
            losses = accelerator.reduce(torch.stack(window_losses), reduction="mean").tolist()
            first = state.step - len(losses) + 1
            new_spikes = [first + i for i, value in enumerate(losses) if spikes.update(first + i, value)]
            for i, value in enumerate(losses):
                diverged = diverged or divergence.update(first + i, value)
            state.max_grad_norm = max(state.max_grad_norm, torch.stack(window_grad_norms).max().item())
            window_losses, window_grad_norms = [], []
            now = time.perf_counter()
            tps = window_tokens / (now - window_start)
            window_start, window_tokens = now, 0
            row = {
                "step": state.step,
                "loss": losses[-1],
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": state.tokens,
                "tokens_per_sec": round(tps, 1),
                "elapsed": round(state.elapsed, 3),
            }
            postfix = {"loss": f"{losses[-1]:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{tps:,.0f}"}
            if peak is not None:
                row["mfu"] = round(tps * fpt / (peak * accelerator.num_processes), 4)
                postfix["mfu"] = f"{row['mfu']:.1%}"
            if probing:
                attn_max = [float(v) for v in torch.stack(found["attn_logit_max"]).tolist()]
                seen = [state.max_attn_logit] if state.max_attn_logit is not None else []
                state.max_attn_logit = max(attn_max + seen)
                # ratio of L2 norms = ratio of RMS: both sums run over the same elements
                weight_norm = block_norms(block_sq_sums(blocks, "param"))
                update_norm = block_norms(update_sq_sums(blocks, before))
                row |= {
                    "grad_norm_blocks": grad_blocks,
                    "update_ratio_blocks": [
                        round(u / max(w, 1e-12), 8) for u, w in zip(update_norm, weight_norm, strict=True)
                    ],
                    "resid_rms": [round(v, 5) for v in torch.stack(found["resid_rms"]).tolist()],
                    "attn_logit_max": [round(v, 4) for v in attn_max],
                    "log_z": round(log_z.item(), 5),
                }
                del before
            row |= {"spike_count": len(spikes.spike_steps), "spikes": new_spikes}
            log(row)
            bar.set_postfix(postfix, refresh=False)
            if diverged:
                log({"step": state.step, "diverged": True, "reason": diverged})
                break
        if has_val and args.eval_steps and state.step % args.eval_steps == 0 and state.step < args.max_steps:
            val_loss = run_eval()
            if is_main:
                bar.write(f"step {state.step}: val_loss {val_loss:.4f}")
        if args.save_steps and state.step % args.save_steps == 0:
            save_checkpoint()
    bar.close()

    final_val_loss = None
    if diverged:
        accelerator.print(f"diverged: {diverged}; stopped at step {state.step} of {args.max_steps}")
    else:
        final_val_loss = run_eval() if has_val else None
        check_ranks_agree(model, accelerator)
        save_final_model(model, accelerator, data, output_dir)
    if is_main:
        summary = {
            "status": "diverged" if diverged else "completed",
            "diverged": bool(diverged),
            "diverged_reason": diverged,
            "diverged_step": state.step if diverged else None,
            "steps": state.step,
            "max_steps": args.max_steps,
            "init_val_loss": state.init_val_loss,
            "final_val_loss": final_val_loss,
            "best_val_loss": state.best_val_loss,
            "final_train_loss": losses[-1] if losses else None,
            "spike_count": len(spikes.spike_steps),
            "spike_steps": spikes.spike_steps,
            "max_grad_norm": state.max_grad_norm,
            "max_attn_logit": state.max_attn_logit,
            "tokens_per_sec": round(state.tokens / max(state.elapsed, 1e-9), 1),
            "wall_time": round(state.elapsed, 3),
            "num_parameters": n_params,
            "device": device_name(accelerator.device),
            "num_processes": accelerator.num_processes,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "model": {
                **{k: getattr(config, k) for k in SUMMARY_MODEL_FIELDS},
                "norm_numerics": describe_norms(config),
            },
        }
        write_json_atomic(output_dir / "summary.json", summary)
        plot_loss_curve(output_dir / "metrics.jsonl", output_dir / "loss_curve.png", f"{output_dir.name}")
        # An FSDP-sharded model cannot generate from the main process alone.
        if not diverged and args.sample_max_new_tokens and accelerator.distributed_type != DistributedType.FSDP:
            text = sample_text(model, accelerator, data, args.sample_max_new_tokens)
            (output_dir / "sample.txt").write_text(text + "\n")
            print(f"--- sample (greedy) ---\n{text}\n-----------------------")
        final = f"final val_loss {final_val_loss:.4f}" if final_val_loss is not None else "no validation split"
        print(f"done: {state.step} steps, {final}, {state.elapsed:.1f}s; {summary['status']}; run in {output_dir}")
    accelerator.end_training()
    return output_dir


def main(argv: list[str] | None = None) -> int:
    try:
        run = parse_args(argv)
        train(run)
    except (ConfigError, DataError, ckpt.CheckpointError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
