"""Run an ablation sweep: a grid of training runs through the training entry point, then the report.

    python scripts/ablate.py configs/ablations/cpu_study.yaml --output_dir runs/cpu_study
    python scripts/ablate.py SWEEP.yaml --output_dir DIR --dry_run      # validate, print the budget and commands only
    python scripts/ablate.py SWEEP.yaml --output_dir DIR --seeds 0,1    # a pilot: only the runs of these seeds
    python scripts/ablate.py SWEEP.yaml --output_dir DIR --runs_per_gpu 10   # 10 runs at once on each GPU

A sweep file names a base training config, overrides applied to every run, and a grid whose cartesian product is
the set of runs (keys are the trainer's flags without `--`, exactly as on its command line, `norm` included):

    base: configs/tiny.yaml                 # any training config (default: the trainer's default preset)
    overrides: {max_steps: 300}             # every run
    grid:                                   # one run per combination
      norm: [rms, layer]
      learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]
      seed: [0, 1]
    exclude:                                # optional: drop the combinations matching any of these
      - {norm: layer, learning_rate: 1.0e-2}
    description: one paragraph for the report   # optional
    findings:                               # optional: published findings it tests, the variant in each role and
      a: {rms: {norm: rms}, layer: {norm: layer}, tolerance: 0.1}   # the tolerance in nats (train/sweep/findings.py);
                                            # the report computes each verdict from paired seeds
    budget: {seconds_per_run: 44, limit_minutes: 25}   # optional: what --dry_run adds up (train/sweep/budget.py)

Every value must be a single, finite value, and a sweep may have at most 10,000 runs (`--max_runs N` raises the cap).
Every run is `accelerate launch --num_processes 1 train/train.py --config
BASE <overrides> <grid values> --output_dir DIR/runs/<name>`, named from its grid values
(`norm=rms,learning_rate=0.003,seed=0`); mixed precision and the rest come from your accelerate config (or
`--accelerate_config FILE`). Before the first launch, the data of every distinct data config of the sweep is prepared
once, so the runs find the token cache built. With several GPUs one run goes to each GPU at a time; otherwise runs go
one after another. `--runs_per_gpu K` puts K runs at once on each GPU (each its own process), or without a GPU K runs
on the CPU, the cores split between them (NORMGPT_CPU_THREADS). All runs of the first seed come first, so an
interrupted sweep already covers the whole grid once; `--seeds 0,1` runs only those seeds of the grid (a study's pilot,
into the study's directory, whose later full run skips them as finished).

Output, in DIR: `sweep.yaml` (the resolved sweep, written first), `runs/<name>/` (the run, its stdout/stderr in
`train.log`, and `ablate_error.log` with the end of stderr if it failed), `ablate_runs.jsonl` (one row per launch),
then summary.csv, report.md and figures/ from scripts/report.py.

Running the same command again continues the sweep: finished runs (completed, diverged or stalled, as their
summary.json says) are skipped; an interrupted, failed or killed run with a checkpoint continues with
`--resume_from_checkpoint latest`; a run with neither starts over (ablate.py clears the trainer's files itself,
keeping its own logs, rather than passing --overwrite_output_dir). A finished or resumable run whose run_config.yaml
disagrees with the sweep, or a run directory holding files that are not a run, is an error, not silently reused.
The sweep holds a lock on DIR while it runs: a second sweep into it is refused. Ctrl-C or SIGTERM stops every run
(each trainer gets one SIGTERM and time to write a checkpoint; a second Ctrl-C kills at once) and exits 130.
Failed or interrupted runs are listed at the end and make the exit code 1; bad input is one line on stderr and exit
code 2. The code is the package train/sweep/.
"""

import sys

from train.commands import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
