"""Published findings a sweep can test, declared in its sweep file, and the verdict the report computes for each.

A sweep file's `findings:` key names the findings it tests (a, b, c, d: `FINDINGS`), which variant of the grid plays
each of the finding's roles, and optionally the tolerance of its "equal" and "no better than" statements in nats
(declared with the rules, before the study runs; without it the report's --tolerance applies and the report says so).
A role is a mapping of grid keys to values (learning rate and seed excluded: they vary inside a variant) that selects
exactly one variant:

    findings:
      a: {rms: {norm: rms}, layer: {norm: layer}, tolerance: 0.05}

spec.py checks a declaration against the sweep before anything runs (`check_declaration` on the grid; `check_settings`
on the resolved configs: each role's variant has the settings its role names, and a finding's roles differ only in
the fields its claim is about). The report reads it back from sweep.yaml and judges each finding (`judge`).

A verdict is computed, never written by hand. Each finding is a conjunction of checks; a check supports the claim
(True), contradicts it (False) or cannot decide (None). The verdict is *reproduced* when every check supports the
claim, *not reproduced* when one contradicts it, and otherwise *inconclusive*; an inconclusive check states its power
line (what the study could have detected, and what it observed). Findings (c) and (d) have a condition, the regime
their claim is about; until a study reaches it, their other checks are shown but not judged.

The design is paired (stats.py): a seed fixes the initial weights and the batch order of every variant, so each
comparison is over per-seed differences, on the seeds both roles have (n = the pairs; unpaired seeds are named).
δ is the tolerance; "lower" is a paired 95% t-interval entirely below 0; "equivalent" is a TOST at α = 0.05 (the
90% interval strictly inside ±δ); a sign test is exact and one-sided at α = 0.05 (at least 5 untied seeds, all one
way). A run *failed* when it diverged or stalled (sat on the unigram-entropy plateau: it learnt no context). The
rules, fixed before any paired study ran (their words are `Finding.rule`, printed in every report):

Where roles ran different learning rates (a sweep's `exclude`), every rule looks only at the LRs both ran.

(a) RMSNorm ≈ LayerNorm in pre-norm. Per seed, rms's final validation loss minus layer's, each at its own best LR
    (lowest mean over seeds among LRs where no seed diverged; without an LR axis, the study's one LR). TOST
    equivalence within ±δ supports; a 95% interval entirely outside ±δ contradicts; otherwise, with fewer than 2
    pairs, or when a role failed in a seed at its best LR, cannot decide. Why each one's best LR and not one shared
    LR: the claim is about tuned variants, and the pairing stays valid when the two best LRs differ (the seeds still
    share initial weights and batches; only the variance reduction weakens); where they coincide the comparison is
    at a shared LR. A study that wants the tightest pairing and no winner's curse (the best LR picked on the runs it
    is judged on) fixes one LR chosen on earlier, independent runs, as the CPU study does.
(b) Post-norm's largest stable LR below pre-norm's, and warm-up helps. Per seed, the largest stable LR (that seed's
    runs alone: the largest LR where it trained with a final loss within δ of its best; none ranks below every LR),
    over seeds with a finished run at every LR in both roles. (1) post below pre (and post_warmup below pre_warmup
    when declared): a sign test with post lower in significantly many seeds supports, higher contradicts, otherwise
    cannot decide. (2) warm-up helps post-norm: post_warmup's stable LR above post's in significantly many seeds
    (sign test), or its loss at its best LR lower (paired interval below 0), supports; significantly many seeds
    lower, or no seed higher with the losses equivalent within δ (TOST) or higher, contradicts; otherwise cannot
    decide.
(c) QK-norm bounds the attention logit and lowers LR sensitivity. Condition: plain's max attention logit at the
    highest LR above 1e4 in EVERY seed. Then (1) qk_norm's max attention logit at that LR below 1e4 in every seed
    supports, at or above it in any seed contradicts; (2) per seed, qk_norm's LR sensitivity minus plain's (seeds
    with the whole LR grid in both): an interval below 0 supports (unless qk_norm's best loss is higher than plain's,
    paired interval above 0: low sensitivity from being bad everywhere cannot decide); an interval above 0, or
    equivalence within δ without being lower, contradicts; otherwise cannot decide.
(d) No normalization fails where DyT and RMSNorm train. Condition: dyt and rms trained in every seed at rms's best
    LR (DyT trains at the RMSNorm baseline's LR). Then at the highest LR where dyt and rms trained in every seed: if
    none trained in every seed, none's final loss minus each partner's, paired intervals above 0 against both,
    supports; equivalence within δ or an interval below 0 against either contradicts. If none failed in some seeds,
    a sign test per partner with a failed run ranked worst, none worse in significantly many seeds against both,
    supports. Otherwise cannot decide.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from train.arguments import shown
from train.run_directory import RunStatus
from train.sweep import stats
from train.sweep.directory import SweepDirectoryError, fmt_value
from train.sweep.stats import Paired, Spread
from train.sweep.study import Study, VariantResult

LOGIT_THRESHOLD = 1e4  # Wortsman et al. 2023: runs whose max attention logit grows past ~1e4 diverge
FAILED = (RunStatus.DIVERGED.value, RunStatus.STALLED.value)  # a run that did not train: no usable result at its LR
TOLERANCE = "tolerance"  # the key beside the roles of a declared finding


class FindingsError(ValueError):
    """A bad `findings:` declaration; the message is one line (spec.py and the report prefix where it came from)."""


class Verdict(str, enum.Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    """One part of a finding's claim: what was measured and whether it supports the claim (True), contradicts it
    (False) or cannot decide (None). An undecided check's text carries its power line."""

    text: str
    supports: bool | None


def combine(checks: Sequence[Check]) -> Verdict:
    if checks and all(c.supports is True for c in checks):
        return Verdict.REPRODUCED
    if any(c.supports is False for c in checks):
        return Verdict.NOT_REPRODUCED
    return Verdict.INCONCLUSIVE


def gated(condition: Check, checks: Sequence[Check]) -> list[Check]:
    """A finding whose claim is about a regime: its checks count only once the condition holds; until then they are
    shown, marked, and decide nothing."""
    if condition.supports is True:
        return [condition, *checks]
    return [condition, *(Check(f"{c.text} (not judged: the condition was not met)", None) for c in checks)]


# ---------------------------------------------------------------------------------------------------------------------
# What the rules read: each role's runs, seed by seed


@dataclass(frozen=True)
class SeedRun:
    """One finished run of a role, as the rules read it."""

    loss: float | None  # final validation loss (a stalled run has one; a diverged run has none)
    failed: bool  # diverged or stalled: it did not train
    logit: float | None  # summary.json max_attn_logit


@dataclass(frozen=True)
class AtLR:
    """A role's finished runs at one learning rate (every run, without an LR axis), by seed."""

    seeds: Mapping[Any, SeedRun]

    @property
    def runs(self) -> int:
        return len(self.seeds)

    @property
    def failed(self) -> list[Any]:
        return [seed for seed, run in self.seeds.items() if run.failed]

    @property
    def trained(self) -> bool:
        """Every seed trained (none failed), and there is at least one."""
        return self.runs > 0 and not self.failed

    def seed_losses(self) -> dict[Any, float | None]:
        """Seed -> final loss, stalled runs included (trained-but-bad): what the report's comparisons pair."""
        return {seed: run.loss for seed, run in self.seeds.items()}

    def losses(self) -> dict[Any, float | None]:
        """Seed -> final loss of the runs that trained (None for one that failed): what the rules pair."""
        return {seed: None if run.failed else run.loss for seed, run in self.seeds.items()}

    def logits(self) -> dict[Any, float | None]:
        return {seed: run.logit for seed, run in self.seeds.items()}

    def loss_spread(self) -> Spread | None:
        return stats.seed_spread([x for x in self.losses().values() if stats.finite(x)])


@dataclass(frozen=True)
class Evidence:
    """One role's variant, as the verdict rules see it."""

    variant: str
    best_lr: float | None  # `VariantResult.best_lr`; None without an LR axis (or where every LR diverged)
    stable_lr: float | None  # largest stable LR over seeds (the results table's), for the text
    at_lr: Mapping[float | None, AtLR]  # key None: every run, when the grid has no LR axis
    sensitivity: Mapping[Any, float] = field(default_factory=dict)  # per seed with the whole LR grid

    @property
    def at_best(self) -> AtLR | None:
        return self.at_lr.get(self.best_lr)


def lr_text(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:g}"


def values_text(values: Mapping[Any, float | None], fmt: str = ".3g") -> str:
    """'2.4e+04, 1.3e+04 (seeds 0, 1)': per-seed values in seed order, 'failed' where there is none."""
    seeds = sorted(values, key=str)
    shown = ", ".join("failed" if not stats.finite(values[s]) else format(values[s], fmt) for s in seeds)
    return f"{shown} (seeds {', '.join(map(str, seeds))})"


def difference_text(name: str, p: Paired, labels: tuple[str, str]) -> str:
    """'rms − layer: +0.013 ± 0.266 (95% t-interval, 3 paired seeds); seed(s) 4 only in layer (left out)'."""
    unpaired = p.unpaired_text(*labels)
    return f"{name}: {p.text()}" + (f"; {unpaired}" if unpaired else "")


def undecided(text: str, p: Paired) -> Check:
    """A check the numbers cannot decide, with its power line."""
    return Check(f"{text}: not resolved; {p.power_line()}", None)


def shared_lrs(*roles: Evidence) -> list[float]:
    """The learning rates every role ran at (a sweep's `exclude` may give roles different grids)."""
    return sorted(set.intersection(*({lr for lr in e.at_lr if lr is not None} for e in roles)))


def shared_best(*roles: Evidence) -> list[tuple[float | None, AtLR | None]]:
    """Each role's best LR (stats.best_lr: lowest mean final loss where no seed diverged) among the LRs all the
    roles ran, so that no role is judged at an LR the others never tried, and its runs there. Without an LR axis:
    (None, every run)."""
    if all(set(e.at_lr) == {None} for e in roles):
        return [(None, e.at_lr[None]) for e in roles]
    lrs = shared_lrs(*roles)
    out = []
    for e in roles:
        best = stats.best_lr({lr: list(e.at_lr[lr].seed_losses().values()) for lr in lrs})
        out.append((best, e.at_lr.get(best)))
    return out


def losses_at(at: AtLR | None) -> dict[Any, float | None]:
    return at.losses() if at is not None else {}


# ---------------------------------------------------------------------------------------------------------------------
# The rules, one per finding: evidence by role -> checks


def rule_a(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    (lr_a, a), (lr_b, b) = shared_best(ev["rms"], ev["layer"])
    where = ""
    if lrs and lr_a == lr_b:
        where = f" at their shared best LR ({lr_text(lr_a)})"
    elif lrs:
        where = f" at their best LRs ({lr_text(lr_a)}, {lr_text(lr_b)})"
    if a is None or b is None:
        return [Check(f"final val loss{where}: a role has no result at a best LR, nothing to compare", None)]
    failed = [
        f"{name} in seed(s) {', '.join(map(str, x.failed))}" for name, x in (("rms", a), ("layer", b)) if x.failed
    ]
    p = stats.pair(a.losses(), b.losses())
    text = difference_text(f"final val loss{where}, rms − layer", p, ("rms", "layer"))
    if failed:
        return [Check(f"{text}; failed (diverged or stalled) at its best LR: {'; '.join(failed)}", None)]
    if p.equivalent(margin):
        return [Check(f"{text}: equivalent within ±{margin:g} nats (TOST p = {p.tost_p(margin):.3g})", True)]
    if p.apart(margin):
        return [Check(f"{text}: the difference exceeds ±{margin:g} nats", False)]
    if p.n < 2:
        return [undecided(text, p)]
    ci = p.interval(1 - 2 * stats.ALPHA)
    reach = max(abs(ci[0]), abs(ci[1]))
    return [undecided(f"{text}; equivalence would need a tolerance of at least {reach:.3f} nats", p)]


def sign_counts(a: Mapping[Any, float | None], b: Mapping[Any, float | None]) -> tuple[int, int, int, list[Any]]:
    """Per seed present in both, a's largest stable LR vs b's (None = stable nowhere, below every LR): (a lower, a
    higher, tied, seeds)."""
    seeds = sorted(set(a) & set(b), key=str)
    rank = lambda lr: -math.inf if lr is None else lr
    lower = sum(rank(a[s]) < rank(b[s]) for s in seeds)
    higher = sum(rank(a[s]) > rank(b[s]) for s in seeds)
    return lower, higher, len(seeds) - lower - higher, seeds


def sign_text(lower: int, higher: int, tied: int, what: str) -> str:
    return f"{what} lower in {lower}, higher in {higher}, tied in {tied} of {lower + higher + tied} paired seeds"


def sign_power_line(lower: int, higher: int) -> str:
    need = stats.sign_test_needs()
    p = min(stats.sign_test(lower, higher), stats.sign_test(higher, lower))
    return f"sign test p = {p:.3g}; it can reach p ≤ {stats.ALPHA:g} only with at least {need} untied seeds all one way"


def seed_stable_lrs(e: Evidence, lrs: Sequence[float], margin: float) -> dict[Any, float | None]:
    """Seed -> its largest stable LR among `lrs` over its own runs (stats.largest_stable_lr on one seed), for the
    seeds with a usable run at every one of `lrs`."""
    seeds = set.intersection(*(set(e.at_lr[lr].seeds) for lr in lrs)) if lrs else set()
    out = {}
    for seed in sorted(seeds, key=str):
        runs = {lr: e.at_lr[lr].seeds[seed] for lr in lrs}
        if all(run.failed or run.loss is not None for run in runs.values()):
            out[seed] = stats.largest_stable_lr({lr: [None if r.failed else r.loss] for lr, r in runs.items()}, margin)
    return out


def stable_below(low: Evidence, high: Evidence, low_name: str, high_name: str, margin: float) -> Check:
    """Per seed, `low`'s largest stable LR below `high`'s over the LRs both ran, by a sign test."""
    lrs = shared_lrs(low, high)
    a, b = seed_stable_lrs(low, lrs, margin), seed_stable_lrs(high, lrs, margin)
    lower, higher, tied, _ = sign_counts(a, b)
    text = (
        f"largest stable LR per seed, {low_name} {values_text(a, 'g')} vs {high_name} {values_text(b, 'g')}: "
        f"{sign_text(lower, higher, tied, low_name)}"
    )
    if stats.sign_test(lower, higher) <= stats.ALPHA:
        return Check(f"{text} (sign test p = {stats.sign_test(lower, higher):.3g})", True)
    if stats.sign_test(higher, lower) <= stats.ALPHA:
        return Check(f"{text} (sign test p = {stats.sign_test(higher, lower):.3g})", False)
    return Check(f"{text}: not resolved; {sign_power_line(lower, higher)}", None)


def warmup_helps(post: Evidence, warm: Evidence, margin: float) -> Check:
    """Warm-up changes post-norm's outcome for the better: a larger stable LR in significantly many seeds, or a lower
    loss at its best LR."""
    lrs = shared_lrs(post, warm)
    lower, higher, tied, _ = sign_counts(seed_stable_lrs(warm, lrs, margin), seed_stable_lrs(post, lrs, margin))
    text = f"post-norm with vs without the long warm-up: largest stable LR {sign_text(lower, higher, tied, 'with')}"
    (_, at_warm), (_, at_post) = shared_best(warm, post)
    p = stats.pair(losses_at(at_warm), losses_at(at_post))
    text += f"; {difference_text('final val loss at each best LR, with − without', p, ('with', 'without'))}"
    if stats.sign_test(higher, lower) <= stats.ALPHA or p.sign() == -1:
        return Check(text, True)
    if stats.sign_test(lower, higher) <= stats.ALPHA or (higher == 0 and (p.equivalent(margin) or p.sign() == 1)):
        return Check(text, False)
    return Check(f"{text}: not resolved; {sign_power_line(higher, lower)}; loss {p.power_line()}", None)


def rule_b(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    checks = [stable_below(ev["post"], ev["pre"], "post", "pre", margin)]
    if "pre_warmup" in ev:
        checks.append(stable_below(ev["post_warmup"], ev["pre_warmup"], "post_warmup", "pre_warmup", margin))
    return [*checks, warmup_helps(ev["post"], ev["post_warmup"], margin)]


def logit_regime(plain: Evidence, qk: Evidence) -> tuple[Check, float | None]:
    """(c)'s condition: plain's max attention logit above the threshold in every seed at the highest LR both ran."""
    lrs = shared_lrs(plain, qk)
    top = max(lrs) if lrs else None
    at = plain.at_lr.get(top)
    if at is None or not at.runs:
        return Check(f"plain has no finished run at the highest LR ({lr_text(top)})", None), top
    logits = at.logits()
    text = f"plain's max attention logit at lr {top:g}: {values_text(logits)}"
    below = [s for s, v in logits.items() if not (stats.finite(v) and v > LOGIT_THRESHOLD)]
    if below:
        return Check(
            f"{text}: not above {LOGIT_THRESHOLD:g} in seed(s) {', '.join(map(str, below))}, so the claim's "
            "regime was not reached",
            None,
        ), top
    return Check(f"{text}: above {LOGIT_THRESHOLD:g} in every seed, the claim's regime", True), top


def logit_bounded(qk: Evidence, top: float | None) -> Check:
    at = qk.at_lr.get(top)
    if at is None or not at.runs:
        return Check(f"qk_norm has no finished run at lr {lr_text(top)}", None)
    logits = at.logits()
    text = f"qk_norm's max attention logit at lr {top:g}: {values_text(logits)}"
    if any(stats.finite(v) and v >= LOGIT_THRESHOLD for v in logits.values()):
        return Check(f"{text}: at or above {LOGIT_THRESHOLD:g} in a seed", False)
    if all(stats.finite(v) for v in logits.values()):
        return Check(f"{text}: below {LOGIT_THRESHOLD:g} in every seed", True)
    return Check(f"{text}: not recorded in every seed", None)


def sensitivity_lower(plain: Evidence, qk: Evidence, margin: float) -> Check:
    p = stats.pair(qk.sensitivity, plain.sensitivity)
    text = difference_text("LR sensitivity per seed, qk_norm − plain", p, ("qk_norm", "plain"))
    if p.sign() == -1:
        (_, at_qk), (_, at_plain) = shared_best(qk, plain)
        best = stats.pair(losses_at(at_qk), losses_at(at_plain))
        if best.sign() == 1:
            return Check(
                f"{text}, but qk_norm's best loss is higher ({best.text()}): uniformly worse, not robust", None
            )
        return Check(text, True)
    if p.sign() == 1 or p.equivalent(margin):
        return Check(f"{text}: {'higher' if p.sign() == 1 else f'equivalent within ±{margin:g} nats'}", False)
    return undecided(text, p)


def rule_c(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    plain, qk = ev["plain"], ev["qk_norm"]
    condition, top = logit_regime(plain, qk)
    return gated(condition, [logit_bounded(qk, top), sensitivity_lower(plain, qk, margin)])


def dyt_trains(dyt: Evidence, rms: Evidence) -> Check:
    """(d)'s condition: DyT trains, in every seed, at the RMSNorm baseline's best LR (among the LRs both ran)."""
    _, (best, at_r) = shared_best(dyt, rms)
    at_d = dyt.at_lr.get(best)
    where = f"at rms's best LR ({lr_text(best)})"
    if at_d is None or at_r is None or not at_d.runs:
        return Check(f"dyt has no finished run {where}: the claim's condition never arose", None)
    if at_d.failed or at_r.failed:
        failed = "; ".join(
            f"{n} failed in seed(s) {', '.join(map(str, x.failed))}"
            for n, x in (("dyt", at_d), ("rms", at_r))
            if x.failed
        )
        return Check(f"{where}: {failed}: the claim's condition (DyT training where RMSNorm does) never arose", None)
    return Check(f"dyt and rms trained in every seed {where} ({at_d.runs} and {at_r.runs} seeds)", True)


def none_worse(none: AtLR, partner: AtLR, name: str, margin: float) -> tuple[bool | None, str]:
    """Whether none is worse than `partner` (which trained in every seed) at one LR: a paired t-interval when none
    trained in every seed, else a sign test with a failed run ranked worst."""
    if not none.failed:
        p = stats.pair(none.losses(), partner.losses())
        text = difference_text(f"none − {name}", p, ("none", name))
        if p.sign() == 1:
            return True, text
        if p.sign() == -1 or p.equivalent(margin):
            return False, f"{text}: {'lower' if p.sign() == -1 else f'equivalent within ±{margin:g} nats'}"
        return None, f"{text}: not resolved; {p.power_line()}"
    mine, theirs = none.losses(), partner.losses()
    seeds = [s for s in mine if s in theirs]
    worse = sum(not stats.finite(mine[s]) or mine[s] > theirs[s] for s in seeds)
    better = sum(stats.finite(mine[s]) and mine[s] < theirs[s] for s in seeds)
    p = stats.sign_test(worse, better)
    text = f"none worse than {name} in {worse} of {len(seeds)} paired seeds, a failed run ranked worst"
    if p <= stats.ALPHA:
        return True, f"{text} (sign test p = {p:.3g})"
    return None, f"{text}: not resolved; {sign_power_line(worse, better)}"


def rule_d(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    none, dyt, rms = ev["none"], ev["dyt"], ev["rms"]
    condition = dyt_trains(dyt, rms)
    both = [lr for lr in lrs if lr in dyt.at_lr and lr in rms.at_lr and dyt.at_lr[lr].trained and rms.at_lr[lr].trained]
    if not both:
        return gated(condition, [Check("dyt and rms did not both train in every seed at any LR of the grid", None)])
    lr = max(both)
    at = none.at_lr.get(lr)
    if at is None or not at.runs:
        return gated(
            condition, [Check(f"at lr {lr:g} (highest where dyt and rms train): none has no finished run", None)]
        )
    head = f"at lr {lr:g}, the highest where dyt and rms trained in every seed: none failed in {len(at.failed)} of "
    head += f"{at.runs} seeds"
    verdicts = [none_worse(at, x.at_lr[lr], name, margin) for name, x in (("dyt", dyt), ("rms", rms))]
    text = f"{head}; " + "; ".join(t for _, t in verdicts)
    outcome = [v for v, _ in verdicts]
    supports = True if all(v is True for v in outcome) else (False if False in outcome else None)
    return gated(condition, [Check(text, supports)])


# ---------------------------------------------------------------------------------------------------------------------
# The findings


@dataclass(frozen=True)
class Role:
    name: str
    settings: Mapping[str, Any]  # config field -> the value the role's variant must have
    optional: bool = False


@dataclass(frozen=True)
class Finding:
    key: str
    title: str
    claim: str
    citation: str
    roles: tuple[Role, ...]
    varies: tuple[str, ...]  # the config fields a finding's roles may differ in
    rule: str  # the verdict rule in words; {margin} and {threshold} are filled in
    judge: Callable[[Mapping[str, Evidence], Sequence[float], float], list[Check]]
    needs_lr_axis: bool = True
    relation: Callable[[Mapping[str, Mapping[str, Any]]], str | None] | None = None  # a check across roles' settings

    def role_names(self) -> str:
        need = [r.name for r in self.roles if not r.optional]
        optional = [r.name for r in self.roles if r.optional]
        return ", ".join(need) + (f" (optional: {', '.join(optional)})" if optional else "")


def warmup_relation(settings: Mapping[str, Mapping[str, Any]]) -> str | None:
    """(b): pre and post share a warm-up, the *_warmup roles share a longer one."""
    w = {role: s["warmup_steps"] for role, s in settings.items()}
    if w["pre"] != w["post"]:
        return f"roles pre and post must share a warm-up (warmup_steps {w['pre']} vs {w['post']})"
    if w["post_warmup"] <= w["post"]:
        return f"role post_warmup must warm up longer than post (warmup_steps {w['post_warmup']} vs {w['post']})"
    if "pre_warmup" in w and w["pre_warmup"] != w["post_warmup"]:
        return f"roles pre_warmup and post_warmup must share a warm-up ({w['pre_warmup']} vs {w['post_warmup']})"
    return None


PRE_RMS = {"norm_type": "rms", "norm_placement": "pre"}
FINDINGS: dict[str, Finding] = {
    f.key: f
    for f in (
        Finding(
            "a",
            "RMSNorm ≈ LayerNorm in pre-norm blocks",
            "In pre-norm blocks RMSNorm reaches the same loss as LayerNorm.",
            "Zhang & Sennrich 2019, *Root Mean Square Layer Normalization*; Team OLMo 2024, *2 OLMo 2 Furious*",
            (Role("rms", PRE_RMS), Role("layer", {"norm_type": "layer", "norm_placement": "pre"})),
            ("norm_type",),
            "per seed, rms's final val loss minus layer's, each at its own best LR among the LRs both ran (without "
            "an LR axis, the study's one LR). Equivalent within ±{margin:g} nats by TOST (the 90% t-interval "
            "strictly inside) supports; a 95% t-interval entirely outside ±{margin:g} contradicts; otherwise, with "
            "fewer than 2 paired seeds, or when a role failed (diverged or stalled) in a seed at its best LR, cannot "
            "decide.",
            rule_a,
            needs_lr_axis=False,
        ),
        Finding(
            "b",
            "Post-norm needs warm-up; its largest stable LR is below pre-norm's",
            "Post-norm needs learning-rate warm-up, and its largest stable learning rate is below pre-norm's.",
            "Xiong et al. 2020, *On Layer Normalization in the Transformer Architecture*",
            (
                Role("pre", {"norm_placement": "pre"}),
                Role("post", {"norm_placement": "post"}),
                Role("post_warmup", {"norm_placement": "post"}),
                Role("pre_warmup", {"norm_placement": "pre"}, optional=True),
            ),
            ("norm_placement", "warmup_steps"),
            "per seed, the largest stable LR over the LRs both compared roles ran (the largest LR where that seed "
            "trained, neither diverged nor stalled, with a final loss within {margin:g} nats of its best; none ranks "
            "below every LR). (1) post vs pre, and "
            "post_warmup vs pre_warmup when declared: post lower in significantly many seeds (exact one-sided sign "
            "test, ties left out, p ≤ 0.05) supports, higher contradicts, otherwise cannot decide. (2) warm-up helps "
            "post-norm: post_warmup higher than post in significantly many seeds, or its final loss at its best LR "
            "lower (paired 95% t-interval below 0), supports; lower in significantly many seeds, or higher in none "
            "with the losses equivalent within ±{margin:g} nats (TOST) or higher, contradicts; otherwise cannot "
            "decide.",
            rule_b,
            relation=warmup_relation,
        ),
        Finding(
            "c",
            "QK-norm bounds attention logits and lowers LR sensitivity",
            "Where plain pre-norm's max attention logit passes 1e4 at high learning rates, QK-norm keeps it bounded "
            "and lowers learning-rate sensitivity.",
            "Wortsman et al. 2023, *Small-scale proxies for large-scale Transformer training instabilities*",
            (Role("plain", {**PRE_RMS, "qk_norm": False}), Role("qk_norm", {**PRE_RMS, "qk_norm": True})),
            ("qk_norm",),
            "judged only when plain's max attention logit at the highest LR (both ran) is above {threshold:g} in every "
            "seed (the claim's regime). Then (1) qk_norm's max attention logit there below {threshold:g} in every "
            "seed supports, at or above it in any seed contradicts; (2) per seed, qk_norm's LR sensitivity minus "
            "plain's: a paired 95% t-interval below 0 supports (unless qk_norm's final loss at its best LR is higher, "
            "interval above 0: low sensitivity from being bad everywhere cannot decide); above 0, or equivalent "
            "within ±{margin:g} nats (TOST) without being lower, contradicts; otherwise cannot decide.",
            rule_c,
        ),
        Finding(
            "d",
            "No normalization fails where DyT and RMSNorm train",
            "Without normalization, training fails or degrades at learning rates where DyT and RMSNorm train.",
            "Zhu et al. 2025, *Transformers without Normalization*",
            (Role("none", {"norm_type": "none"}), Role("dyt", {"norm_type": "dyt"}), Role("rms", {"norm_type": "rms"})),
            ("norm_type",),
            "judged only when dyt and rms trained (neither diverged nor stalled) in every seed at rms's best LR "
            "among the LRs both ran: DyT trains at the RMSNorm baseline's LR. Then at the highest LR where dyt and "
            "rms trained in every seed: if none trained in every seed, its final loss minus dyt's and minus rms's, "
            "paired 95% t-intervals above 0 against both, supports, and equivalent within ±{margin:g} nats (TOST) "
            "or below 0 against either contradicts; if none failed in some seeds, an exact sign test per partner "
            "with a failed run ranked worst, none worse in significantly many seeds (p ≤ 0.05) against both, "
            "supports. Otherwise cannot decide.",
            rule_d,
        ),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# The declaration: checked against the grid (spec.py, and the report on sweep.yaml) and the resolved settings (spec.py)


def check_declaration(
    raw: Any,
    grid: Mapping[str, Sequence[Any]],
    variant_keys: Sequence[str],
    runs: Sequence[Mapping[str, Any]],
    lr_axis: bool,
) -> dict[str, dict[str, Any]]:
    """finding -> role -> selector ({grid key: value, as the grid spells it}), in FINDINGS and role order, plus the
    finding's `tolerance` (nats) where it declares one; {} for no declaration. `variant_keys` are the grid keys other
    than learning rate and seed; `runs` the grid values of every run (after exclude). Raises FindingsError (one
    line)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise FindingsError(
            f"'findings' must be a mapping of finding ({', '.join(FINDINGS)}) to {{role: {{key: value}}, "
            "tolerance: nats}}"
        )
    out = {}
    for key, roles in raw.items():
        finding = FINDINGS.get(str(key))
        if finding is None:
            raise FindingsError(f"unknown finding {shown(key)} under 'findings'; valid: {', '.join(FINDINGS)}")
        if finding.needs_lr_axis and not lr_axis:
            raise FindingsError(f"finding {key} needs a learning_rate axis in the grid")
        out[finding.key] = check_roles(finding, roles, grid, variant_keys, runs)
    return {key: out[key] for key in FINDINGS if key in out}


def check_roles(
    finding: Finding,
    roles: Any,
    grid: Mapping[str, Sequence[Any]],
    variant_keys: Sequence[str],
    runs: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    where = f"findings.{finding.key}"
    if not isinstance(roles, dict):
        raise FindingsError(f"{where} must be a mapping of role ({finding.role_names()}) to {{grid key: value}}")
    known = [r.name for r in finding.roles]
    for name in roles:
        if name not in known and name != TOLERANCE:
            raise FindingsError(f"{where} has no role {shown(name)}; roles: {finding.role_names()} (and {TOLERANCE})")
    for role in finding.roles:
        if not role.optional and role.name not in roles:
            raise FindingsError(f"{where} lacks role '{role.name}'; roles: {finding.role_names()}")
    tolerance = check_tolerance(f"{where}.{TOLERANCE}", roles[TOLERANCE]) if TOLERANCE in roles else None
    selectors: dict[str, Any] = {}
    chosen: dict[tuple[str, ...], str] = {}
    for name in (n for n in known if n in roles):
        selectors[name] = check_selector(f"{where}.{name}", roles[name], grid, variant_keys)
        variant = selected_variant(f"{where}.{name}", selectors[name], runs, variant_keys)
        if variant in chosen:
            raise FindingsError(f"{where}: roles {chosen[variant]} and {name} select the same variant")
        chosen[variant] = name
    if TOLERANCE in roles:
        selectors[TOLERANCE] = tolerance
    return selectors


def check_tolerance(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise FindingsError(f"{where} must be a number of nats > 0, got {shown(value)}")
    return float(value)


def role_selectors(declared: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A declared finding's roles only (without its tolerance)."""
    return {role: selector for role, selector in declared.items() if role != TOLERANCE}


def check_selector(where: str, selector: Any, grid: Mapping[str, Sequence[Any]], variant_keys: Sequence[str]) -> dict:
    if not isinstance(selector, dict) or not selector:
        raise FindingsError(f"{where} must be a mapping of grid key: value, e.g. {{{next(iter(grid))}: ...}}")
    out = {}
    for key, value in selector.items():
        if key not in grid:
            raise FindingsError(f"{where} names '{key}', which is not a grid key; grid keys: {', '.join(grid)}")
        if key not in variant_keys:
            raise FindingsError(f"{where} names '{key}': a role is a variant, and learning rate and seed vary in it")
        match = [v for v in grid[key] if fmt_value(v) == fmt_value(value)]
        if not match:
            values = ", ".join(fmt_value(v) for v in grid[key])
            raise FindingsError(f"{where}: {key}={fmt_value(value)} is not among grid.{key} ({values})")
        out[key] = match[0]
    return out


def matches(selector: Mapping[str, Any], run: Mapping[str, Any]) -> bool:
    return all(fmt_value(run.get(k)) == fmt_value(v) for k, v in selector.items())


def selected_variant(
    where: str, selector: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], variant_keys: Sequence[str]
) -> tuple[str, ...]:
    """The one variant (its values of `variant_keys`) whose runs the selector picks."""
    variants = {tuple(fmt_value(run.get(k)) for k in variant_keys) for run in runs if matches(selector, run)}
    if not variants:
        raise FindingsError(f"{where} selects no run of the grid ('exclude' removes them all)")
    if len(variants) > 1:
        free = ", ".join(k for k in variant_keys if k not in selector)
        raise FindingsError(f"{where} selects {len(variants)} variants; name a value for each of: {free}")
    return variants.pop()


def check_settings(settings: Mapping[str, Mapping[str, Mapping[str, Any]]], ignored: frozenset[str]) -> None:
    """finding -> role -> the resolved config of the role's variant: each role has the settings it names, roles
    differ only in the fields their finding is about (`ignored` fields aside), and the finding's relation holds."""
    for key, roles in settings.items():
        finding, where = FINDINGS[key], f"findings.{key}"
        for role in (r for r in finding.roles if r.name in roles):
            for name, wanted in role.settings.items():
                got = roles[role.name].get(name)
                if got != wanted:
                    raise FindingsError(
                        f"{where}.{role.name} selects a variant with {name}={fmt_value(got)}; role '{role.name}' "
                        f"needs {name}={fmt_value(wanted)}"
                    )
        first, *others = roles
        for other in others:
            a, b = roles[first], roles[other]
            differ = [f for f in {**a, **b} if f not in ignored and f not in finding.varies and a.get(f) != b.get(f)]
            if differ:
                f = differ[0]
                raise FindingsError(
                    f"{where}: roles {first} and {other} also differ in {f} ({fmt_value(a.get(f))} vs "
                    f"{fmt_value(b.get(f))}); finding {key}'s roles may differ only in {', '.join(finding.varies)}"
                )
        if finding.relation is not None and (why := finding.relation(roles)):
            raise FindingsError(f"{where}: {why}")


# ---------------------------------------------------------------------------------------------------------------------
# Judging a study


@dataclass(frozen=True)
class Judgement:
    finding: Finding
    variants: dict[str, str]  # role -> variant label
    checks: list[Check]
    tolerance: float  # δ in nats
    declared_tolerance: bool  # δ came from the sweep file (else from the report's --tolerance)

    @property
    def verdict(self) -> Verdict:
        return combine(self.checks)


def declared(study: Study) -> dict[str, dict[str, Any]]:
    """The findings sweep.yaml declares, checked against its grid; {} when none. Raises SweepDirectoryError."""
    raw = study.record.extra.get("findings") if study.record is not None else None
    grid = {k: study.grid_values(k) for k in study.grid_keys}
    try:
        return check_declaration(raw, grid, study.variant_keys, [r.grid for r in study.runs], bool(study.lr_key))
    except FindingsError as err:
        raise SweepDirectoryError(f"'{study.out_dir}' sweep.yaml: {err}") from None


def evidence(study: Study, variant: str, result: VariantResult) -> Evidence:
    """One variant's finished runs as the rules read them: by LR and seed, with the per-seed LR sensitivity."""
    frame = study.frame[study.frame.finished & (study.frame.variant == variant)]
    groups = frame.groupby("lr", sort=True) if study.lr_key else [(None, frame)]
    at_lr: dict[float | None, AtLR] = {}
    for lr, rows in groups:
        seeds = {}
        for row in rows.itertuples():
            loss = row.loss if row.in_val_stats and not math.isnan(row.loss) else None
            logit = None if math.isnan(row.max_attn_logit) else float(row.max_attn_logit)
            seeds[row.seed] = SeedRun(loss, row.status in FAILED, logit)
        at_lr[None if lr is None else float(lr)] = AtLR(seeds)
    sensitivity = dict(zip(result.sensitivity_seeds, result.sensitivity_values, strict=True))
    return Evidence(variant, result.best_lr, result.stable_lr, at_lr, sensitivity)


def judge(study: Study, results: Mapping[str, VariantResult], tolerance: float) -> list[Judgement]:
    """Every declared finding, with its checks computed from the study; `tolerance` (nats) applies to the findings
    that declare none."""
    out = []
    for key, declaration in declared(study).items():
        finding = FINDINGS[key]
        margin = declaration.get(TOLERANCE, tolerance)
        variants = {
            role: study.variant(next(r for r in study.runs if matches(selector, r.grid)))
            for role, selector in role_selectors(declaration).items()
        }
        ev = {role: evidence(study, v, results[v]) for role, v in variants.items()}
        checks = finding.judge(ev, study.lrs, margin)
        out.append(Judgement(finding, variants, checks, margin, TOLERANCE in declaration))
    return out
