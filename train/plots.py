"""The run's own figure: training and validation loss against optimizer steps (loss_curve.png)."""

from __future__ import annotations

from pathlib import Path

from train.atomic_io import atomic_path, read_jsonl
from train.run_directory import eval_rows, train_rows


def plot_loss_curve(metrics_path: Path, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _ = read_jsonl(metrics_path)
    train = [(r["step"], r["loss"]) for r in train_rows(rows) if r["loss"] is not None]
    val = [(r["step"], r["val_loss"]) for r in eval_rows(rows) if r["val_loss"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.5, ms=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
