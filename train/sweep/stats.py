"""The report's statistics: small pure functions on plain numbers, tested on constructed inputs (tests/test_stats.py).

Paired comparisons (what every comparison and verdict uses). A seed fixes the initial weights (every tensor two
variants share) and the order of the training batches, whatever the norm, its placement or QK-norm (common random
numbers, tested in tests/test_stats.py). Two variants run with seed k therefore differ only in the variant, and a
comparison is computed from the per-seed differences d_k = a_k − b_k (`pair`) over the seeds present in both; a seed
missing from either side is left out and named, and n counts the pairs.
  * mean difference d̄ and a 95% Student-t interval d̄ ± t(0.975, n−1) · s_d / √n (`Paired.interval`).
  * "a is lower than b": the 95% interval lies entirely below 0 (a two-sided paired t-test at α = 0.05); "higher":
    entirely above 0; otherwise the difference is not resolved.
  * "a equals b within δ" (the declared tolerance): two one-sided tests (TOST, Schuirmann 1987) at α = 0.05, which is
    the 90% t-interval lying strictly inside (−δ, δ) (`Paired.equivalent`); a difference whose interval touches ±δ
    is not shown equal. "Further apart than δ": the 95% interval lies entirely outside [−δ, δ] (`Paired.apart`).
  * the power line: the smallest true mean difference a two-sided paired t-test at α = 0.05 would detect with 80%
    power, with the measured paired SD and n (`detectable_difference`, exact through the noncentral t), so that a
    result that resolves nothing says how far it was from deciding. `seeds_needed` and `seeds_for_equivalence` turn
    a pilot's paired SD into a seed count.
  * ordinal outcomes (the largest stable LR of each seed, fail or train): an exact sign test over the seeds
    (`sign_test`), ties left out; with α = 0.05 it needs at least `sign_test_needs()` = 5 untied seeds, all one way.

Why a t-interval rather than a bootstrap one: with the 5–10 seeds a study affords, a percentile bootstrap resamples
from at most a few hundred distinct sets, its intervals are too narrow by about √((n−1)/n) and ignore the t-tails,
so they undercover exactly where the seed count is small. The t-interval is exact when the per-seed differences are
normal, and differences of final losses between two variants that share everything but the variant are sums of many
small effects; its mild sensitivity to skew is the price, and n seeds could not test normality anyway. The TOST and
the power calculation rest on the same t model, so the three statements are consistent with each other.

Summaries of one variant (the results tables, not the comparisons):
  * seed spread: with 3 or more seeds, mean ± sample standard deviation over seeds; with 2 seeds, mean ± half the
    min–max range; with 1 seed there is no spread.
  * LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    instabilities"): E over the LR grid of [min(final_loss(lr), loss_at_init) − min over LRs of final_loss],
    computed per seed (diverged runs count as loss_at_init), then mean ± spread over seeds; per-seed values pair
    across variants like losses.
  * largest stable LR: the largest LR whose runs did not diverge for any seed and whose mean final loss is within a
    tolerance of the best LR's (`largest_stable_lr`); per seed, the same function over that seed's runs alone.

A final loss of None (or NaN/inf) means the run diverged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import optimize
from scipy import stats as dist

CONFIDENCE = 0.95  # of every interval the report prints
ALPHA = 0.05  # of every test: two-sided for differences, each one-sided test of a TOST, one-sided sign tests
POWER = 0.8  # of the power line


# ---------------------------------------------------------------------------------------------------------------------
# Paired comparisons


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Paired:
    """Per-seed differences a − b over the seeds where both have a finite value; `only_a` / `only_b` name the seeds
    that could not be paired."""

    seeds: tuple[Any, ...]
    diffs: tuple[float, ...]
    only_a: tuple[Any, ...] = ()
    only_b: tuple[Any, ...] = ()

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.diffs) if self.diffs else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation of the differences; None below 2 pairs."""
        return statistics.stdev(self.diffs) if self.n >= 2 else None

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        """Two-sided Student-t interval for the mean difference; None below 2 pairs."""
        if self.n < 2:
            return None
        half = float(dist.t.ppf(0.5 + confidence / 2, self.n - 1)) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def identical(self) -> bool:
        """Every paired difference is zero (to 1e-9, float rounding of equal runs): nothing to test."""
        return self.n > 0 and all(abs(d) <= 1e-9 for d in self.diffs)

    def sign(self) -> int | None:
        """-1 when the 95% interval lies below 0 (a is lower), +1 above, 0 when it holds 0; None below 2 pairs."""
        ci = self.interval()
        if ci is None:
            return None
        return -1 if ci[1] < 0 else (1 if ci[0] > 0 else 0)

    def equivalent(self, tolerance: float, alpha: float = ALPHA) -> bool | None:
        """TOST at `alpha`: the (1 − 2 alpha) interval strictly inside (−tolerance, tolerance); None below 2 pairs."""
        ci = self.interval(1 - 2 * alpha)
        return None if ci is None else -tolerance < ci[0] and ci[1] < tolerance

    def tost_p(self, tolerance: float) -> float | None:
        """The TOST p-value: the larger of the two one-sided t-test p-values against −tolerance and +tolerance."""
        if self.n < 2:
            return None
        if self.sd == 0:
            return 0.0 if abs(self.mean) < tolerance else 1.0
        se = self.sd / math.sqrt(self.n)
        above = dist.t.sf((self.mean + tolerance) / se, self.n - 1)  # H0: mean <= -tolerance
        below = dist.t.cdf((self.mean - tolerance) / se, self.n - 1)  # H0: mean >= +tolerance
        return float(max(above, below))

    def apart(self, tolerance: float) -> bool | None:
        """The 95% interval lies entirely outside [−tolerance, tolerance]: further apart than the tolerance."""
        ci = self.interval()
        return None if ci is None else ci[0] > tolerance or ci[1] < -tolerance

    def detectable(self, power: float = POWER, alpha: float = ALPHA) -> float | None:
        return detectable_difference(self.sd, self.n, power, alpha) if self.n >= 2 else None

    def text(self, digits: int = 3) -> str:
        """'-0.012 ± 0.034 (95% t-interval, 5 paired seeds)'; the ± is the interval's half-width."""
        if self.n == 0:
            return "no paired seeds"
        if self.n == 1:
            return f"{self.mean:+.{digits}f} (1 paired seed: no interval)"
        lo, hi = self.interval()
        return f"{self.mean:+.{digits}f} ± {(hi - lo) / 2:.{digits}f} (95% t-interval, {self.n} paired seeds)"

    def power_line(self, digits: int = 3) -> str:
        """What this comparison could have resolved: 'could have detected differences ≥ X nats; observed Y ± Z'."""
        if self.n < 2:
            return f"{self.n} paired seed(s): no interval and no power estimate"
        return (
            f"could have detected differences ≥ {self.detectable():.{digits}f} (80% power, two-sided α = 0.05, paired "
            f"SD {self.sd:.{digits}f}, n = {self.n}); observed {self.text(digits)}"
        )

    def unpaired_text(self, label_a: str = "a", label_b: str = "b") -> str:
        """Which seeds were left out for want of a partner ('' when every seed paired)."""
        parts = [
            f"seed(s) {', '.join(map(str, s))} only in {label}"
            for s, label in ((self.only_a, label_a), (self.only_b, label_b))
            if s
        ]
        return "; ".join(parts) + " (left out)" if parts else ""


def pair(a: Mapping[Any, float | None], b: Mapping[Any, float | None]) -> Paired:
    """Pair two seed -> value maps on the seeds where both values are finite (None, NaN or inf: no value)."""
    keep_a = {k for k, v in a.items() if finite(v)}
    keep_b = {k for k, v in b.items() if finite(v)}
    seeds = sorted(keep_a & keep_b, key=str)
    return Paired(
        tuple(seeds),
        tuple(float(a[k]) - float(b[k]) for k in seeds),
        tuple(sorted(keep_a - keep_b, key=str)),
        tuple(sorted(keep_b - keep_a, key=str)),
    )


def detectable_difference(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true mean difference that a two-sided one-sample (paired) t-test at `alpha` with `n` pairs
    detects with probability `power`, when the differences have standard deviation `sd`. Exact: the test statistic
    follows a noncentral t with n − 1 degrees of freedom and noncentrality Δ√n / sd."""
    if n < 2:
        raise ValueError("a t-test needs at least 2 pairs")
    if sd == 0:
        return 0.0
    df = n - 1
    crit = dist.t.ppf(1 - alpha / 2, df)

    def shortfall(effect: float) -> float:  # effect in units of sd
        nc = effect * math.sqrt(n)
        # The far tail P(T < −crit) by symmetry; scipy returns NaN where it underflows, i.e. where it is ~0.
        far = dist.nct.sf(crit, df, -nc)
        return dist.nct.sf(crit, df, nc) + (far if math.isfinite(far) else 0.0) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return optimize.brentq(shortfall, 0.0, high, xtol=1e-12) * sd


def seeds_needed(sd: float, difference: float, power: float = POWER, alpha: float = ALPHA, most: int = 1000) -> int:
    """The fewest pairs whose paired t-test detects a true `difference` with `power` (None-free: at most `most`)."""
    return next((n for n in range(2, most + 1) if detectable_difference(sd, n, power, alpha) <= difference), most)


def seeds_for_equivalence(sd: float, tolerance: float, power: float = POWER, alpha: float = ALPHA) -> int:
    """The fewest pairs for which a TOST at `alpha` shows equivalence within ±tolerance with `power` when the true
    difference is 0: the smallest n with (t(1 − alpha, n − 1) + t(1 − (1 − power) / 2, n − 1)) · sd / √n <=
    tolerance (Chow, Shao & Wang, *Sample Size Calculations in Clinical Research*, 2nd ed. 2008, section 3.2)."""

    def reach(n: int) -> float:
        df = n - 1
        return (dist.t.ppf(1 - alpha, df) + dist.t.ppf(1 - (1 - power) / 2, df)) * sd / math.sqrt(n)

    return next(n for n in range(2, 100_000) if reach(n) <= tolerance)


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: the probability of at least `wins` of `wins + losses` untied seeds going one way
    if either way were equally likely (ties are left out before calling). 1.0 with no untied seed."""
    if wins + losses == 0:
        return 1.0
    return float(dist.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def sign_test_needs(alpha: float = ALPHA) -> int:
    """The fewest untied seeds, all one way, that a one-sided sign test can call significant at `alpha`."""
    return math.ceil(math.log2(1 / alpha))


# ---------------------------------------------------------------------------------------------------------------------
# Summaries of one variant


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


def paired_ranking(per_seed: Mapping[str, Mapping[Any, float | None]]) -> list[tuple[str, str]]:
    """Pairs (lower, higher) of variants whose paired difference is resolved (95% interval excludes 0), in the order
    of the variants' means; every other pair is unranked."""
    means = {k: statistics.fmean(xs) for k, v in per_seed.items() if (xs := [x for x in v.values() if finite(x)])}
    order = sorted(means, key=means.get)
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            sign = pair(per_seed[a], per_seed[b]).sign()
            if sign:
                out.append((a, b) if sign < 0 else (b, a))
    return out


def uniformly_worse(
    sensitivity: Mapping[str, Mapping[Any, float | None]], best_loss: Mapping[str, Mapping[Any, float | None]]
) -> list[tuple[str, str]]:
    """Pairs (a, b) where a is resolved less LR-sensitive than b but has a resolved higher best loss: its low
    sensitivity comes from being bad everywhere, not from robustness."""
    return [
        (a, b)
        for a, b in paired_ranking(sensitivity)
        if a in best_loss and b in best_loss and pair(best_loss[a], best_loss[b]).sign() == 1
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
