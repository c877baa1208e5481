"""Compile every launch configuration of the fused RMSNorm kernels for sm_90, offline, and read back registers and
spills. No GPU needed: Triton ships ptxas and cuobjdump.

    python scripts/check_kernel_registers.py           # every width in WIDTHS, both dtypes, with and without residual
    python scripts/check_kernel_registers.py --widths 768 4096 --jobs 4 --json registers.json
    python scripts/check_kernel_registers.py --quick   # two widths, bfloat16: a smoke test

Every configuration the tuner's space offers (model/rmsnorm_tuning.py, for 32768 rows, the largest spaces) is
compiled as a launch would compile it: 16-byte aligned pointers, and the row stride and width specialized as
multiples of 16 where they are. A configuration that spills (a STACK or LOCAL frame in cuobjdump's resource report)
makes the exit status 1: the space's rules are then wrong and must exclude it. The report also gives, per
configuration, how many of its programs fit on one SM (warps, registers, shared memory), next to the programs
per SM the backward's configuration asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from train.cli import OneLineParser

WIDTHS = [64, 128, 768, 1000, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
DTYPES = {"bf16": ("bf16", 2), "fp32": ("fp32", 4)}  # fp16 compiles to the same code shape as bf16
ROWS = 32768
# Hopper, per SM: what bounds how many programs are resident at once.
MAX_WARPS, REGISTERS, SHARED = 64, 65536, 228 * 1024


def parse_args(argv: list[str] | None):
    parser = OneLineParser(
        description=__doc__, name="check_kernel_registers", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--widths", type=int, nargs="+", default=WIDTHS, help="row widths N to check")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=sorted(DTYPES))
    parser.add_argument("--jobs", type=int, default=1, help="compiler processes (default 1)")
    parser.add_argument("--quick", action="store_true", help="N = 768 and 4096 in bfloat16 only")
    parser.add_argument("--json", type=Path, help="write every configuration's numbers to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.dtypes = [768, 4096], ["bf16"]
    if any(n < 1 for n in args.widths) or args.jobs < 1:
        parser.error("--widths and --jobs take positive integers")
    return args


def jobs_for(widths: list[int], dtypes: list[str]) -> list[dict]:
    """One compile job per distinct compiled kernel (programs_per_sm changes the grid, not the code)."""
    from model import rmsnorm_triton as rt
    from model import rmsnorm_tuning as tuning

    jobs = {}
    for name in dtypes:
        tl_dtype, itemsize = DTYPES[name]
        for n in widths:
            aligned = n % 16 == 0
            for residual in (False, True):
                for config in tuning.forward_space(n, ROWS, itemsize):
                    job = dict(kernel="fwd", dtype=tl_dtype, n=n, aligned=aligned, residual=residual)
                    jobs.setdefault(_job_key(job, config), {**job, "config": config.as_dict(), "per_sm": set()})
                for config in tuning.backward_space(n, ROWS, itemsize, has_dres=residual):
                    job = dict(kernel="bwd", dtype=tl_dtype, n=n, aligned=aligned, residual=residual)
                    entry = jobs.setdefault(_job_key(job, config), {**job, "config": config.as_dict(), "per_sm": set()})
                    entry["per_sm"].add(config.programs_per_sm)
            block_p, block_c = rt._column_sum_blocks(n) if rt.HAS_TRITON else (0, 0)
            job = dict(kernel="dw_sum", dtype=tl_dtype, n=n, aligned=aligned, residual=False)
            config = tuning.KernelConfig(block_c, block_p, 4)
            jobs.setdefault(_job_key(job, config), {**job, "config": config.as_dict(), "per_sm": set()})
    return [{**job, "per_sm": sorted(job["per_sm"])} for job in jobs.values()]


def _job_key(job: dict, config) -> tuple:
    return (*job.values(), config.block_n, config.rows, config.num_warps, config.num_stages)


def _signature(job: dict) -> tuple:
    """(kernel, signature, constexprs, attrs) as a launch with 16-byte aligned tensors would specialize them."""
    from model import rmsnorm_kernels as kernels

    c, dtype = job["config"], job["dtype"]
    if job["kernel"] == "fwd":
        fn = kernels.rms_norm_fwd_kernel
        pointers = {"X": dtype, "R": dtype, "W": dtype, "Y": dtype, "H": dtype, "RSTD": "fp32"}
        ints, aligned_ints = ["stride_x", "stride_r", "n_rows", "n_cols"], ["stride_x", "stride_r", "n_cols"]
        constexprs = {"HAS_RESIDUAL": job["residual"], "BLOCK_N": c["block_n"], "ROWS": c["rows"]}
        constexprs |= {"SINGLE_PASS": c["block_n"] >= job["n"], "NUM_STAGES": c["num_stages"]}
        scalars = {"eps": "fp32"}
    elif job["kernel"] == "bwd":
        fn = kernels.rms_norm_bwd_kernel
        pointers = {"DY": dtype, "X": dtype, "W": dtype, "RSTD": "fp32", "DRES": dtype, "DX": dtype}
        pointers["DW_PARTIAL"] = "fp32"
        ints = ["stride_dy", "stride_x", "stride_dres", "n_rows", "n_cols"]
        aligned_ints = ["stride_dy", "stride_x", "stride_dres", "n_cols"]
        constexprs = {"HAS_DRES": job["residual"], "BLOCK_N": c["block_n"], "ROWS": c["rows"]}
        constexprs |= {"SINGLE_PASS": c["block_n"] >= job["n"], "NUM_STAGES": c["num_stages"]}
        scalars = {}
    else:
        fn = kernels.dw_column_sum_kernel
        pointers, ints, aligned_ints = {"DW_PARTIAL": "fp32", "DW": dtype}, ["n_partials", "n_cols"], ["n_cols"]
        constexprs, scalars = {"BLOCK_P": c["rows"], "BLOCK_C": c["block_n"]}, {}
    signature = {name: f"*{t}" for name, t in pointers.items()}
    signature |= {name: "i32" for name in ints} | scalars | {name: "constexpr" for name in constexprs}
    signature = {name: signature[name] for name in fn.arg_names}  # the kernel's parameter order
    divisible = set(pointers) | (set(aligned_ints) if job["aligned"] else set())
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    return fn, signature, constexprs, attrs


def compile_one(job: dict) -> dict:
    """Compile for sm_90 and read REG / STACK / LOCAL / SHARED from cuobjdump's resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, signature, constexprs, attrs = _signature(job)
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs, attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": job["config"]["num_warps"]},
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        report = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
    usage = {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", report.stdout)}
    shared = compiled.metadata.shared  # Triton's shared memory is dynamic: cuobjdump's SHARED omits it
    warps = job["config"]["num_warps"]
    fits = min(MAX_WARPS // warps, REGISTERS // (usage["REG"] * 32 * warps), SHARED // max(1, shared))
    spills = usage["STACK"] > 0 or usage["LOCAL"] > 0
    return {**job, "regs": usage["REG"], "stack": usage["STACK"], "local": usage["LOCAL"], "shared": shared} | {
        "fits_per_sm": fits,
        "spills": spills,
    }


def summarize(results: list[dict]) -> list[str]:
    """One markdown row per kernel, dtype and width: configurations, register range, spills, occupancy."""
    lines = [
        "| kernel | dtype | N | configs | registers (min-max) | spills | shared KiB (max) | programs/SM asked > fit |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["kernel"], r["dtype"], r["n"]), []).append(r)
    for (kernel, dtype, n), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        regs = [r["regs"] for r in rows]
        crowded = sum(1 for r in rows for p in r["per_sm"] if p > r["fits_per_sm"])
        lines.append(
            f"| {kernel} | {dtype} | {n} | {len(rows)} | {min(regs)}-{max(regs)} | "
            f"{sum(r['spills'] for r in rows)} | {max(r['shared'] for r in rows) / 1024:.0f} | {crowded} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
        print("check_kernel_registers: run it in a process without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not interpreted ones (read when triton loads)
    from model import rmsnorm_triton as rt

    if not rt.HAS_TRITON:
        print("check_kernel_registers: needs triton (not importable)", file=sys.stderr)
        return 2
    jobs = jobs_for(args.widths, args.dtypes)
    print(f"compiling {len(jobs)} kernels for sm_90 with triton {rt.triton.__version__} ({args.jobs} processes)")
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(compile_one, jobs))
    print("\n".join(summarize(results)))
    spilling = [r for r in results if r["spills"]]
    for r in spilling:
        print(f"SPILLS: {r['kernel']} {r['dtype']} N={r['n']} residual={r['residual']} {r['config']}: {r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"triton": rt.triton.__version__, "results": results}, indent=1))
        print(f"wrote {args.json}")
    return 1 if spilling else 0


if __name__ == "__main__":
    sys.exit(main())
