"""Summarize an ablation sweep directory: `summary.csv`, `report.md` and figures in `figures/`.

    python scripts/report.py runs/cpu_study                  # DIR as written by scripts/ablate.py
    python scripts/report.py runs/cpu_study --tolerance 0.05 # stable-LR tolerance in nats

DIR holds `runs/<name>/` run directories (each with `metrics.jsonl`, `run_config.yaml` and, once finished,
`summary.json`) and, when made by ablate.py, `sweep.yaml` (the grid). Any subset of the grid may be present: missing,
failed, running and diverged runs are listed, and statistics use the finished runs only (completed, stalled or
diverged, as their `summary.json` says). A run directory that cannot be read (a damaged summary.json, bad lines in
metrics.jsonl, an unreadable run_config.yaml) is a one-line warning on stderr, and is listed in report.md.

Definitions (stated again in report.md; the code is train/sweep/stats.py):
  * variant: the grid fields other than learning_rate and seed (e.g. norm, norm_placement).
  * seed spread: with 3 or more seeds, mean ± sample standard deviation over seeds; with 2 seeds, mean ± half the
    min–max range; with 1 seed there is no spread and nothing is ranked.
  * two variants are ranked only if their mean ± spread intervals do not overlap; otherwise they are "not
    distinguishable at this seed count".
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
