"""Training-step throughput and MFU of the 124M model: each norm path eager and compiled, the speed levers one at a
time, and the trainer against a bare loop of the same model, in one process.

    python scripts/bench_step.py                          # every variant eager and compiled (issue 14's table)
    python scripts/bench_step.py --levers --trainer       # the levers one by one, then the trainer (issue 17's)
    python scripts/bench_step.py --quick --max-minutes 3 --json runs/bench_step.json
    python scripts/bench_step.py --memory                 # activation memory per token, measured on the CPU
    python scripts/bench_step.py --cpu --preset tiny --levers --trainer --modes eager   # ratios on a CPU
    python scripts/bench_step.py --smoke                  # CPU, tiny shapes, one step each: a smoke test

The model is configs/small.yaml's (768 wide, 12 layers, 12 heads, vocabulary 50304, SwiGLU, tied embeddings;
`--preset tiny` takes configs/tiny.yaml's), sequences of 1024 tokens, batch 16, bf16 autocast on CUDA, fused AdamW,
gradients clipped to norm 1 as the trainer does (`--clip 0`: not), random tokens. The variants of the table:

    rms_kernel   normgpt with RMSNorm on the fused Triton kernel (rms_impl=triton)
    rms_torch    normgpt with RMSNorm in PyTorch (rms_impl=torch)
    layer        normgpt with LayerNorm
    hf_llama     transformers' LlamaForCausalLM built from the same config (the stock export's target)

each eager and under torch.compile of the whole model (as the trainer's --torch_compile), with the loss `--loss`
(full: the logits, then the loss, as transformers computes it; chunked: model/linear_cross_entropy.py).

`--levers` then measures the levers of the compiled 124M step one at a time, on rms with rms_impl=auto (the
trainer's): the table's configuration (micro-batch 16, full loss), + the chunked loss, + one micro-batch of 64
sequences instead of 4 accumulated ones (`--levers-batch`; what configs/small.yaml trains with), + CUDA graphs
(torch.compile mode reduce-overhead). `--trainer` runs the real trainer (train/trainer.py, in this process, on the
stdlib data of `--preset`) with the settings of the micro-batch step and reports its tokens/s over the bare loop's:
what the trainer's own work per step costs (logging, the non-finite guard, stop flags, probes every 10 steps).

A step is forward with labels, backward, clipping, optimizer step, zero_grad; tokens/s counts the timed steps after
warm-up (compilation and the kernels' tuning). MFU is tokens/s times the training FLOPs per token of
train/flops.py, 6 * (matmul weights) + 12 * layers * width * sequence (PaLM's count, causal half not subtracted),
over the GPU's dense bf16 peak from the datasheet; the report states the numbers.

`--memory` measures, on the CPU and without a GPU, the bytes the forward saves for the backward per token (both
losses, bf16 autocast; the slope between 1 and 2 sequences), and prints the largest micro-batch that fits an 80 GB
card: the arithmetic behind configs/small.yaml's batch (docs/benchmarks.md).

Without CUDA (and without --smoke, --cpu or --memory): one line and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from train.arguments import COMPILE_MODES
from train.cli import OneLineParser

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("rms_kernel", "rms_torch", "layer", "hf_llama")
RMS_IMPL = {"rms_kernel": "triton", "rms_torch": "torch", "rms_auto": "auto"}  # rms_auto: the trainer's choice
MODES = ("eager", "compiled")
LOSSES = ("full", "chunked")
PRESETS = ("small", "tiny")
SMOKE_MODEL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
# Targets, checked in the report on ratios measured in the same run: issue 14's and issue 17's.
TARGETS = {
    "rms_kernel eager / layer eager": 1.05,
    "rms (auto) compiled / hf_llama compiled": 1.0,
    "trainer / bare loop": 0.98,
}
MFU_TARGET = 0.40  # issue 17: the compiled 124M step on one H100/H200
CARD_BYTES = 80e9  # an 80 GB card (H100): what configs/small.yaml's micro-batch is sized for
MEMORY_RESERVE = 0.9  # of it for tensors: the CUDA context, allocator fragmentation and workspaces take the rest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__, name="bench_step.py", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--preset", choices=PRESETS, default="small", help="the model of configs/<preset>.yaml")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's block size)")
    parser.add_argument("--loss", choices=LOSSES, default="full", help="the variants' loss (default full)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile mode")
    parser.add_argument("--clip", type=float, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    parser.add_argument("--levers", action="store_true", help="the compiled step's levers one at a time")
    parser.add_argument("--levers-batch", type=int, default=64, help="the micro-batch of the levers (default 64)")
    parser.add_argument("--trainer", action="store_true", help="the real trainer against the bare loop")
    parser.add_argument("--memory", action="store_true", help="activation memory per token (CPU) and the batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, tuning)")
    parser.add_argument("--quick", action="store_true", help="10 timed steps after 3 warm-up steps")
    parser.add_argument("--max-minutes", type=float, help="start no new run after this long")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (ratios only: no MFU)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, one step: checks the script runs")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = min(args.steps, 10), min(args.warmup, 3)
    if args.smoke:
        args.cpu, args.batch_size, args.levers_batch, args.seq_len, args.steps, args.warmup = True, 2, 4, 16, 1, 1
        if args.compile_backend == "inductor":
            args.compile_backend = "aot_eager"  # inductor's CPU code generation takes minutes; the path is the same
    if min(args.batch_size, args.levers_batch, args.steps, args.seq_len or 2) < 1 or args.warmup < 0:
        parser.error("--batch-size, --levers-batch, --seq-len and --steps take positive integers, --warmup >= 0")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error("--max-minutes must be > 0")
    if not args.clip >= 0:
        parser.error("--clip must be >= 0")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def preset_config(args):
    """The model config of configs/<preset>.yaml (its vocabulary as written: random tokens need no tokenizer), and
    the preset's block size."""
    from model import NormGPTConfig
    from train.config import parse_args as parse_run

    if args.smoke:
        return NormGPTConfig(**SMOKE_MODEL, max_position_embeddings=args.seq_len), args.seq_len
    run = parse_run(["--config", str(REPO / "configs" / f"{args.preset}.yaml")])
    return run.model_config(), run.data.block_size


def build_model(variant: str, setting: dict, args, device: torch.device) -> torch.nn.Module:
    """The variant's model on `device`, seeded, for sequences of args.seq_len."""
    from model import NormGPTForCausalLM
    from train.publish.stock import LLAMA, stock_config

    config, _ = preset_config(args)
    config.norm_type = "layer" if variant == "layer" else "rms"
    config.max_position_embeddings = max(config.max_position_embeddings, args.seq_len)
    torch.manual_seed(0)
    if variant == "hf_llama":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(stock_config(config, LLAMA))
    else:
        model = NormGPTForCausalLM(config)
        model.set_rms_impl(RMS_IMPL.get(variant, "auto"))  # runtime choices, never the checkpoint's
        model.set_loss_impl(setting["loss"])
    model.set_attn_implementation("sdpa")
    return model.to(device)


def flops_of(model: torch.nn.Module, args) -> tuple[float, str]:
    """(training FLOPs per token, the formula with its numbers) from train/flops.py."""
    from train.flops import flops_per_token, matmul_parameters

    config = model.config
    n_matmul = matmul_parameters(model)
    flops = flops_per_token(n_matmul, config.num_hidden_layers, config.hidden_size, args.seq_len)
    formula = (
        f"6 x {n_matmul / 1e6:.2f}M matmul weights + 12 x {config.num_hidden_layers} layers x "
        f"{config.hidden_size} x {args.seq_len} tokens = {flops / 1e6:.1f} MFLOP/token"
    )
    return flops, formula


# ----------------------------------------------------------------------------------------------------------------
# One bare-loop run: a model, a mode, warm-up and timed steps
# ----------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setting_of(variant: str, mode: str, args, **changes) -> dict:
    """One run's settings: the table's from the flags, a lever's with its changes."""
    base = dict(variant=variant, mode=mode, batch_size=args.batch_size, loss=args.loss, compile_mode=args.compile_mode)
    return {**base, **changes}


def run_bare(setting: dict, args, device: torch.device) -> dict:
    model = build_model(setting["variant"], setting, args, device)
    flops, formula = flops_of(model, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    compiled = setting["mode"] == "compiled"
    mode = None if setting["compile_mode"] == "default" else setting["compile_mode"]
    step_model = torch.compile(model, backend=args.compile_backend, mode=mode) if compiled else model
    vocab, batch = model.config.vocab_size, setting["batch_size"]
    generator = torch.Generator(device=device).manual_seed(1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> torch.Tensor:
        ids = torch.randint(0, vocab, (batch, args.seq_len), device=device, generator=generator)
        with autocast:
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, first_loss = time.perf_counter(), None
    for _ in range(args.warmup):
        first_loss = step() if first_loss is None else first_loss
        synchronize(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    result = dict(setting, tokens_per_s=batch * args.seq_len * args.steps / elapsed, warmup_s=warmup_s)
    result |= {"step_ms": 1e3 * elapsed / args.steps, "loss_last": float(loss), "flops_per_token": flops}
    result |= {"loss_first": float(first_loss) if first_loss is not None else None, "flops_formula": formula}
    result["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    if device.type == "cuda":
        result["max_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def release(device: torch.device) -> None:
    """Between runs: no compiled graph, cached kernel plan or allocation of one run may help or hurt the next."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# The trainer, in this process, with a lever step's settings
# ----------------------------------------------------------------------------------------------------------------

TRAINER_WINDOW = 10  # steps per metrics row, as configs/small.yaml logs (and probes)


def trainer_argv(setting: dict, args, out: Path) -> list[str]:
    windows = 1 + math.ceil(args.steps / TRAINER_WINDOW)  # the first window (compilation, tuning) is not counted
    argv = ["--config", str(REPO / "configs" / f"{args.preset}.yaml"), "--output_dir", str(out)]
    argv += ["--max_steps", str(windows * TRAINER_WINDOW), "--logging_steps", str(TRAINER_WINDOW)]
    argv += ["--per_device_train_batch_size", str(setting["batch_size"]), "--gradient_accumulation_steps", "1"]
    argv += ["--block_size", str(args.seq_len), "--loss_impl", setting["loss"], "--rms_impl", "auto"]
    argv += ["--max_grad_norm", str(args.clip), "--warmup_steps", "0", "--eval_steps", "0", "--save_steps", "0"]
    argv += ["--validation_split_percentage", "0", "--sample_max_new_tokens", "0", "--report_to", "none"]
    if setting["mode"] == "compiled":
        argv += ["--torch_compile_mode", setting["compile_mode"]]
    if args.smoke:  # the smoke model, on a slice of the standard library (a BPE of its 320 tokens in seconds)
        argv += [f"--{key}={value}" for key, value in SMOKE_MODEL.items() if key != "vocab_size"]
        argv += ["--vocab_size", "320", "--max_position_embeddings", str(args.seq_len), "--max_train_bytes", "300000"]
    return argv


def run_trainer(setting: dict, args, device: torch.device) -> dict:
    """The trainer's own tokens/s (metrics.jsonl's windows after the first), on the preset's stdlib data."""
    from train.run_directory import METRICS, MetricsLog
    from train.train import main as train_main

    if device.type == "cuda":
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")  # bf16 autocast, as the bare loop
    with tempfile.TemporaryDirectory(prefix="bench_step_trainer.") as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        if train_main(trainer_argv(setting, args, out)) != 0:
            raise RuntimeError("the trainer run failed")
        wall = time.perf_counter() - start
        rows = [r for r in MetricsLog(out / METRICS).rows() if "tokens_per_sec" in r][1:]
    rates = [r["tokens_per_sec"] for r in rows]
    tokens_per_s = len(rates) / sum(1 / rate for rate in rates)  # equal tokens per window: the harmonic mean
    result = dict(setting, variant="trainer", tokens_per_s=tokens_per_s, wall_s=wall, windows=len(rates))
    result["step_ms"] = 1e3 * setting["batch_size"] * args.seq_len / tokens_per_s
    return result


# ----------------------------------------------------------------------------------------------------------------
# Activation memory, measured on the CPU
# ----------------------------------------------------------------------------------------------------------------


def saved_bytes(model, batch: int, seq: int) -> int:
    """Bytes of the tensors the forward (bf16 autocast) saves for the backward, each storage once, weights not."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids, use_cache=False)
    return sum(saved.values())


def memory_plan(args) -> dict:
    """Per token and fixed saved bytes of each loss, the optimizer state, and the largest micro-batch that fits."""
    from model import NormGPTForCausalLM
    from model.linear_cross_entropy import rows_per_chunk

    config, _ = preset_config(args)
    torch.manual_seed(0)
    model = NormGPTForCausalLM(config)
    model.set_rms_impl("torch")
    params = sum(p.numel() for p in model.parameters())
    state = 16 * params  # float32 weight, gradient and AdamW's two moments
    budget = MEMORY_RESERVE * CARD_BYTES - state
    plan = {"params": params, "state_bytes": state, "card_bytes": CARD_BYTES, "reserve": MEMORY_RESERVE}
    for loss in LOSSES:
        model.set_loss_impl(loss)
        one, two = saved_bytes(model, 1, args.seq_len), saved_bytes(model, 2, args.seq_len)
        per_token, fixed = (two - one) / args.seq_len, 2 * one - two
        # In the backward the full loss also holds the float32 and bf16 gradients of every logit at once; the
        # chunked one holds those of one chunk (with its float32 logits) at a time.
        transient = 6 * config.vocab_size if loss == "full" else 0
        fixed += 0 if loss == "full" else 6 * rows_per_chunk(config.vocab_size) * config.vocab_size
        largest = int((budget - fixed) // (args.seq_len * (per_token + transient)))
        plan[loss] = {"per_token_bytes": per_token, "fixed_bytes": fixed, "transient_per_token_bytes": transient}
        plan[loss]["largest_micro_batch"] = largest
    return plan


def print_memory(plan: dict, args) -> None:
    print(f"\nactivation memory, measured on the CPU (bf16 autocast, sequences of {args.seq_len}):")
    print(f"  optimizer state: 16 bytes x {plan['params'] / 1e6:.1f}M parameters = {plan['state_bytes'] / 1e9:.2f} GB")
    for loss in LOSSES:
        p = plan[loss]
        print(
            f"  {loss:<8} saved {p['per_token_bytes'] / 1e3:7.1f} kB/token + {p['fixed_bytes'] / 1e6:6.0f} MB fixed"
            f", backward transient {p['transient_per_token_bytes'] / 1e3:5.1f} kB/token: largest micro-batch "
            f"on {plan['card_bytes'] / 1e9:.0f} GB ({plan['reserve']:.0%} usable) = {p['largest_micro_batch']}"
        )


# ----------------------------------------------------------------------------------------------------------------
# What to run, and the report
# ----------------------------------------------------------------------------------------------------------------


def lever_settings(args) -> list[tuple[str, dict]]:
    """The compiled step of rms (rms_impl=auto), one lever added at a time."""
    mode = "compiled" if "compiled" in args.modes else args.modes[0]
    base = setting_of("rms_auto", mode, args, loss="full", compile_mode="default")
    chunked = {**base, "loss": "chunked"}
    batch = {**chunked, "batch_size": args.levers_batch}
    graphs = {**batch, "compile_mode": "reduce-overhead"}
    steps = [("baseline", base), ("+ chunked loss", chunked), (f"+ micro-batch {args.levers_batch}", batch)]
    return steps + ([("+ CUDA graphs", graphs)] if mode == "compiled" and not args.cpu else [])


def plan_runs(args) -> list[tuple[str, str, dict]]:
    """(kind, label, setting) in the order they run, the most wanted first when time is boxed: the table's eager
    runs, the levers, the table's compiled runs, the trainer."""
    table = [("table", "", setting_of(v, m, args)) for m in args.modes for v in args.variants]
    levers = lever_settings(args) if args.levers or args.trainer else []
    runs = [run for run in table if run[2]["mode"] == "eager"]
    runs += [("lever", label, setting) for label, setting in levers if args.levers]
    runs += [run for run in table if run[2]["mode"] == "compiled"]
    if args.trainer:
        micro_batch = next(setting for label, setting in levers if label.startswith("+ micro-batch"))
        runs.append(("trainer", "trainer", micro_batch))
    return runs


def measured_as(setting: dict, device: torch.device) -> tuple:
    """What a bare run computes: rms_auto is the kernel or PyTorch run of the same settings, as auto decides."""
    from model.norms import auto_uses_kernel

    variant = setting["variant"]
    if variant == "rms_auto":
        kernel = auto_uses_kernel(768, device.type, setting["mode"] == "compiled")
        variant = "rms_kernel" if kernel else "rms_torch"
    return variant, setting["mode"], setting["batch_size"], setting["loss"], setting["compile_mode"]


def add_mfu(results: list[dict], peak: float | None) -> None:
    for r in results:
        flops = r.get("flops_per_token") or next((x["flops_per_token"] for x in results if "flops_per_token" in x), 0)
        r["mfu"] = r["tokens_per_s"] * flops / peak if peak and flops else None


def ratios(results: list[dict]) -> dict[str, float]:
    """The issues' ratios, where both runs exist. rms under compile with rms_impl=auto is the PyTorch path."""
    from model.norms import auto_uses_kernel

    tps = {(r["variant"], r["mode"]): r["tokens_per_s"] for r in results if r["kind"] == "table"}
    auto_compiled = "rms_kernel" if auto_uses_kernel(768, "cuda", compiling=True) else "rms_torch"
    pairs = {
        "rms_kernel eager / layer eager": (("rms_kernel", "eager"), ("layer", "eager")),
        "rms (auto) compiled / hf_llama compiled": ((auto_compiled, "compiled"), ("hf_llama", "compiled")),
        "rms_kernel compiled / rms_torch compiled": (("rms_kernel", "compiled"), ("rms_torch", "compiled")),
        "rms_kernel eager / rms_torch eager": (("rms_kernel", "eager"), ("rms_torch", "eager")),
    }
    out = {name: tps[a] / tps[b] for name, (a, b) in pairs.items() if a in tps and b in tps}
    levers = [r for r in results if r["kind"] == "lever"]
    for before, after in zip(levers, levers[1:], strict=False):
        out[f"{after['label']} / {before['label']}"] = after["tokens_per_s"] / before["tokens_per_s"]
    trainer = [r for r in results if r["kind"] == "trainer"]
    bare = [r for r in levers if r["label"].startswith("+ micro-batch")]
    if trainer and bare:
        out["trainer / bare loop"] = trainer[0]["tokens_per_s"] / bare[0]["tokens_per_s"]
    return out


def print_report(results: list[dict], peak: float | None, device_name: str) -> None:
    from model.norms import auto_uses_kernel

    print(f"\n{device_name}; peak {peak / 1e12:.0f} TFLOP/s dense bf16 (datasheet)" if peak else f"\n{device_name}")
    formula = next((r["flops_formula"] for r in results if "flops_formula" in r), None)
    if formula:
        print(f"MFU = tokens/s x FLOPs per token / peak, FLOPs per token = {formula}")
    print(f"{'run':<28}{'mode':<10}{'batch':>6}{'loss':>9}{'tokens/s':>12}{'step ms':>10}{'MFU':>8}{'GiB':>7}")
    for r in results:
        name = r["label"] or r["variant"]
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        memory = f"{r['max_memory_GiB']:.1f}" if "max_memory_GiB" in r else "-"
        mode = r["mode"] if r["compile_mode"] == "default" or r["mode"] == "eager" else r["compile_mode"]
        print(
            f"{name:<28}{mode:<10}{r['batch_size']:>6}{r['loss']:>9}{r['tokens_per_s']:>12,.0f}{r['step_ms']:>10.1f}"
            f"{mfu:>8}{memory:>7}"
        )
    for mode in MODES:
        path = "the fused kernel" if auto_uses_kernel(768, "cuda", mode == "compiled") else "PyTorch"
        print(f"rms_impl=auto, {mode}: {path}")
    for name, value in ratios(results).items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  (target >= {target:.2f}: {'met' if value >= target else 'MISSED'})"
        print(f"{name}: {value:.3f}{verdict}")
    best = max((r["mfu"] for r in results if r.get("mfu") and r["mode"] == "compiled"), default=None)
    if best is not None:
        print(f"best compiled MFU: {100 * best:.1f}% (target >= {100 * MFU_TARGET:.0f}%)")


def run_all(args, device: torch.device) -> tuple[list[dict], list[str]]:
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else math.inf
    results, skipped, measured = [], [], {}
    for kind, label, setting in plan_runs(args):
        name = f"{label or setting['variant']} {setting['mode']}"
        same = measured.get(measured_as(setting, device)) if kind != "trainer" else None
        if same is not None:  # the lever baseline is the table's compiled rms run: measured once
            results.append({**same, "kind": kind, "label": label, "variant": setting["variant"]})
            continue
        if time.monotonic() > deadline:
            skipped.append(name)
            continue
        run = run_trainer if kind == "trainer" else run_bare
        results.append({"kind": kind, "label": label, **run(setting, args, device)})
        measured.setdefault(measured_as(setting, device), results[-1])
        release(device)
        print(f"{name:<40}{results[-1]['tokens_per_s']:>12,.0f} tokens/s", flush=True)
    return results, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    if args.seq_len is None:
        args.seq_len = preset_config(args)[1]
    if args.memory:
        plan = memory_plan(args)
        print_memory(plan, args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"memory": plan, "args": vars(args)}, indent=1, default=str))
        return 0
    if args.smoke and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernel variant through Triton's interpreter
    if not cuda and not args.cpu:
        print("bench_step.py: needs a CUDA GPU (none found); --cpu, --smoke and --memory run without", file=sys.stderr)
        return 2
    from train.flops import peak_flops

    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = peak_flops(device_name) if cuda else None
    results, skipped = run_all(args, device)
    if not results:
        print("bench_step.py: --max-minutes left no time for any run", file=sys.stderr)
        return 1
    add_mfu(results, peak)
    print_report(results, peak, device_name)
    if skipped:
        print(f"--max-minutes reached, not run: {', '.join(skipped)}")
    if args.json:
        from model.rmsnorm_triton import kernel_choices

        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": device_name, "peak_flops": peak, "torch": torch.__version__, "args": vars(args)}
        record = {"meta": meta, "results": results, "ratios": ratios(results), "skipped": skipped}
        record["kernel_choices"] = kernel_choices()
        args.json.write_text(json.dumps(record, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
