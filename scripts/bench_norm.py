#!/usr/bin/env python
"""Benchmark normgpt's fused RMSNorm kernels against PyTorch and Liger baselines. Needs a CUDA GPU.

RMSNorm is memory-bound, so the figure of merit is effective bandwidth against a device-to-device copy of the
same number of bytes (the ceiling any kernel can reach). Bytes are counted once per tensor the operation has to
touch, the same for every implementation, so GB/s compares implementations like inverse time does:

    forward:   read x, read w, write y
    backward:  read dy, read x, read w, read rstd (float32 per row), write dx, write dw
    fwd+bwd:   the sum of both

Times are medians from triton.testing.do_bench (CUDA events, warm-up, L2 flushed before every run) while rotating
through enough input buffers that consecutive runs never touch the same memory.

    python scripts/bench_norm.py                         # rows=32768, all hidden sizes, bf16 and fp32
    python scripts/bench_norm.py --rows 4096 32768 --json bench.json
"""

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
HIDDEN_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
OURS = "normgpt"
COPY = "copy"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[32768], help="token counts (rows) to run")
    parser.add_argument("--hidden", type=int, nargs="+", default=HIDDEN_SIZES, help="hidden sizes (columns)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    parser.add_argument(
        "--weight-fp32", action="store_true", help="keep the norm weight in float32 (default: input dtype)"
    )
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, in ms")
    parser.add_argument("--rep", type=int, default=200, help="do_bench measuring time, in ms")
    parser.add_argument(
        "--step-hidden", type=int, default=4096, help="hidden size of the pre-norm residual step (0 skips it)"
    )
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Implementations under test: each maps (x, w) -> y and is differentiable for the fwd+bwd mode.
# ----------------------------------------------------------------------------------------------------------------


def build_impls(n: int, eps: float, kernels) -> dict:
    impls = {
        OURS: lambda x, w: kernels.fused_rms_norm(x, w, eps),
        "hf_eager": lambda x, w: kernels.rms_norm_reference(x, w, eps),
        "F.rms_norm": lambda x, w: F.rms_norm(x, (n,), w, eps),
        # Recompiled per shape: compile time never lands in the timed region (do_bench calls fn before timing).
        "compiled_ref": torch.compile(kernels.rms_norm_reference, dynamic=False),
        "F.layer_norm": lambda x, w: F.layer_norm(x, (n,), w, None, eps),
    }
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
    except ImportError:
        return impls
    # casting_mode="llama" gives the same numerics as ours; in_place=False because in-place would overwrite the
    # dy buffers that every implementation shares.
    liger = LigerRMSNorm(n, eps=eps, casting_mode="llama", in_place=False)

    def run_liger(x, w):
        if liger.weight is not w:  # share the benchmark's weight; re-registering it on every call costs CPU time
            liger.weight = w
        return liger(x)

    impls["liger"] = run_liger
    return impls


def bytes_moved(mode: str, rows: int, n: int, dtype: torch.dtype, weight_dtype: torch.dtype) -> int:
    act = rows * n * dtype.itemsize
    weight = n * weight_dtype.itemsize
    fwd = act + weight + act  # x, w -> y
    bwd = act + act + weight + rows * 4 + act + weight  # dy, x, w, rstd -> dx, dw
    return fwd if mode == "fwd" else fwd + bwd


def rotation_count(set_bytes: int, l2_bytes: int, free_bytes: int) -> int:
    """Enough buffer sets that cycling through them spans several L2s, within a quarter of free memory."""
    wanted = max(1, math.ceil(4 * l2_bytes / set_bytes))
    affordable = max(1, free_bytes // 4 // set_bytes)
    return min(wanted, affordable, 64)


class Rotating:
    """Hands out the next of k buffer sets on each call."""

    def __init__(self, sets):
        self.sets = sets
        self.i = 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def bench(fn, args, grad_to_none=None) -> float:
    import triton.testing

    return triton.testing.do_bench(
        fn, warmup=args.warmup, rep=args.rep, grad_to_none=grad_to_none, return_mode="median"
    )


def time_copy(total_bytes: int, args, l2_bytes: int) -> float:
    """A device-to-device copy reading total_bytes / 2 and writing total_bytes / 2: the achievable ceiling."""
    half = total_bytes // 2
    k = rotation_count(2 * half, l2_bytes, torch.cuda.mem_get_info()[0])
    pairs = Rotating([[torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(2)] for _ in range(k)])

    def copy():
        src, dst = pairs()
        dst.copy_(src)

    return bench(copy, args)


def time_impl(impl, mode, rows, n, dtype, weight_dtype, args, l2_bytes) -> float:
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.nn.Parameter(1 + 0.1 * torch.randn(n, device="cuda", generator=g).to(weight_dtype))
    set_bytes = rows * n * dtype.itemsize * (1 if mode == "fwd" else 2)
    k = rotation_count(set_bytes, l2_bytes, torch.cuda.mem_get_info()[0])
    if mode == "fwd":
        xs = Rotating([torch.randn(rows, n, device="cuda", dtype=dtype, generator=g) for _ in range(k)])
        with torch.no_grad():
            return bench(lambda: impl(xs(), w), args)
    sets = []
    for _ in range(k):
        x = torch.randn(rows, n, device="cuda", dtype=dtype, generator=g).requires_grad_()
        sets.append((x, torch.randn(rows, n, device="cuda", dtype=dtype, generator=g)))
    pairs = Rotating(sets)

    def fwd_bwd():
        x, dy = pairs()
        impl(x, w).backward(dy)

    return bench(fwd_bwd, args, grad_to_none=[w] + [x for x, _ in sets])


def check_ours(kernels, rows, n, dtype, weight_dtype, eps) -> float:
    """Max abs difference from the PyTorch reference, so a broken kernel cannot post a fast number unnoticed."""
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(min(rows, 4096), n, device="cuda", dtype=dtype, generator=g)
    w = (1 + 0.1 * torch.randn(n, device="cuda", generator=g)).to(weight_dtype)
    diff = (kernels.fused_rms_norm(x, w, eps).float() - kernels.rms_norm_reference(x, w, eps).float()).abs()
    return diff.max().item()


# ----------------------------------------------------------------------------------------------------------------
# The pre-norm residual step: h = x + r; y = norm(h); out = Linear(y), with h carried on as the residual stream.
# ----------------------------------------------------------------------------------------------------------------


def time_prenorm_step(rows: int, n: int, args, kernels, l2_bytes: int) -> dict:
    dtype, eps = torch.bfloat16, args.eps
    g = torch.Generator(device="cuda").manual_seed(0)
    linear = torch.nn.Linear(n, n, bias=False, device="cuda", dtype=dtype)
    w = torch.nn.Parameter(1 + 0.1 * torch.randn(n, device="cuda", generator=g).to(dtype))

    def unfused_ours(x, r, w):
        h = x + r
        return kernels.fused_rms_norm(h, w, eps), h

    def unfused_ref(x, r, w):
        h = x + r
        return kernels.rms_norm_reference(h, w, eps), h

    variants = {
        "fused add+norm (normgpt)": lambda x, r, w: kernels.fused_add_rms_norm(x, r, w, eps),
        "add + normgpt norm": unfused_ours,
        "add + hf_eager norm": unfused_ref,
        "add + norm, torch.compile": torch.compile(unfused_ref, dynamic=False),
    }
    set_bytes = 4 * rows * n * dtype.itemsize
    k = rotation_count(set_bytes, l2_bytes, torch.cuda.mem_get_info()[0])
    sets = []
    for _ in range(k):
        x, r, dout, dh = (torch.randn(rows, n, device="cuda", dtype=dtype, generator=g) for _ in range(4))
        sets.append((x.requires_grad_(), r.requires_grad_(), dout, dh))
    batches = Rotating(sets)
    grads = [w, linear.weight] + [t for s in sets for t in s[:2]]
    times = {}
    for name, add_norm in variants.items():

        def step(add_norm=add_norm):
            x, r, dout, dh = batches()
            y, h = add_norm(x, r, w)
            torch.autograd.backward([linear(y), h], [dout, dh])

        times[name] = bench(step, args, grad_to_none=grads)
    return times


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def run_case(impls, mode, rows, n, dtype, weight_dtype, args, l2_bytes) -> dict:
    total = bytes_moved(mode, rows, n, dtype, weight_dtype)
    ms, errors = {COPY: time_copy(total, args, l2_bytes)}, {}
    for name, impl in impls.items():
        try:
            ms[name] = time_impl(impl, mode, rows, n, dtype, weight_dtype, args, l2_bytes)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
            if name == OURS:
                raise
            # A baseline that runs out of memory or rejects the configuration is reported, not fatal.
            ms[name], errors[name] = None, f"{type(error).__name__}: {str(error).splitlines()[0]}"
        finally:
            torch.cuda.empty_cache()
    return {"bytes": total, "ms": ms, "errors": errors}


def print_table(title: str, cases: list, baselines: list) -> None:
    print(f"\n{title}")
    header = f"{'N':>6} {'copy GB/s':>10} {OURS + ' GB/s':>13} {'% copy':>7}"
    header += "".join(f" {name:>20}" for name in baselines)
    print(header)
    print(" " * 39 + "".join(f" {'GB/s (our speedup)':>20}" for _ in baselines))
    for case in cases:
        ms = case["ms"]
        gbps = {name: case["bytes"] / (t * 1e-3) / 1e9 for name, t in ms.items() if t}
        line = f"{case['hidden']:>6} {gbps[COPY]:>10.0f} {gbps[OURS]:>13.0f} {100 * gbps[OURS] / gbps[COPY]:>6.1f}%"
        for name in baselines:
            cell = f"{gbps[name]:.0f} ({ms[name] / ms[OURS]:.2f}x)" if ms.get(name) else "failed"
            line += f" {cell:>20}"
        print(line)
    for case in cases:
        for name, error in case["errors"].items():
            print(f"  N={case['hidden']} {name}: {error}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_norm.py: needs a CUDA GPU (none found)")
        return 2
    from model import rmsnorm_triton as kernels

    if not kernels.HAS_TRITON:
        print("bench_norm.py: needs triton (not importable)")
        return 2
    import triton

    props = torch.cuda.get_device_properties(0)
    l2_bytes = props.L2_cache_size
    meta = {
        "device": props.name,
        "sm_count": props.multi_processor_count,
        "l2_bytes": l2_bytes,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "eps": args.eps,
        "weight_dtype": "fp32" if args.weight_fp32 else "input dtype",
        "bytes_convention": "fwd: x, w, y; bwd: dy, x, w, rstd, dx, dw; each counted once",
    }
    print(f"{props.name}, {props.multi_processor_count} SMs, L2 {l2_bytes >> 20} MiB")
    print(f"torch {torch.__version__}, triton {triton.__version__}; weight dtype: {meta['weight_dtype']}")

    results = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        weight_dtype = torch.float32 if args.weight_fp32 else dtype
        for mode in args.modes:
            for rows in args.rows:
                cases = []
                for n in args.hidden:
                    torch._dynamo.reset()  # a fresh compile per shape, never the recompile limit's eager fallback
                    impls = build_impls(n, args.eps, kernels)
                    max_diff = check_ours(kernels, rows, n, dtype, weight_dtype, args.eps)
                    case = {"dtype": dtype_name, "mode": mode, "rows": rows, "hidden": n, "max_abs_diff": max_diff}
                    case.update(run_case(impls, mode, rows, n, dtype, weight_dtype, args, l2_bytes))
                    cases.append(case)
                baselines = [name for name in cases[0]["ms"] if name not in (COPY, OURS)]
                print_table(f"{dtype_name} {mode}, rows={rows}", cases, baselines)
                results.extend(cases)

    step_results = []
    if args.step_hidden:
        print(f"\npre-norm residual step, bf16, hidden={args.step_hidden}: fwd+bwd of h = x + r; Linear(norm(h))")
        for rows in args.rows:
            torch._dynamo.reset()
            times = time_prenorm_step(rows, args.step_hidden, args, kernels, l2_bytes)
            fused = times["fused add+norm (normgpt)"]
            for name, ms in times.items():
                print(f"  rows={rows:>6} {name:<28} {ms:8.3f} ms   fused speedup {ms / fused:.3f}x")
            step_results.append({"rows": rows, "hidden": args.step_hidden, "ms": times})

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "norm": results, "prenorm_step": step_results}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
