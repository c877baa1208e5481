"""Ablation sweeps: a grid of training runs, launched, resumed and summarized.

    spec.py       a sweep file -> a validated `Sweep` of runs, resolved through the trainer's own parser
    plan.py       what each run directory needs (skip, resume, start fresh) and the token caches built up front
    scheduler.py  `accelerate launch` per run over device slots, with the outcome of each launch
    directory.py  the sweep directory's files: sweep.yaml, the launch log, the names of everything else
    stats.py      paired comparisons (t-interval, TOST, power, sign test), seed spread, LR sensitivity, stable LR
    findings.py   the published findings a sweep file may declare it tests, and the rule that computes each verdict
    study.py      a sweep directory read back: runs grouped into variants, and each variant's results
    figures.py    the one list of the report's figures
    report.py     summary.csv and report.md
    ablate.py     `normgpt sweep` (scripts/ablate.py); report.py's `main` is `normgpt report` (scripts/report.py)

Only spec.py, plan.py and ablate.py import the trainer's config (and with it torch and transformers); the report's
modules stay light (the run directory's format, and the light train/arguments.py for the fields' roles) so that
`normgpt report` starts fast: tests/test_cli.py checks that it imports no torch.
"""
