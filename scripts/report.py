"""Summarize an ablation sweep directory: `summary.csv`, `report.md` and figures in `figures/`.

    python scripts/report.py runs/cpu_study                  # DIR as written by scripts/ablate.py
    python scripts/report.py runs/cpu_study --tolerance 0.05 # nats: stable LR, and findings declaring none

DIR holds `runs/<name>/` run directories (each with `metrics.jsonl`, `run_config.yaml` and, once finished,
`summary.json`) and, when made by ablate.py, `sweep.yaml` (the grid). Any subset of the grid may be present: missing,
failed, running and diverged runs are listed, and statistics use the finished runs only (completed, stalled or
diverged, as their `summary.json` says). A run directory that cannot be read (a damaged summary.json, bad lines in
metrics.jsonl, an unreadable run_config.yaml) is a one-line warning on stderr, and is listed in report.md.

Definitions (stated again in report.md; the code is train/sweep/stats.py):
  * variant: the grid fields other than learning_rate and seed (e.g. norm, norm_placement).
  * seed spread (the results tables): with 3 or more seeds, mean ± sample standard deviation over seeds; with 2
    seeds, mean ± half the min–max range; with 1 seed there is no spread.
  * comparisons are paired by seed (a seed fixes a run's initial weights and batches, whatever the variant): the
    mean of the per-seed differences with its 95% t-interval over the seeds both variants have; a difference is
    resolved when the interval excludes 0, and otherwise the line gives the smallest difference it could have
    detected (80% power). Published findings a sweep declares are judged by the rules in train/sweep/findings.py.
  * LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    instabilities"): E over the LR grid of [min(final_loss(lr), loss_at_init) − min over LRs of final_loss],
    computed per seed (diverged runs count as loss_at_init), then mean ± spread over seeds.
  * largest stable LR: the largest LR whose runs did not diverge for any seed and whose mean final loss is within
    `--tolerance` nats of the best LR's.
  * a run that completed without a validation loss (`--validation_split_percentage 0`) is completed, but enters no
    validation-loss statistic.
"""

import sys

from train.commands import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
