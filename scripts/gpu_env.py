"""The machine a GPU check runs on: versions, what is importable, and the measured ceilings every figure is read
against: a device-to-device copy (TB/s, bytes read + written) and a bf16 matmul (TFLOP/s). scripts/gpu_checks.sh's
first step.

    python scripts/gpu_env.py --json env.json
    python scripts/gpu_env.py --no-ceilings          # versions and imports only (no GPU needed)

Exit status 0, or 1 when a dependency does not import (the JSON and the last line name it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# What normgpt imports (module: distribution), the tests included; gpu_wheels.sh carries what the image lacks.
DEPENDENCIES = {
    "torch": "torch",
    "triton": "triton",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface_hub",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "datasets": "datasets",
    "pyarrow": "pyarrow",
    "numpy": "numpy",
    "pandas": "pandas",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "xxhash": "xxhash",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "filelock": "filelock",
    "gguf": "gguf",
    "pytest": "pytest",
    "xdist": "pytest-xdist",
    "pytest_timeout": "pytest-timeout",
    "liger_kernel": "liger-kernel",
    "train": "normgpt",
}
OPTIONAL = {"liger_kernel", "pytest_timeout"}  # a baseline of bench_norm.py; a test timeout: nothing fails without


def versions() -> tuple[dict[str, str | None], list[str]]:
    """Each dependency's version (None: not importable) and the required ones that do not import."""
    found, missing = {}, []
    for module, dist in DEPENDENCIES.items():
        try:
            importlib.import_module(module)
            found[dist] = importlib.metadata.version(dist)
        except Exception as error:  # noqa: BLE001 - an import can fail in any way; the line says how
            found[dist] = None
            if module not in OPTIONAL:
                missing.append(
                    f"{dist} ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''})"
                )
    return found, missing


def gpu_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False}
    props = torch.cuda.get_device_properties(0)
    facts = {"cuda": True, "device": props.name, "sm_count": props.multi_processor_count}
    facts |= {"memory_GiB": props.total_memory / 2**30, "cuda_version": torch.version.cuda}
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version,power.limit", "--format=csv,noheader"]
        facts["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["driver"] = None
    return facts


def median_ms(fn, reps: int) -> float:
    import torch

    fn()  # warm-up (cuBLAS heuristics, allocations)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def ceilings(copy_gib: float = 2.0, matmul_n: int = 8192, reps: int = 20) -> dict:
    """A copy of `copy_gib` GiB (bytes read + written per second) and an n^3 bf16 matmul (2 n^3 FLOP), medians."""
    import torch

    tensors = [torch.empty(int(copy_gib * 2**30) // 2, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    copy_ms = median_ms(lambda: tensors[1].copy_(tensors[0]), reps)
    tensors = [torch.randn(matmul_n, matmul_n, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    matmul_ms = median_ms(lambda: tensors[0] @ tensors[1], reps)
    return {
        "copy_TBps": 2 * copy_gib * 2**30 / (copy_ms * 1e-3) / 1e12,
        "bf16_matmul_TFLOPs": 2 * matmul_n**3 / (matmul_ms * 1e-3) / 1e12,
        "copy_GiB": copy_gib,
        "matmul_n": matmul_n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write everything to this file")
    parser.add_argument("--no-ceilings", action="store_true", help="versions and imports only")
    args = parser.parse_args(argv)
    found, missing = versions()
    record = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    record |= {"versions": found, "missing": missing}
    if found.get("torch"):
        record |= gpu_facts()
        if record.get("cuda") and not args.no_ceilings:
            record["ceilings"] = ceilings()
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    if missing:
        print(f"gpu_env.py: not importable: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
