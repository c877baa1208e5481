"""The mean-drift observation of a study that tests finding (a): does RMSNorm's residual stream drift in mean where
LayerNorm's does not, and does that cost loss at this scale? (report.py's `mean_drift_section` writes it.)

An observation, not a finding: no verdict rule was written for it before a study ran, so the report gives numbers
and their paired intervals and decides nothing. Mean drift is train/stability.py's probe, |mean over features| / RMS
averaged over tokens (0: centred vectors, 1: constant ones), logged on probing steps for the stream after each block
(`resid_mean_drift`) and for the input of each norm of the blocks (`norm_input_mean_drift`). A run's number is the
largest value over the blocks at its last logged step (where training ended; summary.json keeps the run-wide
maximum, which any step may set); its loss is its final validation loss. The runs are finding (a)'s roles, each at
the best LR the (a) rule compares them at, paired by seed like every comparison of the report. A run that diverged
or stalled has neither number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats as dist

from train.run_directory import RunStatus
from train.sweep import findings, stats
from train.sweep.study import Study, StudyRun, VariantResult, number

KEYS = {"resid_mean_drift": "the stream after each block", "norm_input_mean_drift": "the input of each norm"}
ROLES = ("rms", "layer")  # finding (a)'s roles


def final_drift(run: StudyRun, key: str) -> list[float] | None:
    """The run's per-block drift at its last logged step; None for a run that failed or never logged it."""
    if run.status in (RunStatus.DIVERGED, RunStatus.STALLED):
        return None
    values = [number(v) for v in run.last_logged(key) or []]
    return values if values and all(v is not None for v in values) else None


@dataclass(frozen=True)
class Observation:
    lrs: dict[str, float | None]  # role -> the LR its runs ran at (None: no LR axis)
    runs: dict[str, dict[Any, StudyRun]]  # role -> seed -> finished run at that LR

    def drift(self, role: str, key: str) -> dict[Any, float | None]:
        """Seed -> the largest drift over the blocks at the last logged step."""
        return {s: max(p) if (p := final_drift(r, key)) else None for s, r in self.runs[role].items()}

    def loss(self, role: str) -> dict[Any, float | None]:
        return {s: r.val_loss if final_drift(r, "resid_mean_drift") else None for s, r in self.runs[role].items()}

    def paired_drift(self, key: str) -> stats.Paired:
        return stats.pair(self.drift("rms", key), self.drift("layer", key))

    def paired_loss(self) -> stats.Paired:
        return stats.pair(self.loss("rms"), self.loss("layer"))

    def association(self) -> tuple[float, float, int] | None:
        """Spearman's ρ over seeds between the stream-drift difference and the loss difference, its p-value and n;
        None below 3 seeds with both, or where one difference is the same in every seed."""
        drift, loss = self.paired_drift("resid_mean_drift"), self.paired_loss()
        by_seed = dict(zip(loss.seeds, loss.diffs, strict=True))
        pairs = [(d, by_seed[s]) for s, d in zip(drift.seeds, drift.diffs, strict=True) if s in by_seed]
        if len(pairs) < 3 or any(len(set(values)) < 2 for values in zip(*pairs, strict=True)):
            return None  # a rank correlation needs 3 seeds, and neither side constant
        rho, p = dist.spearmanr(*zip(*pairs, strict=True))
        return float(rho), float(p), len(pairs)

    def profile(self, role: str, key: str) -> list[float]:
        """Per block (or norm), the mean over the role's seeds of the final drift."""
        profiles = [p for r in self.runs[role].values() if (p := final_drift(r, key))]
        width = min((len(p) for p in profiles), default=0)
        return [sum(p[i] for p in profiles) / len(profiles) for i in range(width)]


def observe(
    study: Study, results: Mapping[str, VariantResult], judged: Sequence[findings.Judgement]
) -> Observation | None:
    """The observation of a study that judges finding (a) and whose runs logged mean drift; None otherwise."""
    judgement = next((j for j in judged if j.finding.key == "a"), None)
    if judgement is None or not any(r.last_logged("resid_mean_drift") for r in study.finished()):
        return None
    variants = [judgement.variants[role] for role in ROLES]
    best = findings.shared_best(*(findings.evidence(study, v, results[v]) for v in variants))
    lrs, runs = {}, {}
    for role, variant, (lr, _) in zip(ROLES, variants, best, strict=True):
        lrs[role] = lr
        runs[role] = {study.seed(r): r for r in study.finished(variant) if not study.lr_key or study.lr(r) == lr}
    return Observation(lrs, runs)
