"""What the training loop's safety costs: this checkout against an earlier revision, same command, interleaved.

    python scripts/bench_loop.py                                     # vs a551a15 (before skip-steps and signals)
    python scripts/bench_loop.py --baseline REV --repeats 5 -- --config configs/small.yaml --max_steps 200

The baseline is checked out into a temporary git worktree (removed afterwards) and run with this environment; both
get the same trainer flags (after `--`) and save a checkpoint every `--save_steps` steps, so the comparison covers
the per-step non-finite check and stop flags, the manifests written with each checkpoint, and everything else that
changed between the two. The table reports each run's training throughput from its summary.json (tokens over
training wall time) and the ratio of the medians, measured in this same run.
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


def run_once(tree: Path, extra: list[str], out: Path, save_steps: int) -> float:
    cmd = [sys.executable, str(tree / "train" / "train.py"), *extra, "--output_dir", str(out)]
    cmd += ["--eval_steps", "0", "--save_steps", str(save_steps), "--sample_max_new_tokens", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_loop.py: a training run in {tree} failed:\n{proc.stderr[-2000:]}")
    return Summary.read(out).tokens_per_sec


def worktree(rev: str, where: Path) -> Path:
    path = where / f"baseline-{rev}"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True, capture_output=True
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="a551a15", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tree, interleaved")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--save_steps", type=int, default=50, help="checkpoint interval in both trees")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if "--max_steps" not in extra:
        extra += ["--max_steps", str(args.max_steps)]
    results: dict[str, list[float]] = {"baseline": [], "this checkout": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": worktree(args.baseline, Path(tmp)), "this checkout": REPO}
        try:
            for i in range(args.repeats):
                for label, tree in trees.items():
                    out = Path(tmp) / f"{label.replace(' ', '_')}-{i}"
                    results[label].append(run_once(tree, extra, out, args.save_steps))
                    print(f"run {i + 1}/{args.repeats} {label}: {results[label][-1]:,.0f} tok/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees["baseline"])])
    base, ours = statistics.median(results["baseline"]), statistics.median(results["this checkout"])
    print(f"\n{args.repeats} runs each, checkpoint every {args.save_steps} steps ({' '.join(extra)})")
    print(f"{'tree':<28}{'median tok/s':>14}{'runs (tok/s)':>40}")
    for label, values in results.items():
        name = f"{label} ({args.baseline})" if label == "baseline" else label
        print(f"{name:<28}{statistics.median(values):>14,.0f}{', '.join(f'{v:,.0f}' for v in values):>40}")
    print(f"this checkout / baseline throughput: {ours / base:.3f} ({100 * (base / ours - 1):+.1f}% time per token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
