"""What a run ran on: the CPU, the cores this process may use, the platform, Python, torch and the GPUs.

The trainer records `hardware()` in every summary.json and a sweep in its sweep.yaml; model cards and reports show
it through `describe_hardware`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU threads a training process uses, where the user (or a sweep running several runs at once) chooses them.
CPU_THREADS_ENV = "NORMGPT_CPU_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def device_name(device: Any) -> str:
    """What a run ran on, for reports: the GPU's name, or the CPU model and core count."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({available_cores()} cores)"


def hardware() -> dict[str, Any]:
    """This machine: CPU, cores, platform, Python, torch and the visible GPUs."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch, or a broken CUDA install: the rest still describes the machine
        info["gpus"] = []
    return info


def describe_hardware(info: dict[str, Any]) -> str:
    """One line from `hardware()`'s dict."""
    parts = [str(info.get("cpu") or "unknown CPU")]
    if info.get("cpu_cores"):
        parts.append(f"{info['cpu_cores']} CPU cores available")
    parts.append("GPUs: " + ", ".join(info["gpus"]) if info.get("gpus") else "no GPU")
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    return "; ".join(parts)
