"""scripts/report.py: the statistics on constructed numbers (LR sensitivity, largest stable LR, seed spread and the
refusal to rank within it), and the whole report on synthetic sweep directories written by hand."""

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from scripts_loader import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent


report = load_script("report")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------------------------------


def test_lr_sensitivity_matches_the_definition():
    init = 10.0
    # Losses 4, 3, 5 at three LRs: E[min(l, init)] - min l = (4 + 3 + 5) / 3 - 3 = 1.
    assert report.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: 5.0}, init) == pytest.approx(1.0)
    # A diverged run (None or NaN) counts as the loss at init: (4 + 3 + 10) / 3 - 3.
    expected = (4 + 3 + 10) / 3 - 3
    assert report.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: None}, init) == pytest.approx(expected)
    assert report.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: math.nan}, init) == pytest.approx(expected)
    assert report.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: math.inf}, init) == pytest.approx(expected)
    # A loss above init is clipped to init, exactly like a divergence.
    assert report.lr_sensitivity({1e-3: 4.0, 3e-3: 3.0, 1e-2: 12.0}, init) == pytest.approx(expected)
    # Flat across LRs: insensitive.
    assert report.lr_sensitivity({1e-3: 3.0, 3e-3: 3.0}, init) == 0.0
    # Nothing learnt anywhere: every term is init - init.
    assert report.lr_sensitivity({1e-3: None, 3e-3: 11.0}, init) == 0.0
    with pytest.raises(ValueError):
        report.lr_sensitivity({}, init)


def test_sensitivity_over_seeds_uses_only_seeds_with_the_whole_lr_grid():
    lrs = [1e-3, 1e-2]
    per_seed = {0: {1e-3: 4.0, 1e-2: 3.0}, 1: {1e-3: 4.0, 1e-2: 5.0}, 2: {1e-3: 4.0}}  # seed 2 lacks 1e-2
    spread, used = report.sensitivity_over_seeds(per_seed, {0: 10.0, 1: 10.0, 2: 10.0}, lrs)
    assert used == [0, 1]
    # Seed 0: (4 + 3) / 2 - 3 = 0.5; seed 1: (4 + 5) / 2 - 4 = 0.5.
    assert spread.mean == pytest.approx(0.5) and spread.pm == pytest.approx(0.0) and spread.n == 2
    assert report.sensitivity_over_seeds({2: {1e-3: 4.0}}, {2: 10.0}, lrs) == (None, [])


def test_largest_stable_lr_and_best_lr():
    per_lr = {
        1e-3: [3.50, 3.52],
        3e-3: [3.40, 3.42],  # best mean 3.41
        1e-2: [3.48, 3.50],  # within 0.1 of the best
        3e-2: [3.60, 3.62],  # stable but 0.2 worse
        1e-1: [3.45, None],  # one seed diverged: never stable, however good the other seed
    }
    assert report.best_lr(per_lr) == 3e-3
    assert report.largest_stable_lr(per_lr, tolerance=0.1) == 1e-2
    assert report.largest_stable_lr(per_lr, tolerance=0.25) == 3e-2
    assert report.largest_stable_lr(per_lr, tolerance=0.0) == 3e-3
    assert report.largest_stable_lr({1e-3: [None], 1e-2: [math.nan]}, 0.1) is None
    assert report.best_lr({1e-3: [None]}) is None
    assert report.largest_stable_lr({1e-3: [], 1e-2: [3.0]}, 0.1) == 1e-2  # an LR with no finished runs is ignored
    assert report.best_lr({1e-3: [3.0], 1e-2: [3.0]}) == 1e-3  # ties go to the smaller LR


def test_seed_spread_is_std_from_three_seeds_half_range_for_two_none_for_one():
    three = report.seed_spread([1.0, 2.0, 3.0])
    assert (three.mean, three.pm, three.n, three.kind) == (2.0, pytest.approx(1.0), 3, "std")
    two = report.seed_spread([3.0, 3.5])
    assert (two.mean, two.pm, two.kind) == (3.25, 0.25, "half-range")
    one = report.seed_spread([3.0])
    assert (one.pm, one.kind) == (None, "single seed")
    assert report.seed_spread([]) is None
    assert two.text() == "3.250 ± 0.250" and one.text() == "3.000 (1 seed)"
    assert "half the min–max range over 2 seeds" in report.spread_meaning([two])
    assert "std" in report.spread_meaning([three])


def test_ranking_refuses_differences_within_the_seed_spread():
    S = report.Spread
    a, b = S(3.412, 0.010, 3), S(3.405, 0.012, 3)  # the intervals overlap
    c = S(3.600, 0.010, 3)
    assert report.distinguishable(a, b) is False
    assert report.distinguishable(a, c) is True
    assert report.distinguishable(S(3.0, None, 1), S(4.0, None, 1)) is None
    text = report.compare("rms", a, "layer", b, "final val loss")
    assert text.startswith("rms vs layer: final val loss 3.412 ± 0.010 vs 3.405 ± 0.012 over 3 seeds")
    assert "not distinguishable at this seed count" in text and "std" in text
    text = report.compare("rms", a, "post", c, "final val loss")
    assert "rms is lower by 0.188" in text and "not distinguishable" not in text
    assert "not ranked" in report.compare("x", S(3.0, None, 1), "y", S(4.0, None, 1), "loss")
    assert report.ranking({"rms": a, "layer": b, "post": c}) == [("layer", "post"), ("rms", "post")]
    assert report.ranking({"rms": a, "layer": b}) == []


def test_low_sensitivity_from_being_bad_everywhere_is_called_out():
    S = report.Spread
    sensitivity = {"pre": S(0.78, 0.02, 2), "post": S(0.62, 0.06, 2), "other": S(0.60, 0.05, 2)}
    best = {"pre": S(5.69, 0.06, 2), "post": S(6.26, 0.07, 2), "other": S(5.70, 0.05, 2)}
    assert report.uniformly_worse(sensitivity, best) == [("post", "pre")]


def test_band_aligns_curves_on_step_and_drops_non_finite_values():
    xs, mean, lo, hi = report.band([[(0, 1.0), (1, 2.0)], [(0, 3.0), (1, math.nan), (2, 5.0)]])
    assert xs == [0, 1, 2] and mean == [2.0, 2.0, 5.0] and lo == [1.0, 2.0, 5.0] and hi == [3.0, 2.0, 5.0]


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic sweep directories
# ---------------------------------------------------------------------------------------------------------------------

NUMERICS = "statistics in float32 (input upcast), output cast back to the input dtype before the gain"


def fake_run(run_dir: Path, grid: dict, final: float | None, *, steps: int = 20, layers: int = 2, seed: int = 0):
    """A finished run directory as the trainer writes it: run_config.yaml, metrics.jsonl, summary.json.
    `final=None` makes a run that diverged at half its steps."""
    run_dir.mkdir(parents=True)
    model = {"norm_type": grid.get("norm", "rms"), "norm_placement": grid.get("norm_placement", "pre")}
    model |= {"rms_norm_eps": 1e-6, "qk_norm": False, "z_loss": 0.0, "hidden_size": 32, "num_hidden_layers": layers}
    training = {"learning_rate": grid.get("learning_rate", 3e-3), "seed": grid.get("seed", seed), "max_steps": steps}
    (run_dir / "run_config.yaml").write_text(
        yaml.safe_dump({"model": model, "data": {"dataset": "stdlib", "block_size": 32}, "training": training})
    )
    init = 6.0
    diverged = final is None
    last = steps // 2 if diverged else steps
    rows = [{"step": 0, "val_loss": init, "tokens": 0, "elapsed": 0.0}]
    for step in range(5, last + 1, 5):
        frac = step / steps
        loss = init + (math.nan if diverged and step == last else ((final or 3.0) - init) * frac)
        rows.append(
            {
                "step": step,
                "loss": loss,
                "lr": training["learning_rate"],
                "grad_norm": 0.5 + frac,
                "tokens": step * 128,
                "tokens_per_sec": 1000.0,
                "elapsed": step * 0.1,
                "grad_norm_blocks": [0.1] * layers,
                "update_ratio_blocks": [1e-3] * layers,
                "resid_rms": [1.0 + i + frac for i in range(layers)],
                "attn_logit_max": [2.0 + frac, 3.0 + frac],
                "log_z": 1.0,
                "spike_count": 1 if diverged else 0,
                "spikes": [],
            }
        )
        if step % 10 == 0 and not diverged:
            rows.append({"step": step, "val_loss": loss + 0.05, "tokens": step * 128, "elapsed": step * 0.1})
    if diverged:
        rows.append({"step": last, "diverged": True, "reason": "loss is nan"})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    summary = {
        "status": "diverged" if diverged else "completed",
        "diverged": diverged,
        "diverged_reason": "loss is nan" if diverged else None,
        "diverged_step": last if diverged else None,
        "steps": last,
        "max_steps": steps,
        "init_val_loss": init,
        "final_val_loss": None if diverged else val[-1],
        "best_val_loss": min(val),
        "final_train_loss": None if diverged else rows[-2]["loss"],
        "spike_count": 1 if diverged else 0,
        "spike_steps": [last] if diverged else [],
        "max_grad_norm": 1.5,
        "max_attn_logit": 4.0,
        "tokens_per_sec": 1000.0,
        "wall_time": last * 0.1 + 1.0,
        "num_parameters": 12345,
        "model": {**model, "norm_numerics": NUMERICS},
        "learning_rate": training["learning_rate"],
        "seed": training["seed"],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def fake_sweep(out: Path, grid: dict, final_loss, skip=()) -> list[str]:
    """A sweep directory as ablate.py leaves it; `final_loss(values) -> float | None` decides each run's result and
    runs named in `skip` are left missing."""
    names, runs = [], []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        name = ",".join(f"{k}={report.fmt_value(v)}" for k, v in values.items())
        runs.append({"name": name, "grid": values})
        names.append(name)
        if name not in skip:
            fake_run(out / "runs" / name, values, final_loss(values))
    fields = {k: {"norm": "norm_type"}.get(k, k) for k in grid}
    sweep = {"base": "configs/tiny.yaml", "overrides": {"max_steps": 20}, "grid": grid, "fields": fields}
    sweep |= {"runs": runs, "hardware": {"cpu": "Test CPU", "cpu_cores": 2, "gpus": []}}
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return names


def _loss(values: dict) -> float | None:
    lr, seed = values["learning_rate"], values["seed"]
    if values.get("norm_placement") == "post" and lr >= 1e-2:
        return None
    base = {1e-3: 3.6, 3e-3: 3.4, 1e-2: 3.45}[lr]
    return base + (0.3 if values.get("norm_placement") == "post" else 0.0) + 0.01 * seed


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_report_end_to_end_on_a_synthetic_sweep(tmp_path):
    grid = {"norm": ["rms", "layer"], "norm_placement": ["pre", "post"], "learning_rate": [1e-3, 3e-3, 1e-2]}
    grid["seed"] = [0, 1]
    fake_sweep(tmp_path, grid, _loss)
    assert report.main([str(tmp_path)]) == 0

    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    for col in ("norm", "norm_placement", "learning_rate", "seed", "final_val_loss", "best_val_loss", "diverged"):
        assert col in rows[0]
    for col in ("spike_count", "max_grad_norm", "max_attn_logit", "tokens_per_sec", "wall_time"):
        assert col in rows[0]
    diverged = [r for r in rows if r["diverged"] == "true"]
    assert len(diverged) == 4 and all(r["norm_placement"] == "post" for r in diverged)

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
    assert "Test CPU" in md and "What this does and does not show" in md and "small-scale proxies" in md
    assert "2 seed(s) per setting" in md and "3 learning rates from 0.001 to 0.01" in md
    # Every figure report.md links exists and is a real PNG.
    links = [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    names = {Path(link).name for link in links}
    assert {"loss_curves.png", "final_loss_vs_lr.png", "lr_sensitivity.png", "resid_rms_depth.png"} <= names
    assert {"grad_norm_per_lr.png", "attn_logit_per_lr.png", "loss_per_lr.png"} <= names
    for link in links:
        assert _is_png(tmp_path / link), link


def test_report_with_missing_runs_and_a_single_seed(tmp_path):
    grid = {"norm": ["rms", "layer"], "learning_rate": [1e-3, 3e-3, 1e-2], "seed": [0]}
    names = fake_sweep(tmp_path, grid, _loss, skip=["norm=layer,learning_rate=0.01,seed=0"])
    # A run that failed (ablate.py wrote its error log) and one still running (metrics but no summary).
    failed = tmp_path / "runs" / names[0]
    (failed / "summary.json").unlink()
    (failed / "ablate_error.log").write_text("boom\n")
    running = tmp_path / "runs" / names[1]
    (running / "summary.json").unlink()
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "not ranked (a single seed gives no spread estimate)" in md
    assert "no variant is ranked" in md
    assert "1 missing" in md and "1 failed" in md and "1 incomplete" in md
    with (tmp_path / "summary.csv").open() as f:
        status = {r["run"]: r["status"] for r in csv.DictReader(f)}
    assert status[names[0]] == "failed" and status[names[1]] == "incomplete"
    assert status["norm=layer,learning_rate=0.01,seed=0"] == "missing"
    for link in [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]:
        assert _is_png(tmp_path / link)


def test_report_without_sweep_yaml_infers_the_grid_and_handles_no_finished_runs(tmp_path):
    for lr in (1e-3, 3e-3):
        fake_run(tmp_path / "runs" / f"lr{lr}", {"learning_rate": lr}, 3.5)
    assert report.main([str(tmp_path)]) == 0
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["learning_rate"] for r in rows] == ["0.001", "0.003"]
    assert "learning_rate" in (tmp_path / "report.md").read_text()

    empty = tmp_path / "empty"
    (empty / "runs" / "a").mkdir(parents=True)
    assert report.main([str(empty)]) == 0
    assert "No run has finished yet" in (empty / "report.md").read_text()
    assert report.main([str(tmp_path / "nope")]) == 2
