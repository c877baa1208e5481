"""Gradient checkpointing: peak memory and step time of a training step with and without it, per preset, measured in
the same run and printed as ratios.

    python scripts/bench_gradient_checkpointing.py                    # tiny and small presets, on CPU
    python scripts/bench_gradient_checkpointing.py --presets small --batch_size 2 --steps 3
    python scripts/bench_gradient_checkpointing.py --device cuda      # the presets' own batch sizes

A training step is what the trainer does: forward with labels, backward, gradient norm, AdamW step, zero_grad.
Checkpointing is `model.activation_checkpointing_enable()` (non-reentrant, the library's default): each block keeps
only its input and recomputes the rest in the backward pass.

How it is measured. Each preset runs in a fresh process, which builds one model and trains it with checkpointing
switched off and on step by step (ABAB...), so a machine whose load drifts slows both modes alike. Before any update
both modes compute the loss and gradient norm of the same weights: they must agree exactly (checkpointing changes
memory and time, never the numbers).
- step time: the median over the timed steps of each mode (wall clock; synchronised on CUDA).
- step memory: what a training step adds to memory at its peak (activations kept for backward, gradients,
  temporaries), over the memory before it (model, optimizer moments, batch), the largest over the timed steps.
  On CPU torch keeps no allocator statistics (and tracemalloc does not see its allocations), so this is the
  process's resident memory: the kernel's high-water mark VmHWM during the step, reset just before it through
  /proc/self/clear_refs, minus VmRSS just before it. glibc is told to hand every allocation over 64 KiB straight to
  mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set and the high-water mark follows live
  memory, not a heap that never shrinks. On CUDA: torch.cuda.max_memory_allocated minus memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_BATCH = {"tiny": None, "small": 1}  # None: the preset's own; the 124M preset takes one sequence on 2 CPU cores


def preset(name: str) -> tuple[dict, int, int]:
    """The model fields, block size and per-device batch size of configs/<name>.yaml."""
    sections = yaml.safe_load((REPO_ROOT / "configs" / f"{name}.yaml").read_text())
    return sections["model"], sections["data"]["block_size"], sections["training"]["per_device_train_batch_size"]


def read_status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


class MemoryMeter:
    """Memory now and the peak since `reset`, in MiB, for the device the step runs on."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        import torch

        return torch.cuda.memory_allocated() / 2**20 if self.cuda else read_status_kib("VmRSS") / 1024

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set

    def peak(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else read_status_kib("VmHWM") / 1024


def worker(args: argparse.Namespace) -> dict:
    """One preset, in this process. Both modes train the same model, toggled step by step (ABAB...), so a machine
    whose load drifts slows both alike; the timing is the median per mode, the memory the largest step's."""
    import torch

    from model import NormGPTConfig, NormGPTForCausalLM

    model_fields, block_size, _ = preset(args.preset)
    torch.manual_seed(0)
    model = NormGPTForCausalLM(NormGPTConfig(**model_fields)).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, block_size), device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    meter = MemoryMeter(args.device)
    modes = {"none": model.activation_checkpointing_disable, "checkpointing": model.activation_checkpointing_enable}

    def loss_and_grad_norm() -> tuple[float, float]:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.item(), torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()

    found = {name: {"step_s": [], "step_mib": []} for name in modes}
    for name, switch in modes.items():  # same weights: the numbers must not depend on the mode
        switch()
        found[name]["first_loss"], found[name]["first_grad_norm"] = loss_and_grad_norm()
        optimizer.zero_grad(set_to_none=True)
    for round_ in range(args.warmup + args.steps):
        for name, switch in modes.items():
            switch()
            sync()
            baseline = meter.now()
            meter.reset()
            start = time.perf_counter()
            loss_and_grad_norm()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if round_ >= args.warmup:  # warm-up: the optimizer allocates its moments, kernels get chosen
                found[name]["step_s"].append(time.perf_counter() - start)
                found[name]["step_mib"].append(meter.peak() - baseline)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        name: {**r, "step_s": statistics.median(r["step_s"]), "step_mib": max(r["step_mib"]), "params_m": params_m}
        for name, r in found.items()
    }


def measure(name: str, args: argparse.Namespace, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--preset", name, "--batch_size", str(batch_size)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: the {name} benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(name: str, batch_size: int, block_size: int, found: dict, unit: str) -> None:
    plain, ckpt = found["none"], found["checkpointing"]
    print(f"\n{name}: {plain['params_m']:.1f}M parameters, batch {batch_size} x {block_size} tokens")
    print(f"  {'':16}{'step time':>12}{'step memory':>14}{'first loss':>12}{'grad norm':>12}")
    for label, r in (("no checkpointing", plain), ("checkpointing", ckpt)):
        print(
            f"  {label:16}{r['step_s']:>11.3f}s{r['step_mib']:>7.0f} MiB {unit}"
            f"{r['first_loss']:>12.6f}{r['first_grad_norm']:>12.6f}"
        )
    print(
        f"  ratio (checkpointing / none): step time x{ckpt['step_s'] / plain['step_s']:.2f}, "
        f"step memory x{ckpt['step_mib'] / plain['step_mib']:.2f}"
    )
    same = (ckpt["first_loss"], ckpt["first_grad_norm"]) == (plain["first_loss"], plain["first_grad_norm"])
    if not same:
        print("  WARNING: the first step's loss or gradient norm differs between the modes")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch_size", type=int, help="sequences per step (default: the preset's; 1 for small on CPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the optimizer allocates its state)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not _cuda_available():
        parser.exit(2, "error: --device cuda: no CUDA device here; valid: cpu\n")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.exit(2, f"error: unknown --device {args.device!r}; valid: cpu, cuda\n")
    if min(args.steps, args.warmup) < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.exit(2, "error: --steps, --warmup and --batch_size must be positive\n")
    return args


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    unit = "alloc" if args.device.startswith("cuda") else "RSS"
    print(f"device {args.device}; {args.warmup} warm-up and {args.steps} timed steps per configuration")
    for name in args.presets:
        _, block_size, preset_batch = preset(name)
        default = preset_batch if args.device != "cpu" else CPU_BATCH[name] or preset_batch
        batch_size = args.batch_size or default
        report(name, batch_size, block_size, measure(name, args, batch_size), unit)


if __name__ == "__main__":
    main()
