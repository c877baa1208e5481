"""The report of a sweep (train/sweep/: study, figures, report, findings; the statistics are tests/test_stats.py): the
verdict rules on constructed evidence, and the whole report on sweep directories written through
train/run_directory.py, on the legacy sweep kept as test data, and on damaged ones."""

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


def fake_metrics(
    run_dir: Path, final: float | None, steps: int, last: int, layers: int, val: bool, drift: float = 0.1
) -> list[float]:
    """Training rows every 5 steps, evaluations every 10 (and at 0); `final=None` ends in a NaN loss. Mean drift
    grows with depth to `drift` after the last block. Returns the validation losses."""
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
        row |= {"resid_mean_drift": [drift * (i + 1) / layers for i in range(layers)]}
        row |= {"norm_input_mean_drift": [drift / 2] * (2 * layers)}
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
    drift = 0.1 + (0.1 + 0.01 * grid.get("seed", 0) if grid.get("norm", "rms") == "rms" else 0.0)
    vals = fake_metrics(run_dir, final, steps, last, layers, val=bool(val_split), drift=drift)
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
    # One field changes per comparison, paired by seed. rms vs layer differ by nothing in every seed; pre vs post by
    # 0.3 in every seed: resolved, although the seeds themselves spread.
    lines = [line for line in md.splitlines() if line.startswith("- ")]
    rms_layer = [line for line in lines if line.startswith("- norm=rms vs norm=layer (norm_placement=pre): final")]
    assert rms_layer == [
        "- norm=rms vs norm=layer (norm_placement=pre): final val loss at its best LR, norm=rms − norm=layer = "
        "+0.000 ± 0.000 (95% t-interval, 2 paired seeds): equal in every paired seed."
    ]
    assert "half the min–max range over 2 seeds" in md  # the results table's spread
    pre_post = [line for line in lines if line.startswith("- norm_placement=pre vs norm_placement=post (norm=rms)")]
    assert "norm_placement=pre is lower by 0.300 (the interval excludes 0)" in pre_post[0]
    assert not [line for line in lines if "norm=rms, norm_placement=pre vs norm=layer, norm_placement=post" in line]
    assert "Resolved orderings (final loss, lower is better, paired by seed): " in md
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
    # Columns are only ever appended: the old file is each row's prefix, and the new metrics are empty for it.
    header, *rows = (LEGACY_SWEEP / "summary.csv").read_bytes().split(b"\r\n")
    added = report.SUMMARY_COLUMNS[len(report.LEGACY_COLUMNS) :]
    assert added == ("max_resid_mean_drift", "max_norm_input_mean_drift")
    expected = [header + b"," + ",".join(added).encode()] + [row + b"," * len(added) if row else row for row in rows]
    assert (out / "summary.csv").read_bytes().split(b"\r\n") == expected
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
    assert "a single paired seed gives no interval" in md
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


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{x}: &{x} [{', '.join([f'*{y}'] * 9)}]\n" for y, x in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_files_that_would_exhaust_a_parser_are_unreadable_like_any_other(tmp_path, capsys):
    """A recursion-bomb summary.json, a metrics line nested 100,000 deep and a "billion laughs" run_config.yaml (a
    sweep run's, which report.py reads): each is one warning line, never a RecursionError or gigabytes of memory."""
    names = fake_sweep(tmp_path, {"learning_rate": [1e-3, 3e-3, 1e-2]}, _loss)
    bomb, deep, laughs = (tmp_path / "runs" / n for n in names)
    (bomb / SUMMARY).write_text("[" * 100_000 + "]" * 100_000)
    with (deep / METRICS).open("a") as f:
        f.write('{"step": 21, "loss": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (laughs / "run_config.yaml").write_text(LAUGHS + "training: {seed: *i}\n")
    assert report.main([str(tmp_path)]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("report.py: warning: ") for w in warnings), warnings
    assert "summary.json: unreadable (is nested too deeply to read); the run counts as incomplete" in warnings[0]
    assert "metrics.jsonl: line 8 is nested too deeply to read; dropped" in warnings[1]
    assert "run_config.yaml: unreadable (" in warnings[2] and "uses a YAML alias (*a) at line 2" in warnings[2]


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
    assert "- norm=rms vs norm=layer: final val loss, norm=rms − norm=layer = -0.100 (1 paired seed: no interval)" in md
    assert "nothing to compare" not in md and "no finished seeds" not in md
    assert "The grid has no learning_rate axis" in md and "1 seed(s) per setting." in md


def test_a_multi_seed_grid_without_a_learning_rate_axis_ranks_by_the_seed_spread(tmp_path):
    fake_sweep(tmp_path, {"norm": ["rms", "layer"], "seed": [0, 1, 2]}, _by_norm({"rms": 3.4, "layer": 3.6}))
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    rows = _results_rows(md)
    assert rows[0].startswith("| norm=rms | – | 3.460 ± 0.010 | 3 |") and rows[1].startswith("| norm=layer | – | 3.660")
    assert "norm=rms − norm=layer = -0.200 ± 0.000 (95% t-interval, 3 paired seeds): norm=rms is lower by 0.200" in md
    assert "Resolved orderings (final loss, lower is better, paired by seed): norm=rms < norm=layer." in md
    # Finding (a) declared on a grid without an LR axis (as the paired CPU study is): the mean-drift observation
    # names the study's one learning rate, not "lr none"
    declared = {"a": {"rms": {"norm": "rms"}, "layer": {"norm": "layer"}}}
    grid = {"norm": ["rms", "layer"], "seed": [0, 1, 2]}
    fake_sweep(tmp_path / "a", grid, _by_norm({"rms": 3.4, "layer": 3.6}), findings=declared)
    assert report.main([str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "report.md").read_text()
    assert "(rms and layer at the study's one learning rate: the runs finding (a) compares;" in md
    assert "lr none" not in md


def test_a_single_seed_grid_with_a_learning_rate_axis_has_results_but_ranks_nothing(tmp_path):
    grid = {"norm": ["rms", "layer"], "learning_rate": [1e-3, 3e-3, 1e-2]}  # no seed axis: the preset's seed
    fake_sweep(tmp_path, grid, _loss)
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    # best LR 0.003 (loss 3.4, val 3.45); stable within 0.1: 0.01; sensitivity (3.6 + 3.4 + 3.45) / 3 - 3.4 = 0.083
    assert _results_rows(md)[0].startswith("| norm=rms | 0.003 | 3.450 (1 seed) | 1 | 0.01 | 0.083 (1 seed) | 1 |")
    assert "| 0.003 | 3.450 (1 seed) | 3.450 (1 seed) |" in md
    assert "LR sensitivity, norm=rms − norm=layer = +0.000 (1 paired seed: no interval)" in md
    assert "Ranking by final loss: no pair of variants is resolved by the paired comparisons." in md


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
    assert {Path(link).stem for link in _links(md)} == {"loss_curves", "resid_rms_depth", "mean_drift_depth"}


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
BASE = {0: 4.70, 1: 4.90, 2: 4.60, 3: 4.80, 4: 4.75}  # five seeds that spread far more than the differences below


def seeds(*offsets: float, base=BASE) -> dict:
    """BASE shifted seed by seed (a single offset shifts every seed); fewer offsets than seeds drop the rest."""
    offsets = offsets * len(base) if len(offsets) == 1 else offsets
    return {seed: base[seed] + d for seed, d in zip(base, offsets, strict=False)}


def at(losses=None, failed=(), logits=None) -> findings.AtLR:
    losses, logits = losses or {}, logits or {}
    keys = sorted(set(losses) | set(logits) | set(failed))
    return findings.AtLR({k: findings.SeedRun(losses.get(k), k in failed, logits.get(k)) for k in keys})


def ev(best_lr=3e-3, at_lr=None, sens=None) -> findings.Evidence:
    return findings.Evidence("v", best_lr, None, at_lr or {}, sens or {})


def verdict(key: str, roles: dict, lrs=(1e-3, 3e-3, 1e-2)) -> findings.Verdict:
    return findings.combine(findings.FINDINGS[key].judge(roles, list(lrs), MARGIN))


def test_combine_needs_every_check_to_support_and_any_contradiction_refutes():
    yes, no, maybe = (findings.Check("x", v) for v in (True, False, None))
    assert findings.combine([yes, yes]) is YES
    assert findings.combine([yes, no, maybe]) is NO
    assert findings.combine([yes, maybe]) is UNSURE and findings.combine([]) is UNSURE
    # A condition not met: the other checks are shown but decide nothing, not even a contradiction.
    assert findings.combine(findings.gated(maybe, [no, yes])) is UNSURE
    assert findings.gated(maybe, [no])[1].text == "x (not judged: the condition was not met)"
    assert findings.combine(findings.gated(yes, [no])) is NO


def test_rule_a_rms_and_layer_equivalent_by_a_paired_tost():
    def a(rms, layer, failed=(), extra=None):
        roles = {"rms": ev(at_lr={3e-3: at(rms, failed)}), "layer": ev(at_lr={3e-3: at(layer)})}
        for role, (lr, losses) in (extra or {}).items():
            roles[role].at_lr[lr] = at(losses)
        checks = findings.rule_a(roles, [1e-3, 3e-3, 1e-2], MARGIN)
        return findings.combine(checks), checks[0].text

    # Seeds spread by 0.3 nats, the differences by 0.02: equivalent within 0.1 although the seed spreads overlap.
    result, text = a(BASE, seeds(0.01, -0.01, 0.02, 0.0, -0.02))
    assert result is YES and text.startswith("final val loss at their shared best LR (0.003), rms − layer: +0.000")
    assert "5 paired seeds" in text and "equivalent within ±0.1 nats (TOST p = " in text
    assert a(BASE, seeds(0.3, 0.31, 0.29, 0.3, 0.3))[0] is NO  # further apart than 0.1 in every seed
    result, text = a(BASE, seeds(0.2, -0.2, 0.15, -0.1, 0.05))  # within the noise, but the noise is wide
    assert result is UNSURE and "not resolved; could have detected differences ≥ " in text
    assert "equivalence would need a tolerance of at least " in text and "observed " in text
    result, text = a({0: 4.7}, {0: 4.7})
    assert result is UNSURE and "1 paired seed(s): no interval and no power estimate" in text
    result, text = a(BASE, seeds(0.0), failed=(1,))  # rms stalled in seed 1 at its best LR
    assert result is UNSURE and "failed (diverged or stalled) at its best LR: rms in seed(s) 1" in text
    result, text = a(BASE, seeds(0.01, -0.01, 0.02, 0.0))  # layer lacks seed 4: paired over 4
    assert "4 paired seeds); seed(s) 4 only in rms (left out)" in text
    # Each at its own best LR among the LRs both ran: layer is better at 0.01, rms at 0.003 ...
    extra = {"rms": (1e-2, seeds(0.3)), "layer": (1e-2, seeds(-0.1))}
    result, text = a(BASE, seeds(0.0), extra=extra)
    assert "at their best LRs (0.003, 0.01), rms − layer: +0.100" in text
    # ... and an LR only one role ran is never its best: rms's 0.03 is outside layer's grid.
    result, text = a(BASE, seeds(0.0), extra={"rms": (3e-2, seeds(-1.0))})
    assert "at their shared best LR (0.003)" in text and result is YES


LRS = (1e-3, 3e-3, 1e-2)


def upto(top, n=5, loss=BASE, lrs=LRS) -> findings.Evidence:
    """A role that trained, with the same loss, at every LR up to `top` and failed above it, in each of n seeds."""
    losses = {k: v for k, v in loss.items() if k < n}
    at_lr = {lr: at(losses) if top is not None and lr <= top else at(failed=range(n)) for lr in lrs}
    return ev(1e-3, at_lr)


def test_rule_b_post_norm_stable_lr_below_pre_and_warmup_helping():
    def b(pre, post, warm, pre_warm=None):
        roles = {"pre": pre, "post": post, "post_warmup": warm}
        roles |= {"pre_warmup": pre_warm} if pre_warm is not None else {}
        return verdict("b", roles)

    assert b(pre=upto(3e-3), post=upto(1e-3), warm=upto(3e-3), pre_warm=upto(1e-2)) is YES
    assert b(pre=upto(3e-3), post=upto(None), warm=upto(1e-3)) is YES  # post-norm stable nowhere without warm-up
    assert b(pre=upto(1e-3), post=upto(3e-3), warm=upto(1e-2)) is NO  # post's stable LR above pre's in 5 seeds
    assert b(pre=upto(3e-3), post=upto(1e-3), warm=upto(1e-3)) is NO  # warm-up changed nothing, equal losses
    lower = seeds(-0.2, -0.21, -0.19, -0.2, -0.2)
    assert b(pre=upto(3e-3), post=upto(1e-3), warm=upto(1e-3, loss=lower)) is YES  # ... or a lower loss
    wide = seeds(-0.3, 0.2, -0.25, 0.15, -0.1)
    assert b(pre=upto(3e-3), post=upto(1e-3), warm=upto(1e-3, loss=wide)) is UNSURE
    assert b(pre=upto(3e-3), post=upto(3e-3), warm=upto(1e-2)) is UNSURE  # the grid does not separate them
    assert b(pre=upto(3e-3, 4), post=upto(1e-3, 4), warm=upto(3e-3, 4)) is UNSURE  # 4 seeds: p = 1/16
    check = findings.stable_below(upto(1e-3, 4), upto(3e-3, 4), "post", "pre", MARGIN)
    assert "post lower in 4, higher in 0, tied in 0 of 4 paired seeds: not resolved; sign test p = 0.0625" in check.text
    assert "at least 5 untied seeds all one way" in check.text
    assert "largest stable LR per seed, post 0.001, 0.001, 0.001, 0.001 (seeds 0, 1, 2, 3)" in check.text
    # Only the LRs both roles ran count: pre's extra LR 0.03 (where post never ran) cannot make post look lower.
    check = findings.stable_below(upto(1e-2), upto(3e-2, lrs=(*LRS, 3e-2)), "post", "pre", MARGIN)
    assert check.supports is None and "tied in 5 of 5" in check.text
    # A seed's loss more than the tolerance above its best is not stable there.
    worse_at_top = ev(1e-3, {1e-3: at(BASE), 3e-3: at(seeds(0.5))})
    assert findings.seed_stable_lrs(worse_at_top, [1e-3, 3e-3], MARGIN) == dict.fromkeys(range(5), 1e-3)


def test_rule_c_qk_norm_judged_only_where_plain_logits_pass_1e4_in_every_seed():
    high = dict.fromkeys(range(5), 2e4)

    def c(plain_logits=high, qk_logits=None, qk_sens=None, qk_best=None):
        plain = ev(at_lr={3e-3: at(BASE), 1e-1: at(logits=plain_logits)}, sens=seeds(0.0, base=SENS))
        qk_best, qk_sens = qk_best or BASE, qk_sens or seeds(-0.3, -0.31, -0.29, -0.3, -0.3, base=SENS)
        qk = ev(at_lr={3e-3: at(qk_best), 1e-1: at(logits=qk_logits or dict.fromkeys(range(5), 30.0))}, sens=qk_sens)
        checks = findings.rule_c({"plain": plain, "qk_norm": qk}, [3e-3, 1e-2, 1e-1], MARGIN)
        return findings.combine(checks), checks

    assert c()[0] is YES
    assert c(qk_logits={**dict.fromkeys(range(5), 30.0), 3: 1.2e4})[0] is NO  # one qk_norm seed passes 1e4
    assert c(qk_sens=seeds(0.3, 0.31, 0.29, 0.3, 0.3, base=SENS))[0] is NO  # more LR-sensitive
    assert c(qk_sens=seeds(0.01, -0.01, 0.02, 0.0, -0.01, base=SENS))[0] is NO  # as sensitive, within 0.1
    assert c(qk_best=seeds(0.5, 0.51, 0.49, 0.5, 0.5))[0] is UNSURE  # insensitive by being bad everywhere
    # Plain's mean is far above 1e4, but one seed is not: the regime was not reached, nothing is judged.
    result, checks = c(plain_logits={**high, 2: 8e3}, qk_sens=seeds(0.3, base=SENS))
    assert result is UNSURE and "not above 10000 in seed(s) 2, so the claim's regime was not reached" in checks[0].text
    assert all(ch.supports is None and ch.text.endswith("(not judged: the condition was not met)") for ch in checks[1:])
    text = c()[1][0].text
    assert text == (
        "plain's max attention logit at lr 0.1: 2e+04, 2e+04, 2e+04, 2e+04, 2e+04 (seeds 0, 1, 2, 3, 4): above 10000 "
        "in every seed, the claim's regime"
    )


SENS = {0: 0.70, 1: 0.90, 2: 0.60, 3: 0.80, 4: 0.75}


def test_rule_d_no_norm_fails_or_degrades_where_dyt_and_rms_train():
    good = at(BASE)

    def d(none_top, dyt_best=good, dyt_top=good):
        dyt = ev(at_lr={3e-3: dyt_best, 1e-1: dyt_top})
        rms = ev(3e-3, {3e-3: good, 1e-1: good})
        none = ev(at_lr={3e-3: good, 1e-1: none_top})
        checks = findings.rule_d({"none": none, "dyt": dyt, "rms": rms}, [3e-3, 1e-1], MARGIN)
        return findings.combine(checks), checks

    assert d(at(failed=range(5)))[0] is YES  # fails in every seed where both partners train
    assert d(at(seeds(0.5, 0.52, 0.48, 0.5, 0.5)))[0] is YES  # trains, worse than both in every pair
    assert d(at(seeds(0.01, -0.01, 0.02, 0.0, -0.02)))[0] is NO  # as good as dyt and rms
    result, checks = d(at(seeds(0.3, -0.2, 0.25, -0.1, 0.1)))
    assert result is UNSURE and "could have detected differences ≥ " in checks[1].text
    # Failed in 2 seeds, worse in the other 3: none is worse than each partner in 5 of 5 seeds.
    result, checks = d(at(seeds(0.0, 0.0, 0.5, 0.5, 0.5), failed=(0, 1)))
    assert result is YES and "none failed in 2 of 5 seeds" in checks[1].text
    assert (
        "none worse than dyt in 5 of 5 paired seeds, a failed run ranked worst (sign test p = 0.0312)" in checks[1].text
    )
    assert d(at(seeds(0.0, 0.0, -0.1, -0.1, -0.1), failed=(0, 1)))[0] is UNSURE  # better where it trained
    # dyt failed at the top LR: the verdict is taken at 0.003, the highest LR where dyt and rms trained.
    result, checks = d(at(failed=range(5)), dyt_top=at(BASE, failed=(3,)))
    assert checks[1].text.startswith("at lr 0.003, the highest where dyt and rms trained in every seed")
    # rms's best LR among the LRs dyt ran too: an extra rms-only LR (0.03, best for rms) is not where dyt is judged.
    rms = ev(3e-3, {3e-3: good, 1e-1: good, 3e-2: at(seeds(-0.5))})
    condition = findings.dyt_trains(ev(at_lr={3e-3: good, 1e-1: good}), rms)
    assert condition.supports is True and "at rms's best LR (0.003)" in condition.text
    # DyT does not train at the RMSNorm baseline's LR: the claim's condition never arose.
    result, checks = d(at(failed=range(5)), dyt_best=at(BASE, failed=(1,)))
    assert result is UNSURE and "dyt failed in seed(s) 1: the claim's condition" in checks[0].text


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
    "bad tolerance": (
        {"a": {"rms": {"norm": "rms"}, "layer": {"norm": "layer"}, "tolerance": -0.1}},
        "findings.a.tolerance must be a number of nats > 0, got -0.1",
    ),
    "tolerance as text": (
        {"a": {"rms": {"norm": "rms"}, "layer": {"norm": "layer"}, "tolerance": "0.1"}},
        "findings.a.tolerance must be a number of nats > 0, got '0.1'",
    ),
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
    raw["a"]["tolerance"] = 0.05  # beside the roles, kept in sweep.yaml, never taken for a role
    out = findings.check_declaration(raw, grid, ["norm", "qk_norm"], runs, lr_axis=True)
    assert out["a"]["tolerance"] == 0.05 and list(findings.role_selectors(out["a"])) == ["rms", "layer"]


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


FIVE = [0, 1, 2, 3, 4]


def test_findings_a_and_d_on_a_synthetic_sweep(tmp_path, capsys):
    grid = {"norm": ["rms", "layer", "dyt", "none"], "learning_rate": [1e-3, 1e-2, 1e-1], "seed": FIVE}

    def loss(v):
        if v["norm"] == "none" and v["learning_rate"] == 1e-1:
            return None  # diverged where dyt and rms train
        wobble = 0.01 * (-1) ** v["seed"] if v["norm"] == "layer" else 0.0  # layer: ±0.01 by seed
        return 3.0 + {1e-3: 0.4, 1e-2: 0.0, 1e-1: 0.3}[v["learning_rate"]] + 0.1 * v["seed"] + wobble

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
    assert a[3] == "0.1 nats (the report's --tolerance: not declared before the study)"
    # Seeds spread by 0.4 nats, rms − layer by ±0.01: equivalent, paired.
    assert (
        "final val loss at their shared best LR (0.01), rms − layer: -0.002 ± 0.014 (95% t-interval, 5 paired" in a[4]
    )
    assert "[supports]" in a[4] and a[5].startswith("**reproduced**")
    assert "| norm=rms | 0.01 | 3.250 ± 0.158 | 5 |" in md  # ... each norm's seeds spread by 0.16 (sample std)
    assert "at lr 0.1, the highest where dyt and rms trained in every seed: none failed in 5 of 5 seeds" in d[4]
    assert "none worse than rms in 5 of 5 paired seeds" in d[4] and d[5].startswith("**reproduced**")
    assert "dyt and rms trained in every seed at rms's best LR (0.01) (5 and 5 seeds) [supports]" in d[4]
    assert "Zhu et al. 2025" in d[1]
    assert "- (a) per seed, rms's final val loss minus layer's, each at its own best LR" in md
    assert "*equivalent within ±δ* is a TOST at α = 0.05" in md
    assert "Unigram entropy of the training tokens: 4.250 nats" in md
    # The mean-drift observation, from (a)'s roles at the LR (a) compares: rms's stream drifts 0.10-0.14 more.
    drift = md.split("### Mean drift: RMSNorm vs LayerNorm (observation)")[1].split("### Final validation loss")[0]
    assert "rms at lr 0.01, layer at lr 0.01" in drift and "No verdict rule was written" in drift
    assert "- Mean drift of the stream after each block, rms − layer: +0.120 ± 0.020 (95% t-interval, 5 " in drift
    assert "RMSNorm's drifts more (the interval lies above 0)" in drift
    assert "- Final validation loss, rms − layer: -0.002 ± 0.014 (95% t-interval, 5 paired seeds)" in drift
    assert "Spearman ρ = +0.00 (p = 1, 5 seeds): no association at α = 0.05" in drift
    assert "| 4 | 0.240 | 0.100 | 3.450 | 3.460 |" in drift  # seed 4: drift and final validation loss per role
    assert "| 2 | 0.220 | 0.100 |" in drift.split("mean over seeds")[1]  # block 2 (the last): rms's mean over seeds
    # Without a declared tolerance the report's --tolerance applies: at 0.01 nats ±0.01 is no longer equivalent.
    assert report.main([str(tmp_path), "--tolerance", "0.01"]) == 0
    a = findings_rows((tmp_path / "report.md").read_text())["a"]
    assert a[5].startswith("**inconclusive") and "equivalence would need a tolerance of at least 0.012" in a[4]
    # A tolerance declared in the sweep file wins over --tolerance, and the report says where it came from.
    declared["a"]["tolerance"] = 0.05
    fake_sweep(tmp_path / "declared", grid, loss, findings=declared)
    assert report.main([str(tmp_path / "declared"), "--tolerance", "0.01"]) == 0
    a = findings_rows((tmp_path / "declared" / "report.md").read_text())["a"]
    assert a[3] == "0.05 nats (declared in the sweep file)" and a[5].startswith("**reproduced**")


def test_finding_b_counts_stalled_runs_as_failures(tmp_path):
    grid = {"norm_placement": ["pre", "post"], "warmup_steps": [0, 100], "learning_rate": [1e-3, 3e-3, 1e-2]}
    grid["seed"] = FIVE

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
    assert "post lower in 5, higher in 0, tied in 0 of 5 paired seeds (sign test p = 0.0312) [supports]" in b[4]
    assert "post_warmup lower in 0, higher in 0, tied in 5 of 5 paired seeds: not resolved" in b[4]
    assert "largest stable LR with lower in 0, higher in 5, tied in 0 of 5 paired seeds" in b[4]
    assert b[5].startswith("**inconclusive")
    assert "(stalled 5/5)" in md  # the per-LR table says which cells stalled


def test_finding_c_reads_the_max_attention_logit_at_the_highest_lr(tmp_path):
    grid = {"qk_norm": [False, True], "learning_rate": [1e-3, 1e-2, 1e-1], "seed": FIVE}

    def loss(v):
        plain = not v["qk_norm"]
        return 3.0 + {1e-3: 0.4, 1e-2: 0.0, 1e-1: 1.0 if plain else 0.1}[v["learning_rate"]] + 0.01 * v["seed"]

    declared = {"c": {"plain": {"qk_norm": False}, "qk_norm": {"qk_norm": True}}}
    fake_sweep(tmp_path, grid, loss, findings=declared)
    logit = lambda v, s: {"max_attn_logit": (2e4 if v["qk_norm"] == "false" else 40.0) + 1e3 * int(v["seed"])}
    set_summaries(tmp_path, logit)
    assert report.main([str(tmp_path)]) == 0
    c = findings_rows((tmp_path / "report.md").read_text())["c"]
    assert (
        "plain's max attention logit at lr 0.1: 2e+04, 2.1e+04, 2.2e+04, 2.3e+04, 2.4e+04 (seeds 0, 1, 2, 3, 4)" in c[4]
    )
    assert "qk_norm's max attention logit at lr 0.1: 40, 1.04e+03, 2.04e+03, 3.04e+03, 4.04e+03" in c[4]
    assert "LR sensitivity per seed, qk_norm − plain: -0.300 ± 0.000 (95% t-interval, 5 paired seeds)" in c[4]
    assert c[5].startswith("**reproduced**")


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
