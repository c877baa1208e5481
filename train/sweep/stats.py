"""The report's statistics: small pure functions on plain numbers, tested on constructed inputs.

  * seed spread: with 3 or more seeds, mean ± sample standard deviation over seeds; with 2 seeds, mean ± half the
    min–max range; with 1 seed there is no spread and nothing is ranked.
  * two variants are ranked only if their mean ± spread intervals do not overlap; otherwise they are "not
    distinguishable at this seed count".
  * LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    instabilities"): E over the LR grid of [min(final_loss(lr), loss_at_init) − min over LRs of final_loss],
    computed per seed (diverged runs count as loss_at_init), then mean ± spread over seeds.
  * "the same": two values are equal within a margin when they are not distinguishable AND the sum of their spreads
    is at most the margin (so a difference larger than the margin would have been resolved); overlapping intervals
    alone say only that a difference is within the noise, not that it is small.
  * above or below a threshold: the whole mean ± spread interval lies on one side of it.
  * largest stable LR: the largest LR whose runs did not diverge for any seed and whose mean final loss is within a
    tolerance of the best LR's.

A final loss of None (or NaN/inf) means the run diverged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """A mean over seeds and its uncertainty `pm` (None with a single seed); `kind` says what `pm` is."""

    mean: float
    pm: float | None
    n: int

    @property
    def kind(self) -> str:
        if self.n >= 3:
            return "std"
        return "half-range" if self.n == 2 else "single seed"

    def text(self, digits: int = 3) -> str:
        if self.pm is None:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {self.pm:.{digits}f}"


def seed_spread(values: Sequence[float]) -> Spread | None:
    """Mean ± spread over seeds: sample std (n >= 3), half the min–max range (n = 2), none (n = 1)."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Spread(mean, None, 1)
    if len(values) == 2:
        return Spread(mean, (max(values) - min(values)) / 2, 2)
    return Spread(mean, statistics.stdev(values), len(values))


def spread_meaning(spreads: Sequence[Spread | None]) -> str:
    """One phrase saying what ± means for these spreads (they may have different seed counts)."""
    ns = sorted({s.n for s in spreads if s is not None})
    if not ns:
        return "no finished seeds"
    parts = []
    if any(n >= 3 for n in ns):
        parts.append("sample std over seeds")
    if 2 in ns:
        parts.append("half the min–max range over 2 seeds")
    if 1 in ns:
        parts.append("no ± where there is a single seed")
    return "± = " + "; ".join(parts)


def distinguishable(a: Spread, b: Spread) -> bool | None:
    """True if the mean ± spread intervals do not overlap, False if they do, None if either has a single seed."""
    if a.pm is None or b.pm is None:
        return None
    return abs(a.mean - b.mean) > a.pm + b.pm


def equal_within(a: Spread, b: Spread, margin: float) -> bool | None:
    """True when the intervals overlap and the spreads together are at most `margin` (the difference is then at most
    `margin`), False when distinguishable, None when the overlap is too wide to say or either has a single seed."""
    apart = distinguishable(a, b)
    if apart is None:
        return None
    if apart:
        return False
    return True if a.pm + b.pm <= margin else None


def beyond(s: Spread, threshold: float) -> bool | None:
    """True when the whole interval lies above `threshold`, False when it lies below, None when it straddles it or
    there is a single seed."""
    if s.pm is None:
        return None
    if s.mean - s.pm > threshold:
        return True
    return False if s.mean + s.pm < threshold else None


def compare(label_a: str, a: Spread, label_b: str, b: Spread, quantity: str, digits: int = 3, context: str = "") -> str:
    """One sentence comparing two variants on a lower-is-better quantity, refusing to rank within the seed spread."""
    ns = (f"{a.n} seed" + ("s" if a.n > 1 else "")) if a.n == b.n else f"{a.n} vs {b.n} seeds"
    values = f"{a.text(digits)} vs {b.text(digits)} over {ns}"
    where = f" ({context})" if context else ""
    head = f"{label_a} vs {label_b}{where}: {quantity} {values} ({spread_meaning([a, b])})"
    verdict = distinguishable(a, b)
    if verdict is None:
        return f"{head}: not ranked (a single seed gives no spread estimate)."
    if not verdict:
        return f"{head}: not distinguishable at this seed count."
    lower = label_a if a.mean < b.mean else label_b
    return f"{head}: {lower} is lower by {abs(a.mean - b.mean):.{digits}f}, more than the seed spread."


def ranking(stats: Mapping[str, Spread]) -> list[tuple[str, str]]:
    """Pairs (better, worse) whose difference exceeds the seed spread, best-first; every other pair is unranked."""
    items = sorted(stats.items(), key=lambda kv: kv[1].mean)
    return [(la, lb) for i, (la, a) in enumerate(items) for lb, b in items[i + 1 :] if distinguishable(a, b)]


def uniformly_worse(sensitivity: Mapping[str, Spread], best_loss: Mapping[str, Spread]) -> list[tuple[str, str]]:
    """Pairs (a, b) where a is distinguishably less LR-sensitive than b but has a distinguishably worse best loss:
    its low sensitivity comes from being bad everywhere, not from robustness."""
    return [
        (a, b)
        for a, b in ranking(sensitivity)
        if a in best_loss and b in best_loss and (b, a) in ranking({a: best_loss[a], b: best_loss[b]})
    ]


def diverged(loss: float | None) -> bool:
    return loss is None or not math.isfinite(loss)


def lr_sensitivity(final_losses: Mapping[float, float | None], init_loss: float) -> float:
    """Wortsman et al. 2023, one seed: mean over the LR grid of min(final_loss(lr), init_loss) − min_lr final_loss.

    `final_losses` maps every LR of the grid to the final loss, None (or NaN/inf) for a diverged run, which counts as
    `init_loss`. The minimum is taken over the clipped losses, so the result is >= 0 even when no LR got below
    `init_loss`."""
    if not final_losses:
        raise ValueError("lr_sensitivity needs at least one learning rate")
    clipped = [init_loss if diverged(v) else min(v, init_loss) for v in final_losses.values()]
    return statistics.fmean(clipped) - min(clipped)


def sensitivity_over_seeds(
    per_seed: Mapping[Any, Mapping[float, float | None]], init_by_seed: Mapping[Any, float], lrs: Sequence[float]
) -> tuple[Spread | None, list[Any], list[float]]:
    """LR sensitivity per seed (only seeds with a result at every LR of `lrs` and a loss at init), then mean ± spread
    over seeds. Returns the spread, the seeds used and their values."""
    values, used = [], []
    for seed, by_lr in sorted(per_seed.items(), key=lambda kv: str(kv[0])):
        if seed not in init_by_seed or any(lr not in by_lr for lr in lrs):
            continue
        values.append(lr_sensitivity({lr: by_lr[lr] for lr in lrs}, init_by_seed[seed]))
        used.append(seed)
    return seed_spread(values), used, values


def stable_means(per_lr: Mapping[float, Sequence[float | None]]) -> dict[float, float]:
    """Mean final loss of every LR that has runs and where no run diverged."""
    return {lr: statistics.fmean(v) for lr, v in per_lr.items() if v and not any(diverged(x) for x in v)}


def best_lr(per_lr: Mapping[float, Sequence[float | None]]) -> float | None:
    """The LR with the lowest mean final loss among LRs where no seed diverged (the smaller LR on a tie)."""
    means = stable_means(per_lr)
    return min(means, key=lambda lr: (means[lr], lr)) if means else None


def largest_stable_lr(per_lr: Mapping[float, Sequence[float | None]], tolerance: float) -> float | None:
    """The largest LR whose runs did not diverge for any seed and whose mean final loss is within `tolerance` of the
    best (lowest) such mean; None if every LR diverged for some seed."""
    means = stable_means(per_lr)
    if not means:
        return None
    best = min(means.values())
    return max(lr for lr, m in means.items() if m <= best + tolerance)


def band(curves: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Align (step, value) curves on step: (steps, mean, min, max) over the curves that have each step; non-finite
    values are dropped."""
    at: dict[float, list[float]] = {}
    for curve in curves:
        for x, y in curve:
            if y is not None and math.isfinite(y):
                at.setdefault(x, []).append(y)
    xs = sorted(at)
    return xs, [statistics.fmean(at[x]) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs]
