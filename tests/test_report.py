"""The report of a sweep (train/sweep/: stats, study, figures, report): the statistics on constructed numbers (LR
sensitivity, largest stable LR, seed spread and the refusal to rank within it), and the whole report on sweep
directories written through train/run_directory.py, on the legacy sweep kept as test data, and on damaged ones."""

import csv
import dataclasses
import itertools
import math
import shutil
from pathlib import Path

import pytest

from train.run_directory import ERROR_LOG, METRICS, SUMMARY, MetricsLog, RunStatus, Summary, write_run_config
from train.sweep import figures, findings, report, stats
from train.sweep.directory import RecordedRun, SweepRecord, fmt_value, write_sweep_record

REPO_ROOT = Path(__file__).resolve().parent.parent
LEGACY_SWEEP = REPO_ROOT / "tests" / "data" / "legacy_sweep"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
S = stats.Spread


# ---------------------------------------------------------------------------------------------------------------------
# The statistics


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


def test_ranking_refuses_differences_within_the_seed_spread():
    a, b = S(3.412, 0.010, 3), S(3.405, 0.012, 3)  # the intervals overlap
    c = S(3.600, 0.010, 3)
    assert stats.distinguishable(a, b) is False
    assert stats.distinguishable(a, c) is True
    assert stats.distinguishable(S(3.0, None, 1), S(4.0, None, 1)) is None
    text = stats.compare("rms", a, "layer", b, "final val loss")
    assert text.startswith("rms vs layer: final val loss 3.412 ± 0.010 vs 3.405 ± 0.012 over 3 seeds")
    assert "not distinguishable at this seed count" in text and "std" in text
    text = stats.compare("rms", a, "post", c, "final val loss")
    assert "rms is lower by 0.188" in text and "not distinguishable" not in text
    assert "not ranked" in stats.compare("x", S(3.0, None, 1), "y", S(4.0, None, 1), "loss")
    assert stats.ranking({"rms": a, "layer": b, "post": c}) == [("layer", "post"), ("rms", "post")]
    assert stats.ranking({"rms": a, "layer": b}) == []


def test_low_sensitivity_from_being_bad_everywhere_is_called_out():
    sensitivity = {"pre": S(0.78, 0.02, 2), "post": S(0.62, 0.06, 2), "other": S(0.60, 0.05, 2)}
    best = {"pre": S(5.69, 0.06, 2), "post": S(6.26, 0.07, 2), "other": S(5.70, 0.05, 2)}
    assert stats.uniformly_worse(sensitivity, best) == [("post", "pre")]


def test_band_aligns_curves_on_step_and_drops_non_finite_values():
    xs, mean, lo, hi = stats.band([[(0, 1.0), (1, 2.0)], [(0, 3.0), (1, math.nan), (2, 5.0)]])
    assert xs == [0, 1, 2] and mean == [2.0, 2.0, 5.0] and lo == [1.0, 2.0, 5.0] and hi == [3.0, 2.0, 5.0]


# ---------------------------------------------------------------------------------------------------------------------
# Sweep directories written through train/run_directory.py

NUMERICS = "statistics in float32 (input upcast), output cast back to the input dtype before the gain"
INIT = 6.0


def fake_config(run_dir: Path, grid: dict, steps: int, layers: int, val_split: float) -> dict:
    model = {"norm_type": grid.get("norm", "rms"), "norm_placement": grid.get("norm_placement", "pre")}
    model |= {"rms_norm_eps": 1e-6, "qk_norm": False, "z_loss": 0.0, "hidden_size": 32, "num_hidden_layers": layers}
    training = {"learning_rate": grid.get("learning_rate", 3e-3), "seed": grid.get("seed", 0), "max_steps": steps}
    data = {"dataset": "stdlib", "block_size": 32, "validation_split_percentage": val_split}
    write_run_config(run_dir / "run_config.yaml", {"model": model, "data": data, "training": training})
    return model


def fake_metrics(run_dir: Path, final: float | None, steps: int, last: int, layers: int, val: bool) -> list[float]:
    """Training rows every 5 steps, evaluations every 10 (and at 0); `final=None` ends in a NaN loss. Returns the
    validation losses."""
    log, vals = MetricsLog(run_dir / METRICS), []
    if val:
        log.append({"step": 0, "val_loss": INIT, "tokens": 0, "elapsed": 0.0})
        vals.append(INIT)
    for step in range(5, last + 1, 5):
        frac = step / steps
        loss = math.nan if final is None and step == last else INIT + ((final or 3.0) - INIT) * frac
        row = {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 0.5 + frac, "tokens": step * 128}
        row |= {"tokens_per_sec": 1000.0, "elapsed": step * 0.1, "grad_norm_blocks": [0.1] * layers}
        row |= {"resid_rms": [1.0 + i + frac for i in range(layers)], "attn_logit_max": [2.0 + frac, 3.0 + frac]}
        log.append(row | {"spike_count": 0, "spikes": []})
        if step % 10 == 0 and final is not None and val:
            log.append({"step": step, "val_loss": loss + 0.05, "tokens": step * 128, "elapsed": step * 0.1})
            vals.append(loss + 0.05)
    if final is None:
        log.append({"step": last, "diverged": True, "reason": "loss is nan"})
    return vals


def fake_run(run_dir: Path, grid: dict, final: float | None, *, steps: int = 20, layers: int = 2, val_split=5.0):
    """A finished run directory as the trainer writes it. `final=None` makes a run that diverged at half its steps;
    `val_split=0` one that completed without any validation loss."""
    run_dir.mkdir(parents=True)
    model = fake_config(run_dir, grid, steps, layers, val_split)
    last = steps // 2 if final is None else steps
    vals = fake_metrics(run_dir, final, steps, last, layers, val=bool(val_split))
    Summary(
        status=RunStatus.DIVERGED if final is None else RunStatus.COMPLETED,
        steps=last,
        max_steps=steps,
        stop_reason="loss is nan" if final is None else None,
        stop_step=last if final is None else None,
        init_val_loss=INIT if vals else None,
        final_val_loss=vals[-1] if vals and final is not None else None,
        best_val_loss=min(vals) if vals else None,
        final_train_loss=final,
        spike_count=1 if final is None else 0,
        max_grad_norm=1.5,
        max_attn_logit=4.0,
        tokens_per_sec=1000.0,
        wall_time=last * 0.1 + 1.0,
        num_parameters=12345 + 4 * (grid.get("norm") == "layer"),  # LayerNorm's biases: a few more, same at 3 digits
        learning_rate=grid.get("learning_rate", 3e-3),
        seed=grid.get("seed", 0),
        model={**model, "norm_numerics": NUMERICS},
    ).write(run_dir)


def fake_sweep(out: Path, grid: dict, final_loss, skip=(), findings=None, **run_kwargs) -> list[str]:
    """A sweep directory as ablate.py leaves it; `final_loss(values) -> float | None` decides each run's result and
    runs named in `skip` are left missing. `findings` is the sweep file's declaration, recorded as ablate.py does."""
    runs = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        runs.append(RecordedRun(",".join(f"{k}={fmt_value(v)}" for k, v in values.items()), values))
        if runs[-1].name not in skip:
            fake_run(out / "runs" / runs[-1].name, values, final_loss(values), **run_kwargs)
    fields = {k: {"norm": "norm_type"}.get(k, k) for k in grid}
    record = SweepRecord(grid=grid, runs=runs, fields=fields, base="configs/tiny.yaml", overrides={"max_steps": 20})
    record.hardware = {"cpu": "Test CPU", "cpu_cores": 2, "gpus": []}
    record.extra = {"findings": findings} if findings else {}
    write_sweep_record(out, record)
    return [r.name for r in runs]


def _loss(values: dict) -> float | None:
    lr, seed = values["learning_rate"], values.get("seed", 0)
    if values.get("norm_placement") == "post" and lr >= 1e-2:
        return None
    base = {1e-3: 3.6, 3e-3: 3.4, 1e-2: 3.45}.get(lr, 3.5)
    return base + (0.3 if values.get("norm_placement") == "post" else 0.0) + 0.01 * seed


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def _csv(out: Path) -> list[dict]:
    with (out / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def _links(md: str) -> list[str]:
    return [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]


def test_report_end_to_end_on_a_synthetic_sweep(tmp_path, capsys):
    grid = {"norm": ["rms", "layer"], "norm_placement": ["pre", "post"], "learning_rate": [1e-3, 3e-3, 1e-2]}
    grid["seed"] = [0, 1]
    names = fake_sweep(tmp_path, grid, _loss)
    # A stalled run is finished: it enters the statistics with its (bad) final loss, unlike a divergence.
    stalled = tmp_path / "runs" / names[0]
    dataclasses.replace(Summary.read(stalled), status=RunStatus.STALLED).write(stalled)
    assert report.main([str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""  # nothing unreadable: no warning

    rows = _csv(tmp_path)
    assert len(rows) == 24
    for col in ("norm", "norm_placement", "learning_rate", "seed", "final_val_loss", "best_val_loss", "diverged"):
        assert col in rows[0]
    for col in ("spike_count", "max_grad_norm", "max_attn_logit", "tokens_per_sec", "wall_time"):
        assert col in rows[0]
    diverged = [r for r in rows if r["diverged"] == "true"]
    assert len(diverged) == 4 and all(r["norm_placement"] == "post" and r["status"] == "diverged" for r in diverged)
    assert {r["diverged_step"] for r in diverged} == {"10"}

    md = (tmp_path / "report.md").read_text()
    # The setup of every variant: placement, eps and where the float32 upcast happens.
    assert "placement" in md and "eps" in md and NUMERICS in md and "1e-06" in md
    for variant in ("norm=rms, norm_placement=pre", "norm=layer, norm_placement=post"):
        assert variant in md
    # One field changes per comparison. rms vs layer differ by nothing: refused; pre vs post differ by 0.3: ranked.
    lines = [line for line in md.splitlines() if line.startswith("- ")]
    rms_layer = [line for line in lines if line.startswith("- norm=rms vs norm=layer (norm_placement=pre): final")]
    assert len(rms_layer) == 1 and "not distinguishable at this seed count" in rms_layer[0]
    assert "3.455 ± 0.005 vs 3.455 ± 0.005 over 2 seeds" in rms_layer[0]
    assert "half the min–max range over 2 seeds" in rms_layer[0]
    pre_post = [line for line in lines if line.startswith("- norm_placement=pre vs norm_placement=post (norm=rms)")]
    assert "norm_placement=pre is lower by 0.300" in pre_post[0]
    assert not [line for line in lines if "norm=rms, norm_placement=pre vs norm=layer, norm_placement=post" in line]
    assert "Resolved orderings (final loss, lower is better): " in md
    assert "Caveat" not in md  # here post is both worse and more LR-sensitive: nothing to qualify
    assert "What this does and does not show" in md and "small-scale proxies" in md
    assert "2 seed(s) per setting" in md and "3 learning rates from 0.001 to 0.01" in md
    assert "Scale: 12.3k-parameter models trained for 20 steps" in md  # sizes that print alike are named once
    assert "4 of 24 finished runs diverged" in md and "Test CPU; 2 CPU cores available" in md
    assert "1 of 24 finished runs stalled" in md
    assert "19 completed, 4 diverged, 1 stalled" in md
    # Every figure of the one list is linked with its caption, and is a real PNG.
    links = _links(md)
    assert {Path(link).stem for link in links} == {f.name for f in figures.FIGURES}
    for figure in figures.FIGURES:
        assert f"*{figure.caption}*" in md
    for link in links:
        assert _is_png(tmp_path / link), link


def test_hardware_comes_from_the_summaries_else_from_sweep_yaml(tmp_path):
    grid = {"learning_rate": [1e-3, 3e-3]}
    fake_sweep(tmp_path, grid, _loss)
    report.main([str(tmp_path)])
    assert (
        "- Hardware: Test CPU; 2 CPU cores available; no GPU (recorded by ablate.py"
        in (tmp_path / "report.md").read_text()
    )
    for run_dir in (tmp_path / "runs").iterdir():
        summary = Summary.read(run_dir)
        dataclasses.replace(summary, device="Some GPU").write(run_dir)
    report.main([str(tmp_path)])
    assert "- Hardware: Some GPU (from the runs' summary.json)." in (tmp_path / "report.md").read_text()


def test_legacy_sweep_gives_a_byte_identical_summary_csv(tmp_path):
    """A sweep directory written before the run-directory module (tests/data/README.md) reads the same."""
    out = tmp_path / "legacy"
    shutil.copytree(LEGACY_SWEEP, out)
    (out / "summary.csv").unlink()
    assert report.main([str(out)]) == 0
    assert (out / "summary.csv").read_bytes() == (LEGACY_SWEEP / "summary.csv").read_bytes()
    md = (out / "report.md").read_text()
    assert "8 runs in the grid: 8 completed" in md and "AMD EPYC (2 cores) (from the runs' summary.json)" in md
    assert "- norm=rms vs norm=layer: final val loss at its best LR" in md


def test_runs_without_a_result_are_listed_and_contribute_only_their_progress(tmp_path):
    grid = {"norm": ["rms", "layer"], "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2], "seed": [0]}
    names = fake_sweep(tmp_path, grid, _loss, skip=["norm=layer,learning_rate=0.01,seed=0"])
    damaged = [names[0], names[1], names[4], names[7]]
    # A launch that failed before any summary (ablate.py wrote its error log) and a run still going: incomplete.
    failed, running, crashed, stopped = (tmp_path / "runs" / n for n in damaged)
    (failed / SUMMARY).unlink()
    (failed / ERROR_LOG).write_text("boom\n")
    (running / SUMMARY).unlink()
    # The trainer's own verdicts: an unexpected error, and a signal.
    for run_dir, status in ((crashed, RunStatus.FAILED), (stopped, RunStatus.INTERRUPTED)):
        dataclasses.replace(Summary.read(run_dir), status=status, stop_reason="x", stop_step=10).write(run_dir)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "not ranked (a single seed gives no spread estimate)" in md
    assert "no variant is ranked" in md
    assert "3 completed" in md and "1 failed" in md and "2 incomplete" in md and "1 interrupted" in md
    assert "1 missing" in md and f"last launch failed (see `ablate_error.log` in each): `{names[0]}`" in md
    rows = {r["run"]: r for r in _csv(tmp_path)}
    assert [rows[n]["status"] for n in damaged] == ["incomplete", "incomplete", "failed", "interrupted"]
    assert rows["norm=layer,learning_rate=0.01,seed=0"]["status"] == "missing"
    # Progress only: the last logged step, nothing re-derived from the metrics.
    progress = rows[names[1]]
    assert progress["steps"] == "20" and progress["max_steps"] == "20"
    assert all(progress[c] == "" for c in ("init_val_loss", "final_val_loss", "best_val_loss", "max_grad_norm"))
    # Only finished runs enter the statistics: of layer, only lr 0.003 finished, so that is its best LR.
    assert "| norm=layer | 0.003 | 3.450 (1 seed) | 1 |" in md
    for link in _links(md):
        assert _is_png(tmp_path / link)


def test_a_run_without_validation_split_is_completed_and_out_of_the_val_loss_statistics(tmp_path):
    grid = {"norm": ["rms", "layer"], "learning_rate": [1e-3, 3e-3], "seed": [0, 1]}
    layer = [f"norm=layer,learning_rate={lr!r},seed={seed}" for lr in grid["learning_rate"] for seed in grid["seed"]]
    fake_sweep(tmp_path, grid, _loss, skip=layer)
    # The layer runs trained with --validation_split_percentage 0: completed, final_val_loss null.
    for name in layer:
        fake_run(tmp_path / "runs" / name, {"norm": "layer"}, 3.0, val_split=0)
    assert report.main([str(tmp_path)]) == 0
    rows = [r for r in _csv(tmp_path) if r["norm"] == "layer"]
    assert len(rows) == 4 and {(r["status"], r["diverged"], r["final_val_loss"]) for r in rows} == {
        ("completed", "false", "")
    }
    md = (tmp_path / "report.md").read_text()
    assert "diverged" not in md.split("## Runs")[1].split("## Sweep")[0]
    assert "4 finished run(s) have no validation loss" in md and "4 of 8 finished runs have no validation loss" in md
    assert "| norm=layer | – | – | 0 | – | – | 0 |" in md  # no best LR, loss, seeds or stable LR: nothing invented
    assert "| 0.001 | 3.655 ± 0.005 | no val loss |" in md
    assert "norm=rms vs norm=layer" not in md  # nothing to compare it with


def test_unreadable_runs_are_warned_about_one_line_each_and_nothing_crashes(tmp_path, capsys):
    grid = {"learning_rate": [1e-3, 3e-3, 1e-2]}
    names = fake_sweep(tmp_path, grid, _loss)
    listed, damaged, bad_config = (tmp_path / "runs" / n for n in names)
    (listed / SUMMARY).write_text("[1, 2]\n")  # valid JSON, but not a summary
    with (damaged / METRICS).open("a") as f:
        f.write('{"step": 21, "loss": 3.\n{"step": 22}\n')  # a bad line, then a last line
    (bad_config / "run_config.yaml").write_text("model: [unclosed\n")
    assert report.main([str(tmp_path)]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("report.py: warning: ") for w in warnings), warnings
    assert "summary.json: unreadable (expected a JSON object, got list)" in warnings[0]
    assert "metrics.jsonl: line" in warnings[1] and "not valid JSON; dropped" in warnings[1]
    assert "run_config.yaml: unreadable" in warnings[2]
    rows = {r["run"]: r["status"] for r in _csv(tmp_path)}
    assert rows[names[0]] == "incomplete" and rows[names[1]] == "completed" == rows[names[2]]
    md = (tmp_path / "report.md").read_text()
    assert "Could not be read (each also printed as a warning):" in md and "got list" in md


def test_a_non_finite_learning_rate_is_reported_not_crashed_on(tmp_path, capsys):
    grid = {"learning_rate": [1e-3, 3e-3, math.inf], "seed": [0, 1]}
    fake_sweep(tmp_path, grid, lambda v: None if math.isinf(v["learning_rate"]) else _loss(v))
    assert report.main([str(tmp_path)]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all("learning_rate inf is not a finite number" in w for w in warnings)
    md = (tmp_path / "report.md").read_text()
    assert "2 learning rates from 0.001 to 0.003" in md
    for link in _links(md):
        assert _is_png(tmp_path / link)


def test_report_without_sweep_yaml_infers_the_grid_and_handles_no_finished_runs(tmp_path, capsys):
    for lr in (1e-3, 3e-3):
        fake_run(tmp_path / "runs" / f"lr{lr}", {"learning_rate": lr}, 3.5)
    assert report.main([str(tmp_path)]) == 0
    assert [r["learning_rate"] for r in _csv(tmp_path)] == ["0.001", "0.003"]
    assert "learning_rate" in (tmp_path / "report.md").read_text()

    empty = tmp_path / "empty"
    (empty / "runs" / "a").mkdir(parents=True)
    assert report.main([str(empty)]) == 0
    assert "No run has finished yet" in (empty / "report.md").read_text()
    capsys.readouterr()
    assert report.main([str(tmp_path / "nope")]) == 2
    assert report.main([str(tmp_path), "--tolerance", "nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("report.py: error: ") for line in err)


# ---------------------------------------------------------------------------------------------------------------------
# Any grid: the statistics must not depend on the grid having a learning-rate or a seed axis, or more than one run


def _by_norm(base: dict[str, float]):
    return lambda values: base[values["norm"]] + 0.01 * values.get("seed", 0)


def _results_rows(md: str) -> list[str]:
    section = md.split("## Results")[1].split("### Comparisons")[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| variant")]


def test_a_grid_without_a_learning_rate_axis_reports_its_runs(tmp_path):
    """A first sweep, `norm: [rms, layer]` at the preset's learning rate: both finished runs are in the results."""
    fake_sweep(tmp_path, {"norm": ["rms", "layer"]}, _by_norm({"rms": 3.4, "layer": 3.5}))
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    rows = _results_rows(md)
    assert rows[0].startswith("| norm=rms | – | 3.450 (1 seed) | 1 |")
    assert rows[1].startswith("| norm=layer | – | 3.550 (1 seed) | 1 |")
    assert "- norm=rms vs norm=layer: final val loss 3.450 (1 seed) vs 3.550 (1 seed) over 1 seed" in md
    assert "nothing to compare" not in md and "no finished seeds" not in md
    assert "The grid has no learning_rate axis" in md and "1 seed(s) per setting." in md


def test_a_multi_seed_grid_without_a_learning_rate_axis_ranks_by_the_seed_spread(tmp_path):
    fake_sweep(tmp_path, {"norm": ["rms", "layer"], "seed": [0, 1, 2]}, _by_norm({"rms": 3.4, "layer": 3.6}))
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    rows = _results_rows(md)
    assert rows[0].startswith("| norm=rms | – | 3.460 ± 0.010 | 3 |") and rows[1].startswith("| norm=layer | – | 3.660")
    assert "final val loss 3.460 ± 0.010 vs 3.660 ± 0.010 over 3 seeds" in md and "norm=rms is lower by 0.200" in md
    assert "Resolved orderings (final loss, lower is better): norm=rms < norm=layer." in md


def test_a_single_seed_grid_with_a_learning_rate_axis_has_results_but_ranks_nothing(tmp_path):
    grid = {"norm": ["rms", "layer"], "learning_rate": [1e-3, 3e-3, 1e-2]}  # no seed axis: the preset's seed
    fake_sweep(tmp_path, grid, _loss)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    # best LR 0.003 (loss 3.4, val 3.45); stable within 0.1: 0.01; sensitivity (3.6 + 3.4 + 3.45) / 3 - 3.4 = 0.083
    assert _results_rows(md)[0].startswith("| norm=rms | 0.003 | 3.450 (1 seed) | 1 | 0.01 | 0.083 (1 seed) | 1 |")
    assert "| 0.003 | 3.450 (1 seed) | 3.450 (1 seed) |" in md
    assert "not ranked (a single seed gives no spread estimate)" in md and "no variant is ranked" in md


@pytest.mark.parametrize("sweep_yaml", [True, False], ids=["sweep.yaml", "a run directory gathered by hand"])
def test_a_single_run_is_a_report(tmp_path, sweep_yaml):
    if sweep_yaml:
        fake_sweep(tmp_path, {"norm": ["rms"]}, _by_norm({"rms": 3.4}))
    else:
        fake_run(tmp_path / "runs" / "only", {"norm": "rms"}, 3.4)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    label = "norm=rms" if sweep_yaml else "all runs"
    assert _results_rows(md)[0].startswith(f"| {label} | – | 3.450 (1 seed) | 1 |")
    assert "1 runs in the grid: 1 completed" in md and "Fewer than two variants" in md
    assert [float(r["final_val_loss"]) for r in _csv(tmp_path)] == [pytest.approx(3.45)]
    assert {Path(link).stem for link in _links(md)} == {"loss_curves", "resid_rms_depth"}


def test_a_new_figure_is_one_entry_in_the_list(tmp_path, monkeypatch):
    def draw_lr_histogram(study, results, path):
        fig, ax = figures.plt().subplots()
        ax.hist([study.lr(r) for r in study.finished()])
        figures.save(fig, path)
        return True

    entry = figures.Figure("lr_histogram", draw_lr_histogram, "How many runs finished at each LR.", needs_lr_axis=True)
    shipped = figures.FIGURES
    monkeypatch.setattr(figures, "FIGURES", (*shipped, entry))
    fake_sweep(tmp_path, {"learning_rate": [1e-3, 3e-3]}, _loss)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "![lr_histogram](figures/lr_histogram.png)" in md and "*How many runs finished at each LR.*" in md
    assert _is_png(tmp_path / "figures" / "lr_histogram.png")
    # A figure whose needs are not met is not drawn, and one from an earlier report is removed.
    monkeypatch.setattr(figures, "FIGURES", (*shipped, dataclasses.replace(entry, needs_metrics=("nope",))))
    assert report.main([str(tmp_path)]) == 0
    assert not (tmp_path / "figures" / "lr_histogram.png").exists()
    assert "- *lr_histogram*: not drawn" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("panels", [1, 2, 4])
def test_the_shared_legend_stays_inside_the_figure_however_long_the_variant_names(panels):
    labels = [f"norm_placement={p}, warmup_steps={w}" for p in ("pre", "post") for w in (20, 100)]
    fig, axes = figures.plt().subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    for label in labels:
        axes[0, 0].plot([0, 1], [0, 1], label=label)
    figures.legend_below(fig, axes)
    fig.canvas.draw()
    legend, inside = fig.legends[0].get_window_extent(), fig.bbox
    assert inside.x0 <= legend.x0 and legend.x1 <= inside.x1 and inside.y0 <= legend.y0
    assert legend.y1 <= min(ax.get_tightbbox().y0 for ax in axes.flat)  # below the panels' tick labels
    figures.plt().close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Published findings: the verdict rules on constructed evidence, then the section on synthetic sweep directories

YES, NO, UNSURE = findings.Verdict.REPRODUCED, findings.Verdict.NOT_REPRODUCED, findings.Verdict.INCONCLUSIVE
MARGIN = 0.1


def at(loss=None, runs=3, failed=0, logit=None) -> findings.AtLR:
    return findings.AtLR(runs, failed, loss, logit)


def ev(best=None, best_lr=None, stable=None, sens=None, at_lr=None, failed_at_best=False) -> findings.Evidence:
    return findings.Evidence("v", best, best_lr, stable, sens, at_lr or {}, failed_at_best)


def verdict(key: str, roles: dict, lrs=(1e-3, 3e-3, 1e-2)) -> findings.Verdict:
    return findings.combine(findings.FINDINGS[key].judge(roles, list(lrs), MARGIN))


def test_equal_within_and_beyond_a_threshold():
    assert stats.equal_within(S(4.70, 0.02, 3), S(4.72, 0.03, 3), 0.1) is True  # overlap, spreads 0.05 <= 0.1
    assert stats.equal_within(S(4.70, 0.08, 3), S(4.72, 0.06, 3), 0.1) is None  # overlap, but 0.14 of noise
    assert stats.equal_within(S(4.60, 0.02, 3), S(4.80, 0.02, 3), 0.1) is False  # distinguishable
    assert stats.equal_within(S(4.7, None, 1), S(4.7, 0.01, 3), 0.1) is None
    assert stats.beyond(S(2e4, 5e3, 3), 1e4) is True and stats.beyond(S(50.0, 5.0, 3), 1e4) is False
    assert stats.beyond(S(1.1e4, 2e3, 3), 1e4) is None and stats.beyond(S(2e4, None, 1), 1e4) is None


def test_combine_needs_every_check_to_support_and_any_contradiction_refutes():
    yes, no, maybe = (findings.Check("x", v) for v in (True, False, None))
    assert findings.combine([yes, yes]) is YES
    assert findings.combine([yes, no, maybe]) is NO
    assert findings.combine([yes, maybe]) is UNSURE and findings.combine([]) is UNSURE


def test_rule_a_rms_and_layer_the_same_only_when_the_spread_resolves_the_margin():
    def a(rms, layer, **kw):
        return verdict("a", {"rms": ev(rms, 3e-3, **kw), "layer": ev(layer, 3e-3)})

    assert a(S(4.70, 0.02, 3), S(4.72, 0.03, 3)) is YES
    assert a(S(4.60, 0.02, 3), S(4.80, 0.02, 3)) is NO
    assert a(S(4.70, 0.08, 3), S(4.72, 0.06, 3)) is UNSURE  # within noise, but the noise is wider than the margin
    assert a(S(4.70, None, 1), S(4.70, None, 1)) is UNSURE
    assert a(S(6.58, 0.01, 3), S(6.58, 0.01, 3), failed_at_best=True) is UNSURE  # both "equal" on the plateau: no
    text = findings.rule_a({"rms": ev(S(4.7, 0.02, 3), 3e-3), "layer": ev(S(4.72, 0.03, 3), 1e-2)}, [1e-3], 0.1)[0]
    assert "rms 4.700 ± 0.020 vs layer 4.720 ± 0.030 at their best LRs (0.003, 0.01)" in text.text


def test_rule_b_post_norm_stable_lr_below_pre_and_warmup_helping():
    same = S(5.3, 0.02, 3)

    def b(pre, post, warm, pre_warm=None, warm_best=same):
        roles = {"pre": ev(same, stable=pre), "post": ev(same, stable=post), "post_warmup": ev(warm_best, stable=warm)}
        if pre_warm is not None:
            roles["pre_warmup"] = ev(same, stable=pre_warm)
        return verdict("b", roles)

    assert b(pre=3e-3, post=1e-3, warm=3e-3, pre_warm=1e-2) is YES
    assert b(pre=3e-3, post=None, warm=1e-3) is YES  # post-norm stable nowhere without warm-up
    assert b(pre=1e-3, post=3e-3, warm=1e-2) is NO  # post-norm's largest stable LR above pre-norm's
    assert b(pre=3e-3, post=1e-3, warm=1e-3) is NO  # warm-up changed nothing: same stable LR, equal loss
    assert b(pre=3e-3, post=1e-3, warm=1e-3, warm_best=S(5.0, 0.02, 3)) is YES  # ... or a distinguishably lower loss
    assert b(pre=3e-3, post=1e-3, warm=1e-3, warm_best=S(5.25, 0.1, 3)) is UNSURE  # lower within a wide spread
    assert b(pre=3e-3, post=3e-3, warm=1e-2) is UNSURE  # the grid does not separate post from pre
    assert b(pre=3e-3, post=1e-3, warm=3e-3, pre_warm=3e-3) is UNSURE  # ... nor, with warm-up, post_warmup from pre


def test_rule_c_qk_norm_sensitivity_and_attention_logits():
    best = S(4.7, 0.02, 3)

    def c(sens_qk, logit_plain, logit_qk, best_qk=best, lrs=(1e-2, 1e-1)):
        plain = ev(best, sens=S(0.70, 0.03, 3), at_lr={lr: at(best, logit=logit_plain) for lr in lrs})
        qk = ev(best_qk, sens=sens_qk, at_lr={lr: at(best_qk, logit=logit_qk) for lr in lrs})
        return verdict("c", {"plain": plain, "qk_norm": qk}, lrs)

    low, high, small = S(2e4, 3e3, 3), S(1.5e4, 1e3, 3), S(50.0, 5.0, 3)
    assert c(S(0.30, 0.02, 3), low, small) is YES
    assert c(S(0.30, 0.02, 3), low, high) is NO  # qk_norm's logits pass 1e4 too
    assert c(S(0.90, 0.02, 3), low, small) is NO  # more LR-sensitive
    assert c(S(0.69, 0.02, 3), low, small) is NO  # as sensitive, within the margin
    assert c(S(0.30, 0.02, 3), S(5e3, 1e3, 3), small) is UNSURE  # plain pre-norm's logits never passed 1e4 here
    assert c(S(0.30, 0.02, 3), low, small, best_qk=S(5.5, 0.02, 3)) is UNSURE  # insensitive by being bad everywhere
    checks = findings.rule_c(
        {"plain": ev(at_lr={0.1: at(logit=low)}), "qk_norm": ev(at_lr={0.1: at(logit=small)})}, [0.1], MARGIN
    )
    assert checks[1].text == "max attention logit at lr 0.1: plain 2e+04 ± 3e+03 vs qk_norm 50 ± 5"


def test_rule_d_no_norm_fails_or_degrades_where_dyt_and_rms_train():
    good = at(S(5.4, 0.02, 3))

    def d(none, dyt_top=good, lrs=(3e-2, 1e-1)):
        dyt = ev(at_lr={3e-2: good, 1e-1: dyt_top})
        rms = ev(at_lr={3e-2: good, 1e-1: good})
        return findings.rule_d({"none": ev(at_lr=none), "dyt": dyt, "rms": rms}, list(lrs), MARGIN)

    assert findings.combine(d({3e-2: good, 1e-1: at(None, failed=3)})) is YES
    assert findings.combine(d({3e-2: good, 1e-1: at(S(6.0, 0.02, 3))})) is YES  # trains, distinguishably worse
    assert findings.combine(d({3e-2: good, 1e-1: at(S(5.42, 0.02, 3))})) is NO  # as good as dyt and rms
    assert findings.combine(d({3e-2: good, 1e-1: at(S(5.5, 0.2, 3))})) is UNSURE  # worse within a wide spread
    # dyt failed at 0.1: the verdict is taken at 0.03, the highest LR where dyt and rms both trained.
    checks = d({3e-2: at(None, failed=1), 1e-1: at(None, failed=3)}, dyt_top=at(None, failed=2))
    assert findings.combine(checks) is YES and checks[0].text.startswith("at lr 0.03, the highest")
    nowhere = findings.rule_d({"none": ev(), "dyt": ev(at_lr={0.1: at(None, failed=3)}), "rms": ev()}, [0.1], 0.1)
    assert findings.combine(nowhere) is UNSURE and "never arose" in nowhere[0].text


DECLARATION_ERRORS = {
    "not a mapping": (["a"], "'findings' must be a mapping of finding (a, b, c, d)"),
    "unknown finding": ({"e": {}}, "unknown finding 'e' under 'findings'; valid: a, b, c, d"),
    "roles not a mapping": ({"a": "rms"}, "findings.a must be a mapping of role (rms, layer)"),
    "unknown role": ({"a": {"rms": {"norm": "rms"}, "layr": {}}}, "findings.a has no role 'layr'; roles: rms, layer"),
    "missing role": ({"a": {"rms": {"norm": "rms"}}}, "findings.a lacks role 'layer'"),
    "optional roles named": ({"b": {"pre": {}}}, "roles: pre, post, post_warmup (optional: pre_warmup)"),
    "empty selector": ({"a": {"rms": {}, "layer": {"norm": "layer"}}}, "findings.a.rms must be a mapping of grid key"),
    "not a grid key": ({"a": {"rms": {"qk_norm": True}, "layer": {}}}, "names 'qk_norm', which is not a grid key"),
    "seed in a role": ({"a": {"rms": {"seed": 0}, "layer": {}}}, "learning rate and seed vary in it"),
    "value not in the grid": ({"a": {"rms": {"norm": "dyt"}, "layer": {}}}, "norm=dyt is not among grid.norm"),
    "two variants": ({"a": {"rms": {"norm": "rms"}, "layer": {}}}, "selects 2 variants; name a value for each of"),
    "same variant": (
        {"a": {"rms": {"norm": "rms", "norm_placement": "pre"}, "layer": {"norm": "rms", "norm_placement": "pre"}}},
        "findings.a: roles rms and layer select the same variant",
    ),
    "needs an lr axis": ({"c": {}}, "finding c needs a learning_rate axis"),
}


@pytest.mark.parametrize("case", list(DECLARATION_ERRORS))
def test_a_bad_findings_declaration_is_one_line(case):
    raw, message = DECLARATION_ERRORS[case]
    grid = {"norm": ["rms", "layer"], "norm_placement": ["pre", "post"], "learning_rate": [1e-3], "seed": [0, 1]}
    runs = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    lr_axis = case != "needs an lr axis"
    with pytest.raises(findings.FindingsError) as err:
        findings.check_declaration(raw, grid, ["norm", "norm_placement"], runs, lr_axis)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_declaration_is_returned_in_finding_and_role_order_with_the_grids_values():
    grid = {"norm": ["rms", "layer"], "qk_norm": [False, True], "learning_rate": [1e-3]}
    runs = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    raw = {
        "c": {"qk_norm": {"norm": "rms", "qk_norm": "true"}, "plain": {"norm": "rms", "qk_norm": False}},
        "a": {"layer": {"norm": "layer", "qk_norm": False}, "rms": {"norm": "rms", "qk_norm": False}},
    }
    out = findings.check_declaration(raw, grid, ["norm", "qk_norm"], runs, lr_axis=True)
    assert list(out) == ["a", "c"] and list(out["a"]) == ["rms", "layer"] and list(out["c"]) == ["plain", "qk_norm"]
    assert out["c"]["qk_norm"] == {"norm": "rms", "qk_norm": True}


def set_summaries(out: Path, update) -> None:
    """Rewrite every run's summary.json with `update(grid values as in the run name, summary) -> dict of fields`."""
    for run_dir in (out / "runs").iterdir():
        values = dict(part.split("=", 1) for part in run_dir.name.split(","))
        summary = Summary.read(run_dir)
        dataclasses.replace(summary, **update(values, summary)).write(run_dir)


def findings_rows(md: str) -> dict[str, list[str]]:
    """Finding key -> the cells of its row in the findings table."""
    section = md.split("### Published findings")[1].split("### Final validation loss")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| (")]
    return {row[0][3]: row for row in rows}


def test_findings_a_and_d_on_a_synthetic_sweep(tmp_path, capsys):
    grid = {"norm": ["rms", "layer", "dyt", "none"], "learning_rate": [1e-3, 1e-2, 1e-1], "seed": [0, 1, 2]}

    def loss(v):
        if v["norm"] == "none" and v["learning_rate"] == 1e-1:
            return None  # diverged where dyt and rms train
        return 3.0 + {1e-3: 0.4, 1e-2: 0.0, 1e-1: 0.3}[v["learning_rate"]] + 0.01 * v["seed"]

    declared = {
        "d": {"none": {"norm": "none"}, "dyt": {"norm": "dyt"}, "rms": {"norm": "rms"}},
        "a": {"rms": {"norm": "rms"}, "layer": {"norm": "layer"}},
    }
    fake_sweep(tmp_path, grid, loss, findings=declared)
    set_summaries(tmp_path, lambda v, s: {"unigram_entropy": 4.25})
    assert report.main([str(tmp_path)]) == 0 and capsys.readouterr().err == ""
    md = (tmp_path / "report.md").read_text()
    rows = findings_rows(md)
    assert list(rows) == ["a", "d"]  # in the order of the findings, whatever the declaration's order
    a, d = rows["a"], rows["d"]
    assert "Zhang & Sennrich 2019" in a[1] and a[2] == "rms: norm=rms; layer: norm=layer"
    assert "rms 3.060 ± 0.010 vs layer 3.060 ± 0.010 at their best LRs (0.01, 0.01)" in a[3]
    assert "[supports]" in a[3] and a[4].startswith("**reproduced**")
    assert "at lr 0.1, the highest where dyt and rms train" in d[3] and "none failed in 3/3 seeds" in d[3]
    assert d[4].startswith("**reproduced**") and "Zhu et al. 2025" in d[1]
    assert "- (a) final val loss at each role's best LR: not distinguishable AND spreads adding up to at most 0.1" in md
    assert "equal within 0.1 nats* when they overlap" in md and "± = sample std over seeds" in md
    assert "Unigram entropy of the training tokens: 4.250 nats" in md
    # The margin is the report's --tolerance: at 0.01 nats the same spreads no longer resolve it.
    assert report.main([str(tmp_path), "--tolerance", "0.01"]) == 0
    assert findings_rows((tmp_path / "report.md").read_text())["a"][4].startswith("**inconclusive at this seed count")


def test_finding_b_counts_stalled_runs_as_failures(tmp_path):
    grid = {"norm_placement": ["pre", "post"], "warmup_steps": [0, 100], "learning_rate": [1e-3, 3e-3, 1e-2]}
    grid["seed"] = [0, 1, 2]

    def loss(v):
        post, warm, lr = v["norm_placement"] == "post", v["warmup_steps"] == 100, v["learning_rate"]
        if post and lr >= (1e-2 if warm else 3e-3):
            return 6.5  # stalled on the plateau (set below)
        return 4.6 + (0.3 if post else 0.0) + (0.2 if lr == 1e-2 else 0.0) + 0.01 * v["seed"]

    declared = {
        "b": {
            "pre": {"norm_placement": "pre", "warmup_steps": 0},
            "post": {"norm_placement": "post", "warmup_steps": 0},
            "post_warmup": {"norm_placement": "post", "warmup_steps": 100},
            "pre_warmup": {"norm_placement": "pre", "warmup_steps": 100},
        }
    }
    fake_sweep(tmp_path, grid, loss, findings=declared)
    stalled = lambda v, s: {"status": RunStatus.STALLED} if s.final_train_loss == 6.5 else {}
    set_summaries(tmp_path, stalled)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    b = findings_rows(md)["b"]
    assert "largest stable LR: post 0.001 vs pre 0.003 [supports]" in b[3]
    assert "largest stable LR: post_warmup 0.003 vs pre_warmup 0.003: the LR grid does not separate them" in b[3]
    assert "largest stable LR 0.001 vs 0.003" in b[3] and b[4].startswith("**inconclusive at this seed count")
    assert "(stalled 3/3)" in md  # the per-LR table says which cells stalled


def test_finding_c_reads_the_max_attention_logit_at_the_highest_lr(tmp_path):
    grid = {"qk_norm": [False, True], "learning_rate": [1e-3, 1e-2, 1e-1], "seed": [0, 1, 2]}

    def loss(v):
        plain = not v["qk_norm"]
        return 3.0 + {1e-3: 0.4, 1e-2: 0.0, 1e-1: 1.0 if plain else 0.1}[v["learning_rate"]] + 0.01 * v["seed"]

    declared = {"c": {"plain": {"qk_norm": False}, "qk_norm": {"qk_norm": True}}}
    fake_sweep(tmp_path, grid, loss, findings=declared)
    logit = lambda v, s: {"max_attn_logit": (2e4 if v["qk_norm"] == "false" else 40.0) + 1e3 * int(v["seed"])}
    set_summaries(tmp_path, logit)
    assert report.main([str(tmp_path)]) == 0
    c = findings_rows((tmp_path / "report.md").read_text())["c"]
    assert "max attention logit at lr 0.1: plain 2.1e+04 ± 1e+03 vs qk_norm 1.04e+03 ± 1e+03 [supports]" in c[3]
    assert "LR sensitivity: qk_norm" in c[3] and c[4].startswith("**reproduced**")


def test_a_bad_declaration_in_sweep_yaml_is_one_line_and_writes_nothing(tmp_path, capsys):
    fake_sweep(tmp_path, {"norm": ["rms", "layer"], "seed": [0, 1]}, _loss_no_lr, findings={"a": {"rms": {}}})
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("report.py: error: ") and "sweep.yaml: findings.a" in err[0]
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "summary.csv").exists()


def _loss_no_lr(values: dict) -> float:
    return 3.0 + 0.01 * values["seed"]


def test_a_sweep_without_a_declaration_has_no_findings_section(tmp_path):
    fake_sweep(tmp_path, {"norm": ["rms", "layer"], "seed": [0, 1]}, _loss_no_lr)
    assert report.main([str(tmp_path)]) == 0
    assert "Published findings" not in (tmp_path / "report.md").read_text()
