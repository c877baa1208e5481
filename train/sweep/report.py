"""A sweep directory's report: summary.csv (one row per run), figures/ and report.md.

report.md is built by `STEPS`, one function per section, each taking the `Context` and returning its lines. A new
section is one function and one entry there. Comparisons are paired by seed (stats.py: per-seed differences, a 95%
t-interval, and the smallest difference each comparison could have detected). The findings section
(`findings_section`, after `comparisons`) has one row per published finding the sweep's `findings:` declaration
names, with the verdict train/sweep/findings.py computes and the tolerance it used.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from train.atomic_io import atomic_write
from train.cli import OneLineParser
from train.hardware import describe_hardware, hardware
from train.run_directory import RUN_METRICS, RunMetric, RunStatus
from train.sweep import figures, findings, mean_drift, stats
from train.sweep.directory import FIGURES_DIR, REPORT_MD, SUMMARY_CSV, SweepDirectoryError, fmt_value
from train.sweep.study import Study, StudyRun, VariantResult, analyse, load_study, number

DEFAULT_TOLERANCE = 0.1  # nats of final validation loss
# summary.csv after run, grid keys and variant; the column set and formatting are a compatibility promise: columns
# are only ever appended (a run-wide metric added to RUN_METRICS after these goes at the end), so a reader that takes
# columns by position keeps working and a summary.csv of an older sweep is a prefix of each row of today's.
LEGACY_COLUMNS = (
    "status",
    "steps",
    "max_steps",
    "init_val_loss",
    "final_val_loss",
    "best_val_loss",
    "final_train_loss",
    "diverged",
    "diverged_step",
    "spike_count",
    "max_grad_norm",
    "max_attn_logit",
    "tokens_per_sec",
    "wall_time",
    "num_parameters",
)
SUMMARY_COLUMNS = (*LEGACY_COLUMNS, *(m.key for m in RUN_METRICS if m.key not in LEGACY_COLUMNS))
# How each variant's norms are set up: (column, key of summary.json's `model` section and of run_config.yaml).
NORM_SETTINGS = (
    ("norm", "norm_type"),
    ("placement", "norm_placement"),
    ("eps", "norm_eps"),  # the registry's: "none" for a norm without one (norm_setting)
    ("qk_norm", "qk_norm"),
    ("z_loss", "z_loss"),
)


# ---------------------------------------------------------------------------------------------------------------------
# summary.csv


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    return fmt_value(value) if isinstance(value, bool) else str(value)


def summary_values(run: StudyRun) -> list[Any]:
    """SUMMARY_COLUMNS of one run, from its summary; a run without one shows only its progress."""
    summary = run.summary
    if summary is None:
        progress = {
            "status": run.status.value,
            "steps": run.run.last_step(),
            "max_steps": run.run.config.get("max_steps"),
        }
        return [progress.get(column) for column in SUMMARY_COLUMNS]
    values = summary.to_dict()
    values["diverged_step"] = summary.stop_step if run.diverged else None
    return [values.get(column) for column in SUMMARY_COLUMNS]


def write_summary_csv(study: Study, path: Path) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", *study.grid_keys, "variant", *SUMMARY_COLUMNS])
    for run in study.runs:
        row = [run.name, *(run.grid.get(k) for k in study.grid_keys), study.variant(run), *summary_values(run)]
        writer.writerow([csv_value(v) for v in row])
    atomic_write(path, out.getvalue())


# ---------------------------------------------------------------------------------------------------------------------
# Formatting


def f3(value: Any, digits: int = 3) -> str:
    v = number(value)
    return "–" if v is None else f"{v:.{digits}f}"


def g(value: Any) -> str:
    v = number(value)
    return "–" if v is None else f"{v:g}"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(h) for h in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]


def count(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def names(runs: Sequence[StudyRun], most: int = 10) -> str:
    return ", ".join(f"`{r.name}`" for r in runs[:most]) + (" ..." if len(runs) > most else "")


# ---------------------------------------------------------------------------------------------------------------------
# report.md, section by section


@dataclass
class Context:
    study: Study
    results: dict[str, VariantResult]
    drawn: dict[str, str | None]  # figure name -> file in figures/, None where not drawn
    tolerance: float
    judged: list[findings.Judgement] = field(default_factory=list)  # the findings sweep.yaml declares, judged

    @property
    def best_stats(self) -> dict[str, stats.Spread]:
        """Each variant's final val loss at its best LR, where it has one."""
        return {v: r.at_best for v, r in self.results.items() if r.at_best is not None}

    @property
    def sensitivity_stats(self) -> dict[str, stats.Spread]:
        return {v: r.sensitivity for v, r in self.results.items() if r.sensitivity is not None}

    @cached_property
    def seeds(self) -> dict[str, findings.Evidence]:
        """Each variant's finished runs by LR and seed: what the paired comparisons read."""
        return {v: findings.evidence(self.study, v, r) for v, r in self.results.items()}

    def best_by_seed(self) -> dict[str, dict]:
        """Variant -> seed -> final val loss at the variant's best LR (stalled runs with theirs), where it has one."""
        out = {v: e.at_best.seed_losses() for v, e in self.seeds.items() if e.at_best is not None}
        return {v: losses for v, losses in out.items() if any(stats.finite(x) for x in losses.values())}

    def sensitivity_by_seed(self) -> dict[str, dict]:
        return {v: dict(e.sensitivity) for v, e in self.seeds.items() if e.sensitivity}


def header(ctx: Context) -> list[str]:
    study = ctx.study
    counts = ", ".join(f"{n} {status}" for status, n in study.status_counts().items())
    lines = [f"# Ablation report: {study.out_dir.name}", ""]
    lines.append(
        f"Generated {datetime.now():%Y-%m-%d %H:%M} by `scripts/report.py` from `{study.out_dir}`. "
        f"{len(study.runs)} runs in the grid: {counts}. Statistics use finished runs only."
    )
    if study.record is not None and study.record.description:
        lines += ["", str(study.record.description).strip()]
    return [*lines, ""]


def variant_settings(study: Study, variant: str) -> list[str]:
    """The variant's norm setup, numerics and parameter count, as one row of the setup table."""
    runs = study.finished(variant) or [r for r in study.runs if study.variant(r) == variant]

    def joined(values: Any, missing: str) -> str:
        values = list(dict.fromkeys(v for v in values if v is not None))
        return " / ".join(values) if values else missing

    row = [variant]
    for _, key in NORM_SETTINGS:
        row.append(joined((fmt_value(v) for r in runs if (v := norm_setting(r, key)) is not None), "not recorded"))
    params = sorted({p for r in runs if r.summary is not None and (p := number(r.summary.num_parameters))})
    row.append(", ".join(f"{p / 1e6:.2f}M" for p in params) if params else "–")
    numerics = (r.summary.model.get("norm_numerics") for r in runs if r.summary is not None)
    row.append(joined(numerics, "not recorded (no summary.json with model.norm_numerics)"))
    return row


def norm_setting(run: StudyRun, key: str) -> Any:
    """A NORM_SETTINGS value of a run. The eps is the one summary.json recorded from the norm registry ("none" where
    the norm has none); a summary from before that was recorded gives `rms_norm_eps`."""
    if key != "norm_eps":
        return run.model_setting(key)
    model = run.summary.model if run.summary is not None else {}
    if "norm_eps" in model:
        return "none" if model["norm_eps"] is None else model["norm_eps"]
    return run.model_setting("rms_norm_eps")


def setup(ctx: Context) -> list[str]:
    lines = ["## Variants and their normalization setup", ""]
    lines.append(
        "A variant is one combination of the grid fields other than learning rate and seed. Norm type, placement, "
        "epsilon, QK-norm, z-loss and the numerics of the norm (where the float32 upcast happens) come from each "
        "run's `summary.json` (`model` section), else from its `run_config.yaml`."
    )
    lines.append("")
    columns = ["variant", *(label for label, _ in NORM_SETTINGS), "params", "norm numerics (float32 upcast)"]
    return [*lines, *table(columns, [variant_settings(ctx.study, v) for v in ctx.study.variants()]), ""]


def results_row(ctx: Context, variant: str) -> list[Any]:
    result, lr_axis = ctx.results[variant], bool(ctx.study.lr_key)
    s = result.at_best
    row = [variant, g(result.best_lr) if lr_axis else "–", s.text() if s else "–", s.n if s else 0]
    if lr_axis:
        sens = result.sensitivity
        in_stats = bool(ctx.study.per_lr(variant))  # "none" is a result; "–" says there was nothing to judge
        stable = g(result.stable_lr) if result.stable_lr else ("none" if in_stats else "–")
        row += [stable, sens.text() if sens else "–", len(result.sensitivity_seeds)]
    return [*row, *(metric_text(m, result.aggregates[m.key]) for m in RUN_METRICS)]


def metric_text(metric: RunMetric, value: Any) -> str:
    return g(value) if metric.digits is None else f3(value, metric.digits)


def results(ctx: Context) -> list[str]:
    lines = ["## Results", ""]
    if not ctx.study.finished():
        return [*lines, "No run has finished yet (no `summary.json`): nothing to compare.", ""]
    columns = ["variant", "best LR", "final val loss at best LR", "seeds"]
    if ctx.study.lr_key:
        columns += [f"largest stable LR (±{ctx.tolerance:g} nats)", "LR sensitivity", "seeds w/ full LR grid"]
    columns += [f"{m.label} (total)" if m.across_runs == "sum" else m.label for m in RUN_METRICS]
    lines += [*table(columns, [results_row(ctx, v) for v in ctx.study.variants()]), ""]
    if ctx.study.unigram_entropy is not None:
        lines.append(
            f"Unigram entropy of the training tokens: {ctx.study.unigram_entropy:.3f} nats, the loss of predicting "
            "each token from its frequency alone; a run whose loss sits there after warm-up is *stalled* (it learnt "
            "no context). It is the dotted line on the loss figures."
        )
    lines.append(
        f"{stats.spread_meaning(list(ctx.best_stats.values()))}. Best LR: lowest mean final validation loss among LRs "
        "where no seed diverged. Largest stable LR: the largest LR where no seed diverged and the mean final loss is "
        f"within {ctx.tolerance:g} nats of the best LR's. LR sensitivity is measured from each variant's own best "
        "loss, so a variant that trains equally badly at every LR scores low: read it next to the final loss. Spikes, "
        "max grad norm and max attention logit are over all of a variant's finished runs (every LR)."
    )
    no_val = ctx.study.without_val_loss()
    if no_val:
        lines.append(
            f"{len(no_val)} finished run(s) have no validation loss (trained with `validation_split_percentage` 0, "
            f"or summary.json has none): they are in no validation-loss statistic above: {names(no_val)}."
        )
    return [*lines, ""]


def comparison_pairs(study: Study, labels: Sequence[str]) -> list[tuple[str, str, str, str, str]]:
    """(variant a, variant b, label a, label b, context) to compare: every pair when there is one variant field,
    else the pairs that differ in exactly one field, labelled by that field and the fields held fixed."""
    keys = study.variant_keys
    out = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            va, vb = study.variant_values(a), study.variant_values(b)
            differ = [k for k in keys if va.get(k) != vb.get(k)]
            if len(keys) <= 1:
                out.append((a, b, a, b, ""))
            elif len(differ) == 1:
                k = differ[0]
                fixed = ", ".join(f"{f}={fmt_value(va.get(f))}" for f in keys if f != k)
                out.append((a, b, f"{k}={fmt_value(va[k])}", f"{k}={fmt_value(vb[k])}", fixed))
    return out


def comparisons(ctx: Context) -> list[str]:
    if not ctx.study.finished():
        return []
    lines = ["### Comparisons", ""]
    lines.append(
        "Every comparison is paired by seed: runs with the same seed start from the same weights and read the same "
        "batches, so each seed gives one difference (a − b), and the line reports the mean difference with its 95% "
        "Student-t interval over the seeds both variants have (n = the pairs; seeds only one side has are named and "
        "left out). A difference is resolved when the interval excludes 0 (a paired t-test at α = 0.05); otherwise the "
        "line says the smallest difference the comparison could have detected (80% power). Final losses are each "
        "variant's at its own best LR; with several variant fields, each line changes one field and holds the others "
        "(in brackets); the orderings below cover every pair."
    )
    lines.append("")
    quantity = "final val loss at its best LR" if ctx.study.lr_key else "final val loss"
    best, sens = ctx.best_by_seed(), ctx.sensitivity_by_seed()
    for per_seed, what in ((best, quantity), (sens, "LR sensitivity")):
        pairs = comparison_pairs(ctx.study, list(per_seed))
        if not pairs and per_seed is best:
            lines.append("Fewer than two variants have finished runs with a validation loss: nothing to compare.")
        for a, b, label_a, label_b, context in pairs:
            p = stats.pair(per_seed[a], per_seed[b])
            lines.append("- " + paired_sentence(label_a, label_b, p, what, context))
    lines.append("")
    return [*lines, *orderings(best, sens), ""]


def paired_sentence(label_a: str, label_b: str, p: stats.Paired, quantity: str, context: str = "") -> str:
    """One sentence comparing two variants on a lower-is-better quantity from their per-seed differences."""
    where = f" ({context})" if context else ""
    head = f"{label_a} vs {label_b}{where}: {quantity}, {label_a} − {label_b} = {p.text()}"
    unpaired = p.unpaired_text(label_a, label_b)
    tail = f" ({unpaired})" if unpaired else ""
    if p.n == 0:
        return f"{label_a} vs {label_b}{where}: {quantity}: no seed has a result in both, nothing to compare{tail}."
    if p.n == 1:
        return f"{head}: a single paired seed gives no interval{tail}."
    if p.identical:
        return f"{head}: equal in every paired seed{tail}."
    sign = p.sign()
    if sign == 0:
        return f"{head}: not resolved; could have detected differences ≥ {p.detectable():.3f} (80% power){tail}."
    lower = label_a if sign < 0 else label_b
    return f"{head}: {lower} is lower by {abs(p.mean):.3f} (the interval excludes 0){tail}."


def orderings(best: dict[str, dict], sens: dict[str, dict]) -> list[str]:
    lines = []
    for title, per_seed in (("final loss", best), ("LR sensitivity", sens)):
        if len(per_seed) < 2:
            continue
        pairs = stats.paired_ranking(per_seed)
        if pairs:
            text = "; ".join(f"{a} < {b}" for a, b in pairs)
            lines.append(
                f"Resolved orderings ({title}, lower is better, paired by seed): {text}. Other pairs: not ranked."
            )
        else:
            lines.append(f"Ranking by {title}: no pair of variants is resolved by the paired comparisons.")
    for a, b in stats.uniformly_worse(sens, best):
        lines.append(
            f"Caveat: {a} has the lower LR sensitivity but the higher best loss than {b} (both resolved, paired by "
            "seed): it is uniformly worse across the LR grid, not more robust to the learning rate."
        )
    return lines


def per_lr_cell(study: Study, variant: str, lr: float, spreads: list[stats.Spread]) -> str:
    values = study.per_lr(variant).get(lr)
    if not values:
        ran = any(study.lr(r) == lr for r in study.finished(variant))
        return "no val loss" if ran else "not run"
    ok = [x for x in values if x is not None]
    spread = stats.seed_spread(ok)
    cell = spread.text() if spread else ""
    if spread:
        spreads.append(spread)
    if len(ok) < len(values):
        cell = (cell + " " if cell else "") + f"(diverged {len(values) - len(ok)}/{len(values)})"
    stalled = sum(r.status is RunStatus.STALLED and study.lr(r) == lr for r in study.finished(variant))
    if stalled:
        cell += f" (stalled {stalled}/{len(values)})"
    return cell


def findings_section(ctx: Context) -> list[str]:
    if not ctx.judged:
        return []
    lines = ["### Published findings", ""]
    lines.append(
        "The sweep file declares which published findings it tests, which variant plays each role and the tolerance "
        "δ of its equivalence statements. Every verdict is computed from the runs by the rules below, never written "
        "by hand: a finding's claim is split into checks, each of which supports it, contradicts it or cannot decide; "
        "the verdict is *reproduced* when every check supports the claim, *not reproduced* when one contradicts it, "
        "and otherwise *inconclusive*. A check that cannot decide says what the study could have detected."
    )
    rows = [
        [
            f"({j.finding.key}) {j.finding.title}",
            f"{j.finding.claim} ({j.finding.citation})",
            "; ".join(f"{role}: {variant}" for role, variant in j.variants.items()),
            tolerance_text(j),
            "; ".join(f"{c.text} [{CHECK_WORDS[c.supports]}]" for c in j.checks),
            f"**{j.verdict}**",
        ]
        for j in ctx.judged
    ]
    columns = ["finding", "published claim", "roles", "tolerance δ", "this study measured", "verdict"]
    lines += ["", *table(columns, rows), ""]
    lines.append(
        "Paired by seed: each comparison is over the per-seed differences of the seeds both roles have, with a 95% "
        "Student-t interval (± is its half-width); *lower* means the interval lies below 0 (a paired t-test at "
        "α = 0.05); *equivalent within ±δ* is a TOST at α = 0.05 (the 90% interval strictly inside ±δ); a sign test "
        "is exact and one-sided at α = 0.05, ties left out. The power line is the smallest true difference a paired "
        "t-test with this n and the measured paired SD detects with 80% power. A run that diverged or stalled "
        "failed at its learning rate."
    )
    lines += ["", "How each verdict is computed:", ""]
    for j in ctx.judged:
        rule = j.finding.rule.format(margin=j.tolerance, threshold=findings.LOGIT_THRESHOLD)
        lines.append(f"- ({j.finding.key}) {rule}")
    lines.append(
        "- A verdict is about this small-scale proxy (the scale in *What this does and does not show* below). Each "
        "test is at α = 0.05 with no correction for the several checks and findings of one report."
    )
    return [*lines, ""]


def mean_drift_section(ctx: Context) -> list[str]:
    """The mean-drift observation (train/sweep/mean_drift.py) of a study that judges finding (a)."""
    obs = mean_drift.observe(ctx.study, ctx.results, ctx.judged)
    if obs is None:
        return []
    if all(lr is None for lr in obs.lrs.values()):  # a grid without a learning-rate axis: one LR for all
        where = " and ".join(obs.lrs) + " at the study's one learning rate"
    else:
        where = ", ".join(f"{role} at lr {findings.lr_text(lr)}" for role, lr in obs.lrs.items())
    lines = ["### Mean drift: RMSNorm vs LayerNorm (observation)", ""]
    lines.append(
        "Does RMSNorm's residual stream drift in mean where LayerNorm's does not, and does that cost loss at this "
        "scale? Mean drift is |mean over features| / RMS, averaged over tokens (0: centred vectors, 1: constant "
        f"ones); a run's number is its largest over the blocks at its last logged step ({where}: the runs finding "
        "(a) compares; runs that diverged or stalled left out). No verdict rule was written for this before the "
        "study: these are observations with paired 95% t-intervals, not a reproduced or refuted claim."
    )
    lines.append("")
    for key, what in mean_drift.KEYS.items():
        p = obs.paired_drift(key)
        found = {1: "RMSNorm's drifts more (the interval lies above 0)", -1: "RMSNorm's drifts less (below 0)"}
        said = found.get(p.sign(), f"not resolved; {p.power_line()}")
        lines.append(f"- Mean drift of {what}, rms − layer: {p.text()}: {said}.")
    lines.append(f"- Final validation loss, rms − layer: {obs.paired_loss().text()} (the numbers finding (a) judges).")
    if (association := obs.association()) is not None:
        rho, p_value, n = association
        lines.append(
            f"- Over seeds, the stream-drift difference and the loss difference have Spearman ρ = {rho:+.2f} "
            f"(p = {p_value:.2g}, {n} seeds): {'an' if p_value <= stats.ALPHA else 'no'} association at α = 0.05."
        )
    per_seed = {role: (obs.drift(role, "resid_mean_drift"), obs.loss(role)) for role in mean_drift.ROLES}
    seeds = sorted({s for drift, loss in per_seed.values() for s in (*drift, *loss)}, key=str)
    rows = [
        [
            s,
            *(f3(per_seed[r][0].get(s)) for r in mean_drift.ROLES),
            *(f3(per_seed[r][1].get(s)) for r in mean_drift.ROLES),
        ]
        for s in seeds
    ]
    lines += ["", *table(["seed", "rms stream drift", "layer stream drift", "rms loss", "layer loss"], rows), ""]
    for key, what in mean_drift.KEYS.items():
        profiles = [obs.profile(role, key) for role in mean_drift.ROLES]
        rows = [[i + 1, *(f3(p[i]) for p in profiles)] for i in range(min(map(len, profiles)))]
        lines += [f"Final mean drift of {what}, mean over seeds (figure *mean_drift_depth*):", ""]
        lines += [*table(["block" if key == "resid_mean_drift" else "norm", *mean_drift.ROLES], rows), ""]
    return lines


def tolerance_text(j: findings.Judgement) -> str:
    if j.declared_tolerance:
        return f"{j.tolerance:g} nats (declared in the sweep file)"
    return f"{j.tolerance:g} nats (the report's --tolerance: not declared before the study)"


CHECK_WORDS = {True: "supports", False: "contradicts", None: "cannot decide"}


def per_lr_table(ctx: Context) -> list[str]:
    study = ctx.study
    if not study.finished() or not study.lr_key:
        return []
    spreads: list[stats.Spread] = []
    variants = study.variants()
    rows = [[g(lr), *(per_lr_cell(study, v, lr, spreads) for v in variants)] for lr in study.lrs]
    lines = ["### Final validation loss per learning rate", "", *table(["LR", *variants], rows), ""]
    return [*lines, f"{stats.spread_meaning(spreads)} (diverged runs excluded from the mean).", ""]


def figure_section(ctx: Context) -> list[str]:
    lines = ["## Figures", ""]
    if not ctx.study.lr_key:
        lines += ["The grid has no learning_rate axis: the per-LR figures and LR sensitivity do not apply.", ""]
    for figure in figures.FIGURES:
        drawn = ctx.drawn.get(figure.name)
        if drawn:
            lines += [f"![{figure.name}]({FIGURES_DIR}/{drawn})", "", f"*{figure.caption}*", ""]
        elif ctx.study.lr_key or not figure.needs_lr_axis:
            lines += [f"- *{figure.name}*: not drawn (no data for it in the finished runs).", ""]
    return lines


def run_row(run: StudyRun) -> list[str]:
    s = run.summary
    if s is None:  # only its progress
        return [run.name, run.status.value, g(run.run.last_step()), *["–"] * (5 + len(RUN_METRICS))]
    tokens_per_sec = number(s.tokens_per_sec)
    return [
        run.name,
        run.status.value,
        g(s.steps),
        f3(s.init_val_loss),
        f3(s.final_val_loss),
        f3(s.best_val_loss),
        *(metric_text(m, getattr(s, m.key)) for m in RUN_METRICS),
        g(round(tokens_per_sec)) if tokens_per_sec else "–",
        duration(number(s.wall_time)),
    ]


def runs(ctx: Context) -> list[str]:
    study = ctx.study
    columns = ["run", "status", "steps", "init val", "final val", "best val", *(m.label for m in RUN_METRICS)]
    lines = ["## Runs", "", *table([*columns, "tok/s", "wall"], [run_row(r) for r in study.runs]), ""]
    failed = [r for r in study.runs if r.launch_failed]
    if failed:
        lines += [f"Runs whose last launch failed (see `ablate_error.log` in each): {names(failed, len(failed))}.", ""]
    if study.ignored:
        ignored = ", ".join(f"`{n}`" for n in study.ignored[:10]) + (" ..." if len(study.ignored) > 10 else "")
        lines += [f"Ignored {len(study.ignored)} run directories that are not in sweep.yaml: {ignored}", ""]
    if study.problems:
        lines += ["Could not be read (each also printed as a warning):", ""]
        lines += [f"- {problem}" for problem in study.problems] + [""]
    return lines


def sweep_definition(ctx: Context) -> list[str]:
    lines = ["## Sweep definition", ""]
    record = ctx.study.record
    if record is None:
        inferred = ", ".join(ctx.study.grid_keys) or "none"
        what = "No sweep.yaml: the grid was inferred from the fields that differ between the runs' run_config.yaml"
        return [*lines, f"{what}: {inferred}.", ""]
    shown = {k: getattr(record, k) for k in ("base", "overrides", "grid", "exclude") if getattr(record, k)}
    if record.extra.get("findings"):
        shown["findings"] = record.extra["findings"]
    lines += ["```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", ""]
    if record.sweep_file:
        lines += [f"From `{record.sweep_file}`, resolved into `sweep.yaml`.", ""]
    return lines


def hardware_text(study: Study) -> str:
    for run in study.finished():
        described = describe_hardware(run.summary.hardware) if run.summary.hardware else run.summary.device
        if described:
            return f"{described} (from the runs' summary.json)"
    if study.record is not None and study.record.hardware:
        return describe_hardware(study.record.hardware) + " (recorded by ablate.py on the machine that ran the sweep)"
    local = describe_hardware(hardware())
    return local + " (read now, on the machine writing this report: the runs may have used another)"


def hardware_and_time(ctx: Context) -> list[str]:
    walls = [w for r in ctx.study.finished() if (w := number(r.summary.wall_time)) is not None]
    per_run = f" (per run {duration(min(walls))} to {duration(max(walls))})." if walls else "."
    lines = ["## Hardware and time", "", f"- Hardware: {hardware_text(ctx.study)}."]
    lines.append(
        f"- Total wall time of the finished runs (sum of summary.json `wall_time`): {duration(sum(walls))} over "
        f"{len(walls)} runs{per_run}"
    )
    launches = ctx.study.launches
    if launches:
        total = sum(number(x.get("seconds")) or 0 for x in launches)
        lines.append(
            f"- Launch-to-exit time of the {len(launches)} launches ablate.py made (process start, data loading, "
            f"evaluation and saving included): {duration(total)}."
        )
    return [*lines, ""]


def scale_line(study: Study) -> str:
    finished = study.finished()
    params = sorted({int(p) for r in finished if (p := number(r.summary.num_parameters))})
    steps = sorted({r.summary.max_steps or r.summary.steps for r in finished})
    tokens = [r.summary.tokens or 0 for r in finished if not r.diverged]
    seeds = len(study.grid_values(study.seed_key)) if study.seed_key else 1
    size = ", ".join(dict.fromkeys(count(p) for p in params)) or "unknown-size"  # 1.38M once, not per variant
    scale = f"{size}-parameter models trained for {', '.join(map(str, steps)) or '?'} steps"
    if any(tokens):
        scale += f" (about {count(max(tokens))} training tokens per run)"
    lrs = study.lrs
    lr_text = f", {len(lrs)} learning rates from {min(lrs):g} to {max(lrs):g}." if lrs else "."
    return f"- Scale: {scale}, {seeds} seed(s) per setting{lr_text}"


def what_it_shows(ctx: Context) -> list[str]:
    study = ctx.study
    steps = [r.summary.max_steps for r in study.finished()]
    lines = ["## What this does and does not show", "", scale_line(study)]
    short = " After this few steps the final losses mostly reflect early-training speed, not what each variant would "
    lines.append(
        "- These are small-scale proxies in the sense of Wortsman et al. (2023): they show which variants train "
        "stably over which learning-rate range at this size and how sensitive the final loss is to the learning "
        "rate. They are not measurements of large models or of long training."
        + (short + "converge to." if steps and max(steps) < 2000 else "")
    )
    lines.append(seed_count_caveat(sorted({s.n for s in ctx.best_stats.values()})))
    if study.lr_key:
        lines.append(
            "- The best LR is chosen on the same runs its loss is reported for, which slightly favours variants "
            "with noisier results; the LR grid is coarse, so a variant's true optimum may lie between grid points."
        )
    return [*lines, *coverage_caveats(study), ""]


def seed_count_caveat(ns: list[int]) -> str:
    if ns == [1] or not ns:
        return (
            "- With a single seed per setting there is no estimate of seed-to-seed variation, so no variant is "
            "ranked above another."
        )
    return (
        f"- With {'/'.join(map(str, ns))} seeds the paired intervals are wide (a t-interval over n seeds has n − 1 "
        "degrees of freedom): a difference not resolved is not shown absent, and each comparison's power line says "
        "how large a difference it could have detected."
    )


def coverage_caveats(study: Study) -> list[str]:
    finished, lines = study.finished(), []
    diverged = [r for r in finished if r.diverged]
    if diverged:
        lines.append(
            f"- {len(diverged)} of {len(finished)} finished runs diverged; they enter LR sensitivity at the loss at "
            "initialization and are excluded from the loss means."
        )
    stalled = [r for r in finished if r.status is RunStatus.STALLED]
    if stalled:
        lines.append(
            f"- {len(stalled)} of {len(finished)} finished runs stalled: their loss sat on the unigram-entropy plateau "
            "after warm-up (they learnt token frequencies, not context). They enter the statistics with their final "
            "loss, as trained-but-bad runs, not as divergences."
        )
    no_val = study.without_val_loss()
    if no_val:
        lines.append(
            f"- {len(no_val)} of {len(finished)} finished runs have no validation loss, so they cannot enter any "
            "validation-loss statistic (final loss, best and largest stable LR, LR sensitivity)."
        )
    missing = [r for r in study.runs if not r.finished]
    if missing:
        lines.append(
            f"- {len(missing)} of {len(study.runs)} runs of the grid have no result yet (missing, running, "
            "interrupted or failed): the statistics above cover only the finished ones, and LR sensitivity only "
            "seeds with the whole LR grid."
        )
    lines.append(
        "- Wall-clock and tokens/s are specific to the hardware above (and to whatever else ran on it); on CPU they "
        "say nothing about GPU kernels such as the fused Triton RMSNorm."
    )
    return lines


# The sections of report.md, in order.
STEPS: tuple[Callable[[Context], list[str]], ...] = (
    header,
    setup,
    results,
    comparisons,
    findings_section,
    mean_drift_section,
    per_lr_table,
    figure_section,
    runs,
    sweep_definition,
    hardware_and_time,
    what_it_shows,
)


def build_report(ctx: Context) -> str:
    return "\n".join(line for step in STEPS for line in step(ctx))


def write_report(out_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> Study:
    """summary.csv, figures/ and report.md of the sweep directory `out_dir`; returns the study they describe."""
    study = load_study(Path(out_dir))
    results_by_variant = analyse(study, tolerance)
    judged = findings.judge(study, results_by_variant, tolerance)  # a bad declaration stops here, before any file
    write_summary_csv(study, study.out_dir / SUMMARY_CSV)
    drawn = figures.draw_figures(study, results_by_variant, study.out_dir / FIGURES_DIR)
    context = Context(study, results_by_variant, drawn, tolerance, judged)
    atomic_write(study.out_dir / REPORT_MD, build_report(context))
    return study


def main(argv: Sequence[str] | None = None) -> int:
    """`normgpt report DIR [--tolerance NATS]` (also `scripts/report.py`); exit 2 with one line for an unusable
    directory."""
    parser = OneLineParser(
        name="report.py",
        prog="normgpt report",
        description="Write summary.csv, report.md and figures/ for a sweep directory.",
    )
    parser.add_argument("dir", help="sweep output directory (holds runs/<name>/ and sweep.yaml)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"nats: largest stable LR (mean final loss within it of the best LR's), and the equivalence margin of "
        f"findings that declare no tolerance (default {DEFAULT_TOLERANCE})",
    )
    args = parser.parse_args(argv)
    try:
        if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
            raise SweepDirectoryError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
        study = write_report(Path(args.dir), args.tolerance)
    except SweepDirectoryError as err:
        print(f"report.py: error: {err}", file=sys.stderr)
        return 2
    for problem in study.problems:
        print(f"report.py: warning: {problem}", file=sys.stderr)
    done = len(study.finished())
    print(f"report: {done}/{len(study.runs)} runs finished; wrote {study.out_dir / REPORT_MD}, {SUMMARY_CSV}, figures/")
    return 0
