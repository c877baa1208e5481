"""The report's figures: ONE list (`FIGURES`), each entry giving its drawing function, its caption and what it needs.

A new figure is a function `draw(study, results, path) -> bool` (False: nothing to draw) and one entry in
`FIGURES`; report.md links and captions it, or says why it was not drawn, from that entry alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from train.atomic_io import atomic_path
from train.sweep.stats import band, seed_spread
from train.sweep.study import Study, StudyRun, VariantResult, number

Results = dict[str, VariantResult]


@dataclass(frozen=True)
class Figure:
    name: str  # figures/<name>.png, and its label in report.md
    draw: Callable[[Study, Results, Path], bool]
    caption: str
    needs_lr_axis: bool = False  # drawn only when the grid has a learning_rate axis
    needs_metrics: tuple[str, ...] = ()  # metrics.jsonl keys at least one finished run must have logged

    def can_draw(self, study: Study) -> bool:
        if self.needs_lr_axis and not study.lr_key:
            return False
        return all(any(logged(r, key) for r in study.finished()) for key in self.needs_metrics)


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save(fig: Any, path: Path, tight: bool = True) -> None:
    if tight:  # off where the caller has laid the figure out itself (room for a legend below the panels)
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt().close(fig)


def label_axes(ax: Any, xlabel: str, ylabel: str, title: str, title_size: int = 10) -> None:
    """Labels, a grid on every (log) tick, the legend and the title of a one-panel figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=title_size)


def colors(study: Study) -> dict[str, Any]:
    cmap = plt().get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(study.variants())}


def rows_of(run: StudyRun, key: str) -> list[dict[str, Any]]:
    """The metrics rows that carry `key`: evaluation rows for val_loss, training rows for everything else."""
    return run.run.eval_rows() if key == "val_loss" else run.run.train_rows()


def logged(run: StudyRun, key: str) -> bool:
    return any(row.get(key) is not None for row in rows_of(run, key))


def curve(run: StudyRun, key: str, x: str = "step", reduce: Callable | None = None) -> list[tuple[float, float]]:
    """(x, value) of `key` over the run's training rows (evaluation rows for val_loss); non-finite values dropped."""
    out = []
    for row in rows_of(run, key):
        if key not in row or x not in row:
            continue
        y = row[key]
        y = number((reduce(y) if y else None) if reduce is not None else y)
        if y is not None and number(row[x]) is not None:
            out.append((float(row[x]), y))
    return out


def loss_ylim(ax: Any, runs: Sequence[StudyRun]) -> None:
    """Keep blow-ups from squashing the plot: top at the highest loss at init (+ margin)."""
    inits = [number(r.summary.init_val_loss) for r in runs if r.summary is not None]
    inits = [v for v in inits if v is not None]
    if inits:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, max(inits) * 1.1))


def entropy_line(ax: Any, study: Study, label: bool = True) -> None:
    """The unigram entropy of the training tokens as a dotted line: where a stalled run's loss sits."""
    if study.unigram_entropy is not None:
        text = f"unigram entropy ({study.unigram_entropy:.2f} nats): the stall plateau" if label else None
        ax.axhline(study.unigram_entropy, color="black", ls=":", lw=1.0, label=text)


def best_lr_runs(study: Study, results: Results) -> dict[str, tuple[float | None, list[StudyRun]]]:
    """Per variant: its best LR and the finished runs at that LR (all finished runs when there is no LR axis)."""
    out = {}
    for variant in study.variants():
        lr = results[variant].best_lr
        runs = [r for r in study.finished(variant) if not study.lr_key or study.lr(r) == lr]
        if runs:
            out[variant] = (lr, runs)
    return out


def draw_loss_curves(study: Study, results: Results, path: Path) -> bool:
    """Training loss (mean over seeds, min–max band) against steps and wall-clock, each variant at its best LR."""
    chosen = best_lr_runs(study, results)
    if not any(curve(r, "loss") for _, runs in chosen.values() for r in runs):
        return False
    color = colors(study)
    fig, axes = plt().subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    for variant, (lr, runs) in chosen.items():
        label = variant + (f" (lr={lr:g})" if lr is not None else "") + f", {len(runs)} seed(s)"
        xs, mean, lo, hi = band([curve(r, "loss") for r in runs])
        if not xs:
            continue
        axes[0].plot(xs, mean, color=color[variant], label=label, lw=1.3)
        axes[0].fill_between(xs, lo, hi, color=color[variant], alpha=0.2, lw=0)
        # Wall-clock: mean elapsed time at each logged step, against the same mean loss.
        ex, emean, _, _ = band([curve(r, "elapsed") for r in runs])
        at = dict(zip(ex, emean, strict=True))
        pts = [(at[x], m, a, b) for x, m, a, b in zip(xs, mean, lo, hi, strict=True) if x in at]
        if pts:
            t, m, a, b = zip(*pts, strict=True)
            axes[1].plot(t, m, color=color[variant], lw=1.3)
            axes[1].fill_between(t, a, b, color=color[variant], alpha=0.2, lw=0)
        vx, vmean, _, _ = band([curve(r, "val_loss") for r in runs])
        axes[0].plot(vx, vmean, "o", color=color[variant], ms=4)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("wall-clock training time (s)")
    axes[0].set_ylabel("training loss (nats/token); dots: validation")
    for ax in axes:
        ax.grid(alpha=0.3)
    loss_ylim(axes[0], [r for _, runs in chosen.values() for r in runs])
    entropy_line(axes[0], study)
    entropy_line(axes[1], study, label=False)
    axes[0].legend(fontsize=8)
    fig.suptitle("Loss at each variant's best learning rate (mean over seeds, band: min–max)", fontsize=10)
    save(fig, path)
    return True


def draw_per_lr(
    study: Study, results: Results, path: Path, *, key: str, ylabel: str, title: str, log: bool = False, reduce=None
) -> bool:
    """One panel per learning rate: `key` against steps per variant (mean over seeds, min–max band); x marks where a
    run diverged."""
    finished = [r for r in study.finished() if study.lr(r) is not None]
    lrs = [lr for lr in study.lrs if any(study.lr(r) == lr for r in finished)]
    if not lrs or not any(curve(r, key, reduce=reduce) for r in finished):
        return False
    color = colors(study)
    ncols = min(4, len(lrs))
    nrows = math.ceil(len(lrs) / ncols)
    fig, axes = plt().subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), dpi=100, sharey=True, squeeze=False)
    for ax, lr in zip(axes.flat, lrs, strict=False):
        for variant in study.variants():
            runs = [r for r in finished if study.variant(r) == variant and study.lr(r) == lr]
            xs, mean, lo, hi = band([curve(r, key, reduce=reduce) for r in runs])
            if not xs:
                continue
            ax.plot(xs, mean, color=color[variant], lw=1.2, label=variant)
            ax.fill_between(xs, lo, hi, color=color[variant], alpha=0.2, lw=0)
            for r in runs:
                if r.diverged:
                    step = r.summary.stop_step or r.summary.steps or xs[-1]
                    ax.plot([step], [mean[-1]], "x", color=color[variant], ms=8, mew=2)
        if key == "loss":
            entropy_line(ax, study)
        ax.set_title(f"lr = {lr:g}", fontsize=9)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(lrs) :]:
        ax.axis("off")
    if key == "loss":
        loss_ylim(axes[0][0], finished)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    fig.suptitle(title + " (mean over seeds, band: min–max, x: diverged)", fontsize=10)
    legend_below(fig, axes)
    save(fig, path, tight=False)
    return True


def legend_below(fig: Any, axes: Any) -> None:
    """One legend for all panels, from the first panel that has curves (the first may have no finished run)."""
    handles, labels = [], []
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            break
    if not handles:
        fig.tight_layout()
        return
    # As many columns as the figure's width holds: 8-point text is ~15 characters an inch, a handle ~8 more.
    ncol = max(1, min(len(labels), int(fig.get_figwidth() * 15 // (max(map(len, labels)) + 8))))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    legend_inches = 0.12 + 0.2 * math.ceil(len(labels) / ncol)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))


def draw_final_vs_lr(study: Study, results: Results, path: Path) -> bool:
    """Final validation loss against LR per variant: mean ± seed spread; diverged runs as x at the init loss."""
    per_variant = {v: study.per_lr(v) for v in study.variants()}
    if not any(per_variant.values()):
        return False
    color = colors(study)
    fig, ax = plt().subplots(figsize=(7.5, 4.8), dpi=110)
    inits = [number(r.summary.init_val_loss) for r in study.finished()]
    top = max((v for v in inits if v is not None), default=None)
    for i, (variant, per_lr) in enumerate(per_variant.items()):
        shift = 1 + 0.04 * (i - (len(per_variant) - 1) / 2)  # small horizontal dodge so error bars don't hide
        pts = []
        for lr in sorted(per_lr):
            ok = [v for v in per_lr[lr] if v is not None]
            s = seed_spread(ok)
            if s is not None:
                pts.append((lr * shift, s.mean, s.pm or 0.0))
            n_div = len(per_lr[lr]) - len(ok)
            if n_div and top is not None:
                ax.plot([lr * shift] * n_div, [top] * n_div, "x", color=color[variant], ms=9, mew=2)
        if pts:
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(x, y, yerr=e, color=color[variant], marker="o", ms=4, capsize=3, label=variant)
    if top is not None:
        ax.axhline(top, color="grey", ls="--", lw=0.8, label="loss at init (x: diverged)")
    entropy_line(ax, study)
    ax.set_xscale("log")
    title = "Final validation loss vs learning rate (mean ± seed spread)"
    label_axes(ax, "peak learning rate", "final validation loss (nats/token)", title)
    save(fig, path)
    return True


def draw_sensitivity(study: Study, results: Results, path: Path) -> bool:
    items = [(v, r.sensitivity, r.sensitivity_values) for v, r in results.items() if r.sensitivity is not None]
    if not items:
        return False
    color = colors(study)
    fig, ax = plt().subplots(figsize=(max(5, 1.6 * len(items) + 2), 4.2), dpi=110)
    for i, (variant, s, values) in enumerate(items):
        ax.bar(i, s.mean, yerr=s.pm or 0.0, color=color[variant], alpha=0.7, capsize=4)
        ax.plot([i] * len(values), values, "k.", ms=6)
    ax.set_xticks(range(len(items)), [v for v, _, _ in items], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("LR sensitivity (nats)")
    ax.set_title("Learning-rate sensitivity (Wortsman et al. 2023); dots: seeds, bars: mean ± spread", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    save(fig, path)
    return True


def depth_profiles(study: Study, results: Results, key: str) -> dict[str, tuple]:
    """Per variant at its best LR: the per-block list `key` at each run's last logged step, over seeds, as
    (lr, positions from 1, mean, min, max)."""
    profiles = {}
    for variant, (lr, runs) in best_lr_runs(study, results).items():
        last = [p for r in runs if isinstance(p := r.last_logged(key), list) and p]
        xs, mean, lo, hi = band([[(i + 1, number(v)) for i, v in enumerate(p)] for p in last])
        if xs:
            profiles[variant] = (lr, xs, mean, lo, hi)
    return profiles


def plot_profiles(ax: Any, study: Study, profiles: dict[str, tuple]) -> None:
    color = colors(study)
    for variant, (lr, xs, mean, lo, hi) in profiles.items():
        label = variant + (f" (lr={lr:g})" if lr is not None else "")
        ax.plot(xs, mean, "o-", color=color[variant], label=label, ms=4)
        ax.fill_between(xs, lo, hi, color=color[variant], alpha=0.2, lw=0)
    ax.xaxis.get_major_locator().set_params(integer=True)  # blocks and norms are counted


def draw_resid_depth(study: Study, results: Results, path: Path) -> bool:
    """RMS of the residual stream after each block at the last logged step, each variant at its best LR."""
    profiles = depth_profiles(study, results, "resid_rms")
    if not profiles:
        return False
    fig, ax = plt().subplots(figsize=(7, 4.5), dpi=110)
    plot_profiles(ax, study, profiles)
    ax.set_yscale("log")
    title = "Residual-stream RMS vs depth at the end of training (best LR; band: min–max over seeds)"
    label_axes(ax, "block (depth)", "residual-stream RMS after the block", title, title_size=9)
    save(fig, path)
    return True


def draw_mean_drift_depth(study: Study, results: Results, path: Path) -> bool:
    """Mean drift (|mean| / RMS over features, averaged over tokens) at the last logged step, each variant at its
    best LR: of the stream after each block, and of each norm's input in the order the stream meets the norms."""
    panels = [(key, depth_profiles(study, results, key)) for key in ("resid_mean_drift", "norm_input_mean_drift")]
    if not any(profiles for _, profiles in panels):
        return False
    fig, axes = plt().subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    labels = {
        "resid_mean_drift": ("block (depth)", "stream after the block"),
        "norm_input_mean_drift": ("norm of the blocks, in the order the stream meets them", "input of the norm"),
    }
    for ax, (key, profiles) in zip(axes, panels, strict=True):
        plot_profiles(ax, study, profiles)
        xlabel, what = labels[key]
        label_axes(ax, xlabel, f"|mean| / RMS over features, {what}", what)
    axes[0].set_ylim(bottom=0)
    fig.suptitle("Mean drift vs depth at the end of training (best LR; mean over seeds, band: min–max)", fontsize=10)
    save(fig, path)
    return True


FIGURES: tuple[Figure, ...] = (
    Figure(
        "loss_curves",
        draw_loss_curves,
        "Training loss per variant at its best LR, against optimizer steps and wall-clock time (mean over seeds, "
        "min–max band; dots: validation). Best LR rather than one panel per LR here because that is the tuned "
        "comparison a reader wants first; the next figure has every LR.",
        needs_metrics=("loss",),
    ),
    Figure(
        "loss_per_lr",
        partial(draw_per_lr, key="loss", ylabel="training loss (nats/token)", title="Training loss per learning rate"),
        "Training loss, one panel per learning rate: where instability starts.",
        needs_lr_axis=True,
        needs_metrics=("loss",),
    ),
    Figure(
        "final_loss_vs_lr",
        draw_final_vs_lr,
        "Final validation loss against learning rate (log x), mean ± seed spread; x marks diverged runs, drawn at "
        "the loss at initialization.",
        needs_lr_axis=True,
    ),
    Figure(
        "lr_sensitivity",
        draw_sensitivity,
        "LR sensitivity per variant (Wortsman et al. 2023), mean ± spread over seeds; dots are single seeds.",
        needs_lr_axis=True,
    ),
    Figure(
        "grad_norm_per_lr",
        partial(
            draw_per_lr,
            key="grad_norm",
            ylabel="grad norm (before clipping)",
            title="Gradient norm per learning rate",
            log=True,
        ),
        "Total gradient norm (before clipping), one panel per learning rate (log y).",
        needs_lr_axis=True,
        needs_metrics=("grad_norm",),
    ),
    Figure(
        "attn_logit_per_lr",
        partial(
            draw_per_lr,
            key="attn_logit_max",
            ylabel="max attention logit",
            title="Largest attention logit (max over layers) per learning rate",
            log=True,
            reduce=max,
        ),
        "Largest pre-softmax attention logit (max over layers), one panel per learning rate (log y); Wortsman et al. "
        "(2023) tie its growth to attention-logit divergence.",
        needs_lr_axis=True,
        needs_metrics=("attn_logit_max",),
    ),
    Figure(
        "resid_rms_depth",
        draw_resid_depth,
        "Residual-stream RMS after each block at the end of training, at each variant's best LR.",
        needs_metrics=("resid_rms",),
    ),
    Figure(
        "mean_drift_depth",
        draw_mean_drift_depth,
        "Mean drift across depth at the end of training, each variant at its best LR: |mean over features| / RMS, "
        "averaged over tokens (0: centred vectors, 1: constant ones), of the residual stream after each block (left) "
        "and of each norm's input (right; pre-norm: attention then MLP norm of block 1, then of block 2, ...). "
        "LayerNorm subtracts the mean its input has; RMSNorm passes it on.",
        needs_metrics=("resid_mean_drift",),
    ),
)


def draw_figures(study: Study, results: Results, fig_dir: Path) -> dict[str, str | None]:
    """Draw every figure that applies into `fig_dir`: figure name -> file name, None where nothing was drawn.
    Figures left from an earlier report that this one did not draw are removed, so report.md and figures/ agree."""
    fig_dir.mkdir(exist_ok=True)
    drawn: dict[str, str | None] = {}
    for figure in FIGURES:
        path = fig_dir / f"{figure.name}.png"
        drawn[figure.name] = path.name if figure.can_draw(study) and figure.draw(study, results, path) else None
    for stale in fig_dir.glob("*.png"):
        if stale.name not in drawn.values():
            stale.unlink()
    return drawn
