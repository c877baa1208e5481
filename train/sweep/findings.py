"""Published findings a sweep can test, declared in its sweep file, and the verdict the report computes for each.

A sweep file's `findings:` key names the findings it tests (a, b, c, d: `FINDINGS`) and, for each, which variant of
the grid plays each of the finding's roles. A role is a mapping of grid keys to values (learning rate and seed
excluded: they vary inside a variant) that selects exactly one variant:

    findings:
      a: {rms: {norm: rms}, layer: {norm: layer}}

spec.py checks a declaration against the sweep before anything runs (`check_declaration` on the grid; `check_settings`
on the resolved configs: each role's variant has the settings its role names, and a finding's roles differ only in
the fields its claim is about). The report reads it back from sweep.yaml and judges each finding (`judge`).

A verdict is computed, never written by hand. Each finding is a conjunction of checks; a check supports the claim
(True), contradicts it (False) or cannot decide (None) by the rules of stats.py: mean ± seed spread, two values
distinguishable only when their intervals do not overlap, `stats.equal_within` for "the same". The verdict is
*reproduced* when every check supports the claim, *not reproduced* when one contradicts it, and otherwise
*inconclusive at this seed count*. Each rule is stated in words (`Finding.rule`) beside the code that applies it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from train.run_directory import RunStatus
from train.sweep import stats
from train.sweep.directory import SweepDirectoryError, fmt_value
from train.sweep.stats import Spread
from train.sweep.study import Study, VariantResult

LOGIT_THRESHOLD = 1e4  # Wortsman et al. 2023: runs whose max attention logit grows past ~1e4 diverge
FAILED = (RunStatus.DIVERGED.value, RunStatus.STALLED.value)  # a run that did not train: no usable result at its LR


class FindingsError(ValueError):
    """A bad `findings:` declaration; the message is one line (spec.py and the report prefix where it came from)."""


class Verdict(str, enum.Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    INCONCLUSIVE = "inconclusive at this seed count"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    """One part of a finding's claim: what was measured (numbers with their spread) and whether it supports the claim
    (True), contradicts it (False) or cannot decide (None)."""

    text: str
    supports: bool | None


def combine(checks: Sequence[Check]) -> Verdict:
    if checks and all(c.supports is True for c in checks):
        return Verdict.REPRODUCED
    if any(c.supports is False for c in checks):
        return Verdict.NOT_REPRODUCED
    return Verdict.INCONCLUSIVE


# ---------------------------------------------------------------------------------------------------------------------
# What the rules read: each role's results


@dataclass(frozen=True)
class AtLR:
    """A variant's finished runs at one learning rate."""

    runs: int  # finished runs in the validation-loss statistics
    failed: int  # of which diverged or stalled
    loss: Spread | None  # final val loss over the seeds that trained (neither diverged nor stalled)
    logit: Spread | None  # summary.json max_attn_logit over every finished run at this LR

    @property
    def trained(self) -> bool:
        return self.runs > 0 and self.failed == 0


@dataclass(frozen=True)
class Evidence:
    """One role's variant, as the verdict rules see it."""

    variant: str
    best: Spread | None  # final val loss at the best LR (`VariantResult.at_best`)
    best_lr: float | None
    stable_lr: float | None  # largest stable LR, stalled runs counted as failures like divergences
    sensitivity: Spread | None
    at_lr: Mapping[float, AtLR]
    failed_at_best: bool = False  # a seed at the best LR (every run, without an LR axis) diverged or stalled


def loss_text(s: Spread | None) -> str:
    return s.text() if s is not None else "no result"


def logit_text(s: Spread | None) -> str:
    if s is None:
        return "not recorded"
    return f"{s.mean:.3g} (1 seed)" if s.pm is None else f"{s.mean:.3g} ± {s.pm:.2g}"


def lr_text(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:g}"


def lower_than(a: Spread | None, b: Spread | None, margin: float) -> bool | None:
    """Whether a is lower than b: True when distinguishably lower, False when distinguishably higher or equal within
    `margin` (`stats.equal_within`), None when the seed spread cannot tell."""
    if a is None or b is None:
        return None
    if stats.distinguishable(a, b):
        return a.mean < b.mean
    return False if stats.equal_within(a, b, margin) else None


# ---------------------------------------------------------------------------------------------------------------------
# The rules, one per finding: evidence by role -> checks


def rule_a(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    rms, layer = ev["rms"], ev["layer"]
    text = f"final val loss: rms {loss_text(rms.best)} vs layer {loss_text(layer.best)}"
    if lrs:
        text += f" at their best LRs ({lr_text(rms.best_lr)}, {lr_text(layer.best_lr)})"
    failed = [name for name, e in (("rms", rms), ("layer", layer)) if e.failed_at_best]
    if failed or rms.best is None or layer.best is None:
        why = (
            f"{' and '.join(failed)} failed (diverged or stalled) at its best LR" if failed else "a role has no result"
        )
        return [Check(f"{text}; {why}: nothing to compare", None)]
    same = stats.equal_within(rms.best, layer.best, margin)
    if same is None and stats.distinguishable(rms.best, layer.best) is None:
        return [Check(f"{text}: a single seed gives no spread", None)]
    resolution = (rms.best.pm or 0.0) + (layer.best.pm or 0.0)
    if same is None:
        return [Check(f"{text}: within seed noise, but the spreads ({resolution:.3f}) exceed {margin:g} nats", None)]
    if same:
        return [
            Check(f"{text}: within seed noise, and the spreads ({resolution:.3f}) are within {margin:g} nats", True)
        ]
    return [Check(f"{text}: the difference exceeds the seed spread", False)]


def stable_below(low: Evidence, high: Evidence, low_name: str, high_name: str) -> Check:
    """`low`'s largest stable LR below `high`'s: lower supports, higher contradicts, equal cannot decide."""
    a, b = low.stable_lr, high.stable_lr
    text = f"largest stable LR: {low_name} {lr_text(a)} vs {high_name} {lr_text(b)}"
    if a is None and b is None:
        return Check(f"{text}: neither trained stably at any LR of the grid", None)
    if a == b:
        return Check(f"{text}: the LR grid does not separate them", None)
    return Check(text, b is not None and (a is None or a < b))


def warmup_helps(post: Evidence, warm: Evidence, margin: float) -> Check:
    """Warm-up changes post-norm's outcome for the better: a larger stable LR or a distinguishably lower best loss."""
    text = (
        f"post-norm without vs with the long warm-up: largest stable LR {lr_text(post.stable_lr)} vs "
        f"{lr_text(warm.stable_lr)}, best loss {loss_text(post.best)} vs {loss_text(warm.best)}"
    )
    raised = warm.stable_lr is not None and (post.stable_lr is None or warm.stable_lr > post.stable_lr)
    lower = lower_than(warm.best, post.best, margin)
    if raised or lower:
        return Check(text, True)
    return Check(text, False if lower is False else None)


def rule_b(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    checks = [stable_below(ev["post"], ev["pre"], "post", "pre")]
    if "pre_warmup" in ev:
        checks.append(stable_below(ev["post_warmup"], ev["pre_warmup"], "post_warmup", "pre_warmup"))
    return [*checks, warmup_helps(ev["post"], ev["post_warmup"], margin)]


def sensitivity_lower(plain: Evidence, qk: Evidence, margin: float) -> Check:
    text = f"LR sensitivity: qk_norm {loss_text(qk.sensitivity)} vs plain {loss_text(plain.sensitivity)}"
    lower = lower_than(qk.sensitivity, plain.sensitivity, margin)
    if lower and lower_than(plain.best, qk.best, margin):
        return Check(f"{text}, but qk_norm's best loss is distinguishably worse: uniformly worse, not robust", None)
    return Check(text, lower)


def logit_bounded(plain: Evidence, qk: Evidence, lrs: Sequence[float]) -> Check:
    """At the highest LR where both recorded a max attention logit: plain's above the threshold, qk_norm's below."""
    shared = [lr for lr in lrs if lr in plain.at_lr and lr in qk.at_lr and plain.at_lr[lr].logit and qk.at_lr[lr].logit]
    if not shared:
        return Check("max attention logit: not recorded at a common LR", None)
    lr = max(shared)
    a, b = plain.at_lr[lr].logit, qk.at_lr[lr].logit
    text = f"max attention logit at lr {lr:g}: plain {logit_text(a)} vs qk_norm {logit_text(b)}"
    plain_above, qk_above = stats.beyond(a, LOGIT_THRESHOLD), stats.beyond(b, LOGIT_THRESHOLD)
    if plain_above is not True:
        regime = "stays below" if plain_above is False else "is not clearly above"
        return Check(f"{text}: plain {regime} the threshold, so the claim's regime was not reached", None)
    return Check(text, None if qk_above is None else not qk_above)


def rule_c(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    plain, qk = ev["plain"], ev["qk_norm"]
    return [sensitivity_lower(plain, qk, margin), logit_bounded(plain, qk, lrs)]


def rule_d(ev: Mapping[str, Evidence], lrs: Sequence[float], margin: float) -> list[Check]:
    none, dyt, rms = ev["none"], ev["dyt"], ev["rms"]
    both = [lr for lr in lrs if lr in dyt.at_lr and lr in rms.at_lr and dyt.at_lr[lr].trained and rms.at_lr[lr].trained]
    if not both:
        return [Check("dyt and rms did not both train at any LR of the grid: the claim's condition never arose", None)]
    lr = max(both)
    at = none.at_lr.get(lr)
    if at is None or at.runs == 0:
        return [Check(f"at lr {lr:g} (highest where dyt and rms train): none has no finished run", None)]
    d, r = dyt.at_lr[lr].loss, rms.at_lr[lr].loss
    text = f"at lr {lr:g}, the highest where dyt and rms train: final val loss dyt {loss_text(d)}, rms {loss_text(r)}"
    if at.failed:
        return [Check(f"{text}; none failed in {at.failed}/{at.runs} seeds (diverged or stalled)", True)]
    text += f", none {loss_text(at.loss)}"
    versus = [lower_than(x, at.loss, margin) for x in (d, r)]
    if all(versus):
        return [Check(f"{text}: none is distinguishably worse than both", True)]
    return [Check(text, False if False in versus else None)]


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
            "In pre-norm blocks RMSNorm reaches the same loss as LayerNorm, within seed noise.",
            "Zhang & Sennrich 2019, *Root Mean Square Layer Normalization*; Team OLMo 2024, *2 OLMo 2 Furious*",
            (Role("rms", PRE_RMS), Role("layer", {"norm_type": "layer", "norm_placement": "pre"})),
            ("norm_type",),
            "final val loss at each role's best LR: not distinguishable AND spreads adding up to at most {margin:g} "
            "nats (so that a larger difference would have been resolved) supports; distinguishable contradicts; "
            "overlapping intervals wider than that, a single seed, or a role that failed at its best LR cannot "
            "decide. Within noise is not the same as equal: a noisy overlap does not count as support.",
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
            "(1) for each warm-up the study declares, the largest stable LR (the report's rule, with stalled runs "
            "counted as failures like divergences) of post-norm below pre-norm's: lower supports, higher contradicts, "
            "equal cannot decide (the grid does not separate them). (2) warm-up helps post-norm: a larger stable LR "
            "with the long warm-up, or a distinguishably lower best loss, supports; neither, with the best losses "
            "equal within {margin:g} nats or the warmed-up one distinguishably higher, contradicts; otherwise "
            "cannot decide.",
            rule_b,
            relation=warmup_relation,
        ),
        Finding(
            "c",
            "QK-norm lowers LR sensitivity and bounds attention logits",
            "QK-norm lowers learning-rate sensitivity and keeps the max attention logit bounded at high learning "
            "rates, where plain pre-norm's logits pass 1e4.",
            "Wortsman et al. 2023, *Small-scale proxies for large-scale Transformer training instabilities*",
            (Role("plain", {**PRE_RMS, "qk_norm": False}), Role("qk_norm", {**PRE_RMS, "qk_norm": True})),
            ("qk_norm",),
            "(1) LR sensitivity: qk_norm's distinguishably lower supports (unless its best loss is distinguishably "
            "worse: low sensitivity from being bad everywhere cannot decide); distinguishably higher, or equal "
            "within {margin:g} nats, contradicts. (2) at the highest LR where both recorded it, the max attention "
            "logit (each run's maximum, mean ± spread over seeds): with plain's interval above {threshold:g}, "
            "qk_norm's interval below supports and above contradicts; plain's interval not above {threshold:g} "
            "means the claim's regime was not reached (cannot decide).",
            rule_c,
        ),
        Finding(
            "d",
            "No normalization fails where DyT and RMSNorm train",
            "Without normalization, training fails or degrades at learning rates where DyT (tuned alpha_init) and "
            "RMSNorm train.",
            "Zhu et al. 2025, *Transformers without Normalization*",
            (Role("none", {"norm_type": "none"}), Role("dyt", {"norm_type": "dyt"}), Role("rms", {"norm_type": "rms"})),
            ("norm_type",),
            "at the highest LR where every seed of dyt and of rms trained (finished without diverging or stalling): "
            "none failing there (a seed diverged or stalled), or a final loss distinguishably higher than both "
            "dyt's and rms's, supports; a loss equal within {margin:g} nats to, or distinguishably lower than, "
            "dyt's or rms's contradicts; otherwise cannot decide (also when no such LR exists).",
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
) -> dict[str, dict[str, dict[str, Any]]]:
    """finding -> role -> selector ({grid key: value, as the grid spells it}), in FINDINGS and role order; {} for
    no declaration. `variant_keys` are the grid keys other than learning rate and seed; `runs` the grid values of
    every run (after exclude). Raises FindingsError (one line)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise FindingsError(
            f"'findings' must be a mapping of finding ({', '.join(FINDINGS)}) to {{role: {{key: value}}}}"
        )
    out = {}
    for key, roles in raw.items():
        finding = FINDINGS.get(str(key))
        if finding is None:
            raise FindingsError(f"unknown finding {key!r} under 'findings'; valid: {', '.join(FINDINGS)}")
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
) -> dict[str, dict[str, Any]]:
    where = f"findings.{finding.key}"
    if not isinstance(roles, dict):
        raise FindingsError(f"{where} must be a mapping of role ({finding.role_names()}) to {{grid key: value}}")
    known = [r.name for r in finding.roles]
    for name in roles:
        if name not in known:
            raise FindingsError(f"{where} has no role {name!r}; roles: {finding.role_names()}")
    for role in finding.roles:
        if not role.optional and role.name not in roles:
            raise FindingsError(f"{where} lacks role '{role.name}'; roles: {finding.role_names()}")
    selectors: dict[str, dict[str, Any]] = {}
    chosen: dict[tuple[str, ...], str] = {}
    for name in (n for n in known if n in roles):
        selectors[name] = check_selector(f"{where}.{name}", roles[name], grid, variant_keys)
        variant = selected_variant(f"{where}.{name}", selectors[name], runs, variant_keys)
        if variant in chosen:
            raise FindingsError(f"{where}: roles {chosen[variant]} and {name} select the same variant")
        chosen[variant] = name
    return selectors


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

    @property
    def verdict(self) -> Verdict:
        return combine(self.checks)


def declared(study: Study) -> dict[str, dict[str, dict[str, Any]]]:
    """The findings sweep.yaml declares, checked against its grid; {} when none. Raises SweepDirectoryError."""
    raw = study.record.extra.get("findings") if study.record is not None else None
    grid = {k: study.grid_values(k) for k in study.grid_keys}
    try:
        return check_declaration(raw, grid, study.variant_keys, [r.grid for r in study.runs], bool(study.lr_key))
    except FindingsError as err:
        raise SweepDirectoryError(f"'{study.out_dir}' sweep.yaml: {err}") from None


def evidence(study: Study, variant: str, result: VariantResult, tolerance: float) -> Evidence:
    """One variant's results as the rules read them: per LR, its finished runs, failures, losses and logits."""
    frame = study.frame[study.frame.finished & (study.frame.variant == variant)]
    in_stats = frame[frame.in_val_stats]
    bad = in_stats.status.isin(FAILED)
    at_lr: dict[float, AtLR] = {}
    per_lr: dict[float, list[float | None]] = {}
    groups = in_stats.groupby("lr", sort=True) if study.lr_key else []
    for lr, rows in groups:
        failed = bad[rows.index]
        per_lr[float(lr)] = [None if f else float(x) for f, x in zip(failed, rows.loss, strict=True)]
        logits = frame[frame.lr == lr].max_attn_logit.dropna()
        losses = rows.loss[~failed].dropna()
        at_lr[float(lr)] = AtLR(
            len(rows), int(failed.sum()), stats.seed_spread(list(losses)), stats.seed_spread(list(logits))
        )
    if study.lr_key:
        failed_at_best = result.best_lr is not None and at_lr[result.best_lr].failed > 0
    else:
        failed_at_best = bool(bad.any())
    stable = stats.largest_stable_lr(per_lr, tolerance) if study.lr_key else None
    return Evidence(variant, result.at_best, result.best_lr, stable, result.sensitivity, at_lr, failed_at_best)


def judge(study: Study, results: Mapping[str, VariantResult], tolerance: float) -> list[Judgement]:
    """Every declared finding, with its checks computed from the study (`tolerance` is the margin in nats)."""
    out = []
    for key, selectors in declared(study).items():
        finding = FINDINGS[key]
        variants = {
            role: study.variant(next(r for r in study.runs if matches(selector, r.grid)))
            for role, selector in selectors.items()
        }
        ev = {role: evidence(study, v, results[v], tolerance) for role, v in variants.items()}
        out.append(Judgement(finding, variants, finding.judge(ev, study.lrs, tolerance)))
    return out
