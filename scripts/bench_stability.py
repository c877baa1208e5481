"""What the stability probes cost: the same training run with `--stability_metrics` on and off, interleaved.

    python scripts/bench_stability.py                                  # tiny preset, CPU or whatever is there
    python scripts/bench_stability.py --repeats 3 -- --config configs/small.yaml --max_steps 200   # on a GPU

Extra trainer flags go after `--`. Each run is a fresh `train/train.py` process; the table reports the training
throughput from each run's summary.json (tokens over training wall time, evaluation and checkpointing excluded by
turning them off), the median per setting, and the overhead of the probes as a ratio measured in this same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from train.run_directory import Summary

REPO = Path(__file__).resolve().parent.parent


def run_once(extra: list[str], stability: bool, logging_steps: int, out: Path) -> float:
    cmd = [
        sys.executable,
        str(REPO / "train" / "train.py"),
        *extra,
        "--output_dir",
        str(out),
        "--logging_steps",
        str(logging_steps),
        "--stability_metrics",
        str(stability).lower(),
        "--eval_steps",
        "0",
        "--save_steps",
        "0",
        "--sample_max_new_tokens",
        "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_stability.py: a training run failed:\n{proc.stderr[-2000:]}")
    return Summary.read(out).tokens_per_sec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved on/off")
    parser.add_argument("--logging_steps", type=int, default=10, help="probes run on logging steps only")
    parser.add_argument("--max_steps", type=int, default=200)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if "--max_steps" not in extra:
        extra += ["--max_steps", str(args.max_steps)]
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for stability in (False, True):
                out = Path(tmp) / f"{'on' if stability else 'off'}-{i}"
                results[stability].append(run_once(extra, stability, args.logging_steps, out))
                print(f"run {i + 1}/{args.repeats} stability_metrics={stability}: {results[stability][-1]:,.0f} tok/s")
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"\nstability probes every {args.logging_steps} steps, {args.repeats} runs each ({' '.join(extra)})")
    print(f"{'setting':<24}{'median tok/s':>14}{'runs (tok/s)':>40}")
    for label, values in (("stability_metrics=false", results[False]), ("stability_metrics=true", results[True])):
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{label:<24}{statistics.median(values):>14,.0f}{runs:>40}")
    print(f"overhead of the probes: {100 * (off / on - 1):+.1f}% time per token (on/off throughput {on / off:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
