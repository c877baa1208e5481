"""Benchmark normgpt's fused RMSNorm kernels against PyTorch and Liger, forward, backward and both. Needs a CUDA GPU.

    python scripts/bench_norm.py                                    # bf16, rows 32768 and 4096, N = 768 ... 32768
    python scripts/bench_norm.py --quick --json runs/bench_norm.json   # N = 768, 4096, 32768: a few minutes
    python scripts/bench_norm.py --dtypes bf16 fp32 --hidden 1024 65536 --max-minutes 10

RMSNorm is memory-bound, so the figure of merit is effective bandwidth against a device-to-device copy of the same
number of bytes (the ceiling any kernel can reach). Bytes are counted once per tensor the operation has to touch,
the same for every implementation, so GB/s compares implementations like inverse time does:

    forward:   read x, read w, write y
    backward:  read dy, read x, read w, read rstd (float32 per row), write dx, write dw
    fwd+bwd:   the sum of both

Each implementation is timed two ways, in the same run:
- kernel: CUDA-graph replay of calls that cycle through enough input sets to span several L2 caches (the GPU work
  alone: no Python, no launch overhead, no cached inputs);
- call: the same calls made from Python as a user makes them, timed with CUDA events (host overhead included
  wherever the GPU would otherwise wait for the host).
"% copy" is the kernel GB/s over the copy of the same bytes; "% peak" over the fastest copy of the run.

Every implementation is a callable (x, w) -> y built by `build_impls`, and every mode runs it through `runner`,
with the tensors `make_sets` builds: tests/test_bench_scripts.py runs exactly that on CPU, so a baseline that
would crash here (as compiled_ref once did, called without eps) fails a test first.

Without CUDA: one line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from train.cli import OneLineParser

HIDDEN_SIZES = [768, 1024, 2048, 4096, 8192, 16384, 32768]
QUICK_HIDDEN = [768, 4096, 32768]
ROWS = [32768, 4096]  # the targets are stated at 32768 rows: measured first when time is boxed
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd+bwd")
OURS, COPY = "normgpt", "copy"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        description=__doc__, name="bench_norm.py", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=ROWS, help="token counts (rows)")
    parser.add_argument("--hidden", type=int, nargs="+", help=f"hidden sizes (default {HIDDEN_SIZES})")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--weight-fp32", action="store_true", help="a float32 weight (default: the input dtype)")
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement (median)")
    parser.add_argument("--quick", action="store_true", help=f"N = {QUICK_HIDDEN} only, fewer repetitions")
    parser.add_argument("--max-minutes", type=float, help="start no new measurement after this long")
    parser.add_argument("--step-hidden", type=int, default=4096, help="width of the pre-norm step (0 skips it)")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = QUICK_HIDDEN if args.quick else HIDDEN_SIZES
    if args.quick:
        args.reps = min(args.reps, 10)
    if min(args.rows) < 1 or min(args.hidden) < 1 or args.reps < 1 or args.step_hidden < 0 or not args.eps > 0:
        parser.error("--rows, --hidden and --reps take positive integers, --step-hidden >= 0, --eps > 0")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error("--max-minutes must be > 0")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Implementations under test: each maps (x, w) -> y and is differentiable in both
# ----------------------------------------------------------------------------------------------------------------


def build_impls(n: int, eps: float, kernels, compile_backend: str = "inductor") -> dict[str, Any]:
    """Every implementation, as the callable the timing loops call. `compile_backend` only differs in the CPU test,
    which cannot afford inductor's compile time."""

    def reference(x, w):
        return kernels.rms_norm_reference(x, w, eps)

    impls = {
        OURS: lambda x, w: kernels.fused_rms_norm(x, w, eps),
        "hf_eager": reference,
        "F.rms_norm": lambda x, w: F.rms_norm(x, (n,), w, eps),
        # One compiled function per shape (dynamic=False): compile time never lands in a timed region, because
        # every measurement runs its calls once before timing them.
        "compiled_ref": torch.compile(reference, dynamic=False, backend=compile_backend),
        "F.layer_norm": lambda x, w: F.layer_norm(x, (n,), w, None, eps),  # more work: a familiar yardstick
    }
    try:
        from liger_kernel.transformers.functional import liger_rms_norm
    except ImportError:
        return impls
    # casting_mode="llama" gives our numerics; in_place=False because in place would overwrite the shared dy.
    impls["liger"] = lambda x, w: liger_rms_norm(x, w, eps, casting_mode="llama", in_place=False)
    return impls


def make_sets(count: int, rows: int, n: int, dtype, weight_dtype, device, seed: int = 0) -> list[tuple]:
    """`count` independent (x, w, dy) input sets, so consecutive calls never find their inputs in L2."""
    g = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(count):
        x = torch.randn(rows, n, device=device, dtype=dtype, generator=g)
        w = (1 + 0.1 * torch.randn(n, device=device, generator=g)).to(weight_dtype)
        sets.append((x, w, torch.randn(rows, n, device=device, dtype=dtype, generator=g)))
    return sets


def prepare(mode: str, impl, sets: list[tuple]) -> list[tuple]:
    """What `runner(mode, impl)` takes: (x, w) for fwd; (x, w, y, dy) with the forward already run for bwd;
    (x, w, dy) with x and w requiring grad for fwd+bwd."""
    if mode == "fwd":
        return [(x, w) for x, w, _ in sets]
    prepared = []
    for x, w, dy in sets:
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        prepared.append((x, w, impl(x, w), dy) if mode == "bwd" else (x, w, dy))
    return prepared


def runner(mode: str, impl):
    """One call of `impl` in `mode` on one prepared set. The backward keeps its graph (retain_graph) so that the
    same forward can be differentiated again and again."""
    if mode == "fwd":

        def fwd(s):
            with torch.no_grad():
                return impl(s[0], s[1])

        return fwd
    if mode == "bwd":
        return lambda s: torch.autograd.grad(s[2], (s[0], s[1]), s[3], retain_graph=True)
    return lambda s: torch.autograd.grad(impl(s[0], s[1]), (s[0], s[1]), s[2])


def bytes_moved(mode: str, rows: int, n: int, dtype: torch.dtype, weight_dtype: torch.dtype) -> int:
    act, weight = rows * n * dtype.itemsize, n * weight_dtype.itemsize
    fwd = act + weight + act  # x, w -> y
    bwd = act + act + weight + rows * 4 + act + weight  # dy, x, w, rstd -> dx, dw
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def set_count(set_bytes: int, l2_bytes: int) -> int:
    """Enough input sets that cycling through them spans four L2 caches, within a quarter of free memory."""
    free = torch.cuda.mem_get_info()[0]
    return max(1, min(math.ceil(4 * l2_bytes / set_bytes), free // 4 // max(1, set_bytes), 64))


@contextlib.contextmanager
def side_stream():
    """Everything of one measurement (forward, warm-up, capture, replays, events) on one fresh stream: graph
    capture needs a stream other than the default, and autograd runs each backward op on the stream its forward
    op ran on, so a backward captured alone is only captured if its forward ran on the capture stream too."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs were made on the default stream
    try:
        with torch.cuda.stream(stream):
            yield stream
    finally:
        torch.cuda.current_stream().wait_stream(stream)


def _median_ms(launch, per: int, reps: int) -> float:
    """Median over reps of the time `launch()` takes on the current stream, divided by `per`."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / per)
    return statistics.median(times)


def time_call(fn, sets: list, reps: int) -> float:
    """ms per call as a user makes it: Python calls in a loop, CUDA events around each sweep over the sets. The
    first sweep warms up (compilation, the kernels' tuning) untimed."""

    def sweep():
        for s in sets:
            fn(s)

    sweep()
    return _median_ms(sweep, len(sets), reps)


def time_kernel(fn, sets: list, reps: int, stream: torch.cuda.Stream) -> float:
    """ms per call, GPU work only: one CUDA graph calls fn on every set; median replay time / len(sets). Call
    after time_call (or another warm-up) on the same stream."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for s in sets:
            fn(s)
    graph.replay()
    try:
        return _median_ms(graph.replay, len(sets), reps)
    finally:
        del graph


def copy_runner(s):
    s[1].copy_(s[0])


def time_copy(total_bytes: int, l2_bytes: int, reps: int) -> float:
    """A device-to-device copy reading total_bytes / 2 and writing total_bytes / 2: the achievable ceiling."""
    half = total_bytes // 2
    count = set_count(2 * half, l2_bytes)
    pairs = [tuple(torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(2)) for _ in range(count)]
    with side_stream() as stream:
        for pair in pairs:
            copy_runner(pair)
        return time_kernel(copy_runner, pairs, reps, stream)


# ----------------------------------------------------------------------------------------------------------------
# One shape: every implementation, both timings
# ----------------------------------------------------------------------------------------------------------------


def max_abs_diff(kernels, x: torch.Tensor, w: torch.Tensor, eps: float) -> float:
    """Ours against the PyTorch reference, so a broken kernel cannot post a fast number unnoticed."""
    with torch.no_grad():
        diff = kernels.fused_rms_norm(x, w, eps).float() - kernels.rms_norm_reference(x, w, eps).float()
    return diff.abs().max().item()


def run_case(impls: dict, mode: str, rows: int, n: int, dtype, weight_dtype, args, l2_bytes: int) -> dict:
    total = bytes_moved(mode, rows, n, dtype, weight_dtype)
    set_bytes = rows * n * dtype.itemsize * (1 if mode == "fwd" else 3)  # x (and dy, y) per set
    base = make_sets(set_count(set_bytes, l2_bytes), rows, n, dtype, weight_dtype, "cuda")
    result = {"bytes": total, "kernel_ms": {COPY: time_copy(total, l2_bytes, args.reps)}, "call_ms": {}, "errors": {}}
    for name, impl in impls.items():
        try:
            with side_stream() as stream:
                sets = prepare(mode, impl, base)
                fn = runner(mode, impl)
                result["call_ms"][name] = time_call(fn, sets, args.reps)
                result["kernel_ms"][name] = time_kernel(fn, sets, args.reps, stream)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
            if name == OURS:
                raise
            # A baseline that runs out of memory or rejects the shape is reported, not fatal.
            result["errors"][name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        finally:
            sets = fn = None
            torch.cuda.empty_cache()
    return result


def gbps(case: dict, name: str, timing: str = "kernel_ms") -> float | None:
    ms = case[timing].get(name)
    return case["bytes"] / (ms * 1e-3) / 1e9 if ms else None


def print_table(title: str, cases: list[dict], peak: float) -> None:
    baselines = [name for name in cases[0]["kernel_ms"] if name not in (COPY, OURS)]
    print(f"\n{title}")
    head = (
        f"{'N':>6} {'copy GB/s':>10} {OURS + ' GB/s':>13} {'% copy':>7} {'% peak':>7} {'kernel us':>10} {'call us':>8}"
    )
    print(head + "".join(f" {name:>19}" for name in baselines))
    print(" " * len(head) + "".join(f" {'GB/s (our speedup)':>19}" for _ in baselines))
    for case in cases:
        ours, copy = gbps(case, OURS), gbps(case, COPY)
        line = f"{case['hidden']:>6} {copy:>10.0f} {ours:>13.0f} {100 * ours / copy:>6.1f}% {100 * ours / peak:>6.1f}%"
        line += f" {1e3 * case['kernel_ms'][OURS]:>10.1f} {1e3 * case['call_ms'][OURS]:>8.1f}"
        for name in baselines:
            rate = gbps(case, name)
            cell = f"{rate:.0f} ({case['kernel_ms'][name] / case['kernel_ms'][OURS]:.2f}x)" if rate else "failed"
            line += f" {cell:>19}"
        print(line)
    for case in cases:
        for name, error in case["errors"].items():
            print(f"  N={case['hidden']} {name}: {error}")


# ----------------------------------------------------------------------------------------------------------------
# The pre-norm residual step: h = x + r; y = norm(h); out = Linear(y), with h carried on as the residual stream
# ----------------------------------------------------------------------------------------------------------------


def prenorm_variants(kernels, eps: float, compile_backend: str = "inductor") -> dict[str, Any]:
    def unfused_ours(x, r, w):
        h = x + r
        return kernels.fused_rms_norm(h, w, eps), h

    def unfused_ref(x, r, w):
        h = x + r
        return kernels.rms_norm_reference(h, w, eps), h

    return {
        "fused add+norm (normgpt)": lambda x, r, w: kernels.fused_add_rms_norm(x, r, w, eps),
        "add + normgpt norm": unfused_ours,
        "add + hf_eager norm": unfused_ref,
        "add + norm, torch.compile": torch.compile(unfused_ref, dynamic=False, backend=compile_backend),
    }


def prenorm_runner(add_norm, linear, w):
    def step(s):
        x, r, dout, dh = s
        y, h = add_norm(x, r, w)
        torch.autograd.backward([linear(y), h], [dout, dh])

    return step


def time_prenorm_step(rows: int, n: int, args, kernels, l2_bytes: int) -> dict[str, float]:
    dtype = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    linear = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=dtype)
    w = torch.nn.Parameter(1 + 0.1 * torch.randn(n, device="cuda", generator=g).to(dtype))
    count = set_count(4 * rows * n * dtype.itemsize, l2_bytes)
    sets = []
    for _ in range(count):
        x, r, dout, dh = (torch.randn(rows, n, device="cuda", dtype=dtype, generator=g) for _ in range(4))
        sets.append((x.requires_grad_(), r.requires_grad_(), dout, dh))
    # Gradients accumulate into .grad across calls; the graph replays the same accumulation, so times stay fair.
    times = {}
    for name, add_norm in prenorm_variants(kernels, args.eps).items():
        with side_stream() as stream:
            step = prenorm_runner(add_norm, linear, w)
            time_call(step, sets, 1)  # warm-up: compilation, tuning, .grad allocation
            times[name] = time_kernel(step, sets, args.reps, stream)
    return times


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def environment(args) -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "sm_count": props.multi_processor_count,
        "l2_bytes": props.L2_cache_size,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "eps": args.eps,
        "weight_dtype": "fp32" if args.weight_fp32 else "input dtype",
        "bytes_convention": "fwd: x, w, y; bwd: dy, x, w, rstd, dx, dw; each counted once",
        "timings": "kernel: CUDA-graph replay over rotating input sets; call: Python calls, CUDA events",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_norm.py: needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    from model import rmsnorm_triton as kernels

    if not kernels.HAS_TRITON:
        print("bench_norm.py: needs triton (not importable)", file=sys.stderr)
        return 2
    meta = environment(args)
    l2_bytes = meta["l2_bytes"]
    print(f"{meta['device']}, {meta['sm_count']} SMs, L2 {l2_bytes >> 20} MiB")
    print(f"torch {meta['torch']}, triton {meta['triton']}; weight dtype: {meta['weight_dtype']}")
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else math.inf

    results, skipped = [], []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        weight_dtype = torch.float32 if args.weight_fp32 else dtype
        for rows in args.rows:
            by_mode = {mode: [] for mode in args.modes}
            for n in args.hidden:
                impls = build_impls(n, args.eps, kernels)  # fresh compiled functions per shape
                x, w, _ = make_sets(1, min(rows, 4096), n, dtype, weight_dtype, "cuda", seed=1)[0]
                diff = max_abs_diff(kernels, x, w, args.eps)
                for mode in args.modes:
                    case = {"dtype": dtype_name, "mode": mode, "rows": rows, "hidden": n, "max_abs_diff": diff}
                    if time.monotonic() > deadline:
                        skipped.append(case)
                        continue
                    case.update(run_case(impls, mode, rows, n, dtype, weight_dtype, args, l2_bytes))
                    by_mode[mode].append(case)
                    results.append(case)
            for mode, cases in by_mode.items():
                if cases:
                    peak = max(gbps(case, COPY) for case in results)
                    print_table(f"{dtype_name} {mode}, rows={rows}", cases, peak)

    peak = max((gbps(case, COPY) for case in results), default=None)
    for case in results:
        case["pct_copy"] = 100 * gbps(case, OURS) / gbps(case, COPY)
        case["pct_peak_copy"] = 100 * gbps(case, OURS) / peak

    step_results = []
    if args.step_hidden and time.monotonic() < deadline:
        print(f"\npre-norm residual step, bf16, hidden={args.step_hidden}: fwd+bwd of h = x + r; Linear(norm(h))")
        for rows in args.rows:
            times = time_prenorm_step(rows, args.step_hidden, args, kernels, l2_bytes)
            fused = times["fused add+norm (normgpt)"]
            for name, ms in times.items():
                print(f"  rows={rows:>6} {name:<28} {ms:8.3f} ms   fused speedup {ms / fused:.3f}x")
            step_results.append({"rows": rows, "hidden": args.step_hidden, "kernel_ms": times})

    if skipped:
        print(f"\n--max-minutes reached: {len(skipped)} measurements not started")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"meta": meta, "peak_copy_gbps": peak, "norm": results, "prenorm_step": step_results}
        record |= {"skipped": skipped, "kernel_choices": kernels.kernel_choices(timings=True)}
        args.json.write_text(json.dumps(record, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
