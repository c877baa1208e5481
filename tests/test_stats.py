"""The report's statistics (train/sweep/stats.py) on constructed numbers, and the pairing they assume: a seed fixes
the initial weights and the training batches of every norm variant (common random numbers)."""

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats as dist
from synthetic_corpus import write_corpus
from trainer_runs import flags

from train.sweep import stats

S = stats.Spread


# ---------------------------------------------------------------------------------------------------------------------
# The pairing: same seed, same start, same batches, whatever the norm


@pytest.fixture
def global_rng():
    """The trainer seeds the global generators and sets torch's thread count: give them back afterwards."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state(), torch.get_num_threads()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])
    torch.set_num_threads(states[3])


VARIANTS = {
    "rms": {},
    "layer": {"norm": "layer"},
    "dyt": {"norm": "dyt"},
    # Zhu et al.'s LLaMA recipe: its alphas, no bias and the embedding scalar all start at constants
    "dyt_recipe": {"norm": "dyt", "dyt_attention_alpha_init": 0.8, "dyt_alpha_init": 0.2, "dyt_bias": "false"}
    | {"embedding_scale": "true"},
    "none": {"norm": "none"},
    "post": {"norm_placement": "post"},
    "qk_norm": {"qk_norm": "true"},
}


def test_a_seed_fixes_the_initial_weights_and_the_batches_of_every_norm_variant(tmp_path, global_rng):
    """Through the trainer's own setup (data preparation included: the first variant builds the token cache, the
    others read it), every tensor two variants share starts equal, and the first batches are the same."""
    from train.config import parse_args
    from train.trainer import Trainer

    corpus, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"

    def start(name: str, seed: int, **overrides) -> tuple[dict, list]:
        trainer = Trainer(parse_args(flags(corpus, cache, tmp_path / name, seed=seed, **overrides)))
        trainer.setup()
        weights = {k: v.detach().cpu().clone() for k, v in trainer.unwrapped.state_dict().items()}
        batches = [trainer.batches.next_batch() for _ in range(3)]
        trainer.lock.release()
        return weights, batches

    ref_weights, ref_batches = start("rms", seed=5)
    for name, overrides in VARIANTS.items():
        weights, batches = start(f"{name}-5", seed=5, **overrides)
        shared = [k for k in weights if k in ref_weights]
        assert len(shared) >= len(ref_weights) - 4 * 2 - 1, name  # all but the norms' own tensors
        assert [k for k in shared if not torch.equal(weights[k], ref_weights[k])] == [], name
        assert all(torch.equal(x, y) for x, y in zip(batches, ref_batches, strict=True)), name
    # ... and another seed starts elsewhere, so the comparison above can fail.
    other_weights, other_batches = start("rms-6", seed=6)
    assert not torch.equal(other_weights["model.embed_tokens.weight"], ref_weights["model.embed_tokens.weight"])
    assert not torch.equal(other_batches[0], ref_batches[0])


# ---------------------------------------------------------------------------------------------------------------------
# Paired differences


def test_a_paired_difference_is_found_where_independent_intervals_overlap():
    # Seeds move both variants together (a good seed is good for both); b is 0.05 nats worse in every seed.
    a = {0: 4.50, 1: 4.70, 2: 4.90, 3: 4.60, 4: 4.80}
    b = {seed: x + d for (seed, x), d in zip(a.items(), (0.05, 0.04, 0.06, 0.05, 0.05), strict=True)}
    sa, sb = stats.seed_spread(list(a.values())), stats.seed_spread(list(b.values()))
    assert abs(sa.mean - sb.mean) < sa.pm + sb.pm  # mean ± std intervals overlap many times over
    assert dist.ttest_ind(list(a.values()), list(b.values())).pvalue > 0.5  # independent samples: nothing
    p = stats.pair(a, b)
    assert p.n == 5 and p.mean == pytest.approx(-0.05) and p.sign() == -1  # paired: a is lower
    lo, hi = p.interval()
    assert hi < 0 and dist.ttest_rel(list(a.values()), list(b.values())).pvalue < 0.001  # scipy agrees
    # The interval is the textbook one: mean ± t(0.975, 4) * sd / sqrt(5).
    half = dist.t.ppf(0.975, 4) * p.sd / math.sqrt(5)
    assert (lo, hi) == (pytest.approx(-0.05 - half), pytest.approx(-0.05 + half))
    assert stats.pair(b, a).sign() == 1
    assert stats.pair(a, {k: v + 0.3 * (-1) ** k for k, v in a.items()}).sign() == 0  # ±0.3 by seed: unresolved


def test_an_equivalence_is_found_and_refused_at_the_tolerance_edge():
    p = stats.pair({k: 5.0 + d for k, d in enumerate((0.01, -0.02, 0.015, 0.0, -0.005))}, dict.fromkeys(range(5), 5.0))
    assert p.equivalent(0.1) is True and p.tost_p(0.1) < 0.001
    assert p.apart(0.1) is False
    # At the edge: the tolerance equal to the far end of the 90% interval is not enough; a hair above it is.
    lo, hi = p.interval(0.90)
    edge = max(-lo, hi)
    assert p.equivalent(edge) is False and p.tost_p(edge) == pytest.approx(0.05)
    assert p.equivalent(edge * 1.001) is True and p.tost_p(edge * 1.001) < 0.05
    # A difference sitting on the tolerance is never shown equal, however many seeds.
    on_edge = stats.Paired(tuple(range(50)), tuple(0.1 + 0.01 * (-1) ** k for k in range(50)))
    assert on_edge.equivalent(0.1) is False and on_edge.tost_p(0.1) == pytest.approx(0.5, abs=0.01)
    # Further apart than the tolerance: the whole 95% interval outside ±δ.
    far = stats.Paired((0, 1, 2), (0.30, 0.32, 0.31))
    assert far.apart(0.1) is True and far.equivalent(0.1) is False
    assert stats.Paired((0,), (0.0,)).equivalent(0.1) is None and stats.Paired((0,), (0.0,)).apart(0.1) is None


def test_the_power_line_matches_a_hand_computation():
    p = stats.Paired(tuple(range(5)), (0.1, 0.2, 0.3, 0.4, 0.5))
    # sd = sqrt(0.025) = 0.158114; 95% half-width = t(0.975, 4) 2.776445 * 0.158114 / sqrt(5) = 0.196324.
    assert p.sd == pytest.approx(0.158114, rel=1e-5)
    assert p.text() == "+0.300 ± 0.196 (95% t-interval, 5 paired seeds)"
    # The detectable difference in SD units for n = 5 (noncentral t, 4 df): 1.682; the textbook approximation
    # (t(0.975, 4) + t(0.8, 4)) / sqrt(5) = (2.7764 + 0.9410) / 2.2361 = 1.6625 is close below it.
    assert stats.detectable_difference(1.0, 5) == pytest.approx(1.68200, abs=1e-4)
    assert p.power_line() == (
        "could have detected differences ≥ 0.266 (80% power, two-sided α = 0.05, paired SD 0.158, n = 5); "
        "observed +0.300 ± 0.196 (95% t-interval, 5 paired seeds)"
    )
    # For many pairs it is the normal-theory (z(0.975) + z(0.8)) * sd / sqrt(n) = 2.80159 * 0.2 / 20 = 0.0280159.
    assert stats.detectable_difference(0.2, 400) == pytest.approx(0.0280159, rel=5e-3)
    # And it is what it says: with that true difference, 80% of 5-seed experiments reject (fixed-seed simulation).
    sd, n = 0.1, 5
    delta = stats.detectable_difference(sd, n)
    diffs = np.random.default_rng(0).normal(delta, sd, size=(100_000, n))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > dist.t.ppf(0.975, n - 1)) == pytest.approx(0.80, abs=0.006)
    assert stats.detectable_difference(0.0, 5) == 0.0
    assert stats.Paired((0,), (0.3,)).power_line() == "1 paired seed(s): no interval and no power estimate"


def test_seed_counts_from_a_pilots_paired_spread():
    # Equivalence within ±0.1 at paired SD 0.107 (Chow et al. section 3.2): n = 11 gives (t(0.95, 10) 1.8125 +
    # t(0.9, 10) 1.3722) * 0.107 / sqrt(11) = 0.1027 > 0.1; n = 12 gives (1.7959 + 1.3634) * 0.107 / sqrt(12) = 0.0976.
    assert stats.seeds_for_equivalence(0.107, 0.1) == 12
    # A difference of 0.1 with 80% power: the smallest n whose detectable difference is at most 0.1.
    n = stats.seeds_needed(0.107, 0.1)
    assert stats.detectable_difference(0.107, n) <= 0.1 < stats.detectable_difference(0.107, n - 1)
    assert stats.seeds_needed(0.01, 0.1) == 3  # a tight pairing needs few seeds (2 pairs have 1 df: 11.5 SDs)


def test_unpaired_seeds_are_left_out_and_named():
    a = {0: 4.0, 1: 4.1, 2: 4.2, 3: None, 5: 4.4}  # seed 3 diverged in a; seed 5 exists only in a
    b = {0: 4.1, 1: 4.2, 2: 4.3, 3: 4.3, 4: 4.5}
    p = stats.pair(a, b)
    assert p.seeds == (0, 1, 2) and p.n == 3 and p.only_a == (5,) and p.only_b == (3, 4)
    assert p.mean == pytest.approx(-0.1)
    assert p.unpaired_text("rms", "layer") == "seed(s) 5 only in rms; seed(s) 3, 4 only in layer (left out)"
    assert stats.pair({0: math.nan}, {0: 1.0}).n == 0 and stats.pair({}, {}).text() == "no paired seeds"
    assert stats.pair({0: 1.0}, {0: 2.0}).text() == "-1.000 (1 paired seed: no interval)"
    assert stats.pair({0: 0.1 + 0.2, 1: 1.0}, {0: 0.3, 1: 1.0}).identical  # equal up to float rounding
    assert not stats.pair({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.001}).identical


def test_the_sign_test_is_exact_and_needs_five_seeds_at_alpha_005():
    assert stats.sign_test(5, 0) == pytest.approx(1 / 32) and stats.sign_test(4, 0) == pytest.approx(1 / 16)
    assert stats.sign_test(4, 1) == pytest.approx(6 / 32) and stats.sign_test(0, 0) == 1.0
    assert stats.sign_test_needs() == 5 and stats.sign_test_needs(0.01) == 7


def test_orderings_and_the_uniformly_worse_caveat_are_paired():
    base = {0: 3.40, 1: 3.60, 2: 3.50}
    shift = lambda d, wobble=0.0: {k: v + d + wobble * (-1) ** k for k, v in base.items()}
    per_seed = {"rms": base, "layer": shift(0.01, 0.05), "post": shift(0.2)}  # layer: ±0.05 by seed, unresolved
    assert stats.paired_ranking(per_seed) == [("rms", "post"), ("layer", "post")]
    assert stats.paired_ranking({"rms": base, "layer": shift(0.01, 0.05)}) == []
    sensitivity = {"pre": shift(0.3), "post": shift(0.1), "other": shift(0.08, 0.05)}
    best = {"pre": shift(0.0), "post": shift(0.5), "other": shift(0.01, 0.05)}
    assert stats.uniformly_worse(sensitivity, best) == [("post", "pre")]


# ---------------------------------------------------------------------------------------------------------------------
# Summaries of one variant


def test_lr_sensitivity_matches_the_definition():
    init = 10.0
    # Losses 4, 3, 5 at three LRs: E[min(l, init)] - min l = (4 + 3 + 5) / 3 - 3 = 1.
    assert stats.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: 5.0}, init) == pytest.approx(1.0)
    # A diverged run (None or NaN) counts as the loss at init: (4 + 3 + 10) / 3 - 3.
    expected = (4 + 3 + 10) / 3 - 3
    assert stats.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: None}, init) == pytest.approx(expected)
    assert stats.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: math.nan}, init) == pytest.approx(expected)
    assert stats.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: math.inf}, init) == pytest.approx(expected)
    # A loss above init is clipped to init, exactly like a divergence.
    assert stats.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: 12.0}, init) == pytest.approx(expected)
    # Flat across LRs: insensitive.
    assert stats.lr_sensitivity({1e-3: 3.0, 3e-3: 3.0}, init) == 0.0
    # Nothing learnt anywhere: every term is init - init.
    assert stats.lr_sensitivity({1e-3: None, 3e-3: 11.0}, init) == 0.0
    with pytest.raises(ValueError):
        stats.lr_sensitivity({}, init)


def test_sensitivity_over_seeds_uses_only_seeds_with_the_whole_lr_grid():
    lrs = [1e-3, 1e-2]
    per_seed = {0: {1e-3: 4.0, 1e-2: 3.0}, 1: {1e-3: 4.0, 1e-2: 5.0}, 2: {1e-3: 4.0}}  # seed 2 lacks 1e-2
    spread, used, values = stats.sensitivity_over_seeds(per_seed, {0: 10.0, 1: 10.0, 2: 10.0}, lrs)
    assert used == [0, 1] and values == [pytest.approx(0.5), pytest.approx(0.5)]
    # Seed 0: (4 + 3) / 2 - 3 = 0.5; seed 1: (4 + 5) / 2 - 4 = 0.5.
    assert spread.mean == pytest.approx(0.5) and spread.pm == pytest.approx(0.0) and spread.n == 2
    assert stats.sensitivity_over_seeds({2: {1e-3: 4.0}}, {2: 10.0}, lrs) == (None, [], [])
    # A seed without a loss at init cannot be clipped: left out.
    assert stats.sensitivity_over_seeds({0: {1e-3: 4.0, 1e-2: 3.0}}, {}, lrs) == (None, [], [])


def test_largest_stable_lr_and_best_lr():
    per_lr = {
        1e-3: [3.50, 3.52],
        3e-3: [3.40, 3.42],  # best mean 3.41
        1e-2: [3.48, 3.50],  # within 0.1 of the best
        3e-2: [3.60, 3.62],  # stable but 0.2 worse
        1e-1: [3.45, None],  # one seed diverged: never stable, however good the other seed
    }
    assert stats.best_lr(per_lr) == 3e-3
    assert stats.largest_stable_lr(per_lr, tolerance=0.1) == 1e-2
    assert stats.largest_stable_lr(per_lr, tolerance=0.25) == 3e-2
    assert stats.largest_stable_lr(per_lr, tolerance=0.0) == 3e-3
    assert stats.largest_stable_lr({1e-3: [None], 1e-2: [math.nan]}, 0.1) is None
    assert stats.best_lr({1e-3: [None]}) is None
    assert stats.largest_stable_lr({1e-3: [], 1e-2: [3.0]}, 0.1) == 1e-2  # an LR with no finished runs is ignored
    assert stats.best_lr({1e-3: [3.0], 1e-2: [3.0]}) == 1e-3  # ties go to the smaller LR


def test_seed_spread_is_std_from_three_seeds_half_range_for_two_none_for_one():
    three = stats.seed_spread([1.0, 2.0, 3.0])
    assert (three.mean, three.pm, three.n, three.kind) == (2.0, pytest.approx(1.0), 3, "std")
    two = stats.seed_spread([3.0, 3.5])
    assert (two.mean, two.pm, two.kind) == (3.25, 0.25, "half-range")
    one = stats.seed_spread([3.0])
    assert (one.pm, one.kind) == (None, "single seed")
    assert stats.seed_spread([]) is None
    assert two.text() == "3.250 ± 0.250" and one.text() == "3.000 (1 seed)"
    assert "half the min–max range over 2 seeds" in stats.spread_meaning([two])
    assert "std" in stats.spread_meaning([three])


def test_band_aligns_curves_on_step_and_drops_non_finite_values():
    xs, mean, lo, hi = stats.band([[(0, 1.0), (1, 2.0)], [(0, 3.0), (1, math.nan), (2, 5.0)]])
    assert xs == [0, 1, 2] and mean == [2.0, 2.0, 5.0] and lo == [1.0, 2.0, 5.0] and hi == [3.0, 2.0, 5.0]
