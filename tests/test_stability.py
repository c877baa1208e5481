"""Stability signals on constructed inputs: the spike detector, the divergence rule, and the probes' numbers against
direct computations on a tiny model."""

import math
import random

import numpy as np
import pytest
import torch

from model import NormGPTConfig, NormGPTForCausalLM
from model.modeling_normgpt import apply_rotary
from train.stability import (
    DivergenceMonitor,
    NonFiniteGuard,
    PlateauDetector,
    SpikeDetector,
    attention_logit_probe,
    block_sq_sums,
    max_attention_logit,
    mean_drift,
    norm_input_probe,
    residual_rms,
    snapshot_blocks,
    unigram_entropy,
    update_sq_sums,
)


def noisy_decay(n: int, seed: int = 0) -> list[float]:
    """A slowly falling loss with step-to-step noise of std 0.02, like the middle of a healthy run."""
    rng = random.Random(seed)
    return [3.0 * math.exp(-i / 2000) + 1.0 + rng.gauss(0, 0.02) for i in range(n)]


def test_spike_detector_flags_only_the_injected_spikes():
    losses = noisy_decay(600)
    losses[300] += 1.0  # ~35 sigma of the trailing window (noise plus trend)
    losses[450] += 0.5
    losses[500] += 0.05  # ~2 sigma: ordinary noise, not a spike
    detector = SpikeDetector()
    flagged = [step for step, loss in enumerate(losses, start=1) if detector.update(step, loss)]
    assert flagged == [301, 451]
    assert detector.spike_steps == [301, 451]


def test_spike_detector_uses_a_trailing_window_and_needs_history():
    detector = SpikeDetector(window=128, min_history=16)
    # a falling loss early on is not a spike, and nothing is flagged before 16 points of history
    assert not any(detector.update(i, 10.0 - i * 0.1 + (5.0 if i == 5 else 0.0)) for i in range(1, 17))
    # the mean and std come from the previous 128 steps only: an old plateau at a higher level is forgotten
    detector = SpikeDetector(window=128)
    for i in range(200):
        detector.update(i, 8.0 + 0.01 * (i % 2))
    for i in range(200, 400):
        detector.update(i, 2.0 + 0.01 * (i % 2))
    assert detector.update(400, 2.5)  # far above the recent window, though far below the old plateau


def test_spike_detector_ignores_non_finite_and_round_trips_state():
    detector = SpikeDetector()
    for i, loss in enumerate(noisy_decay(100)):
        detector.update(i, loss)
    assert not detector.update(100, float("nan"))
    restored = SpikeDetector()
    restored.load_state_dict(detector.state_dict())
    tail = noisy_decay(200)[100:]
    tail[50] += 2.0
    assert [detector.update(100 + i, x) for i, x in enumerate(tail)] == [
        restored.update(100 + i, x) for i, x in enumerate(tail)
    ]


def test_divergence_monitor_leaves_non_finite_losses_to_the_guard():
    monitor = DivergenceMonitor(warmup_steps=10, patience=10)
    assert monitor.update(1, 5.0) is None
    assert monitor.update(2, float("inf")) is None and monitor.update(3, float("nan")) is None
    assert list(monitor.recent) == [5.0]


def test_non_finite_guard_counts_streaks_on_the_device_and_stops_after_patience():
    guard = NonFiniteGuard(torch.device("cpu"), patience=3)
    flags, streaks = [], []
    for norm in (1.0, float("nan"), float("inf"), 2.0, float("nan"), float("nan"), float("nan")):
        flags.append(guard.check(torch.tensor(norm)).item())
        streaks.append(int(guard.streak))
    assert flags == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert streaks == [0, 1, 2, 0, 1, 2, 3] and int(guard.total) == 5
    assert guard.diverged(2, 6) is None
    assert guard.diverged(3, 7) == "3 optimizer steps in a row had a non-finite gradient norm (the last at step 7)"
    restored = NonFiniteGuard(torch.device("cpu"), patience=3)
    restored.load_state_dict(guard.state_dict())
    assert (int(restored.streak), int(restored.total)) == (3, 5)


def test_fused_adamw_leaves_everything_untouched_on_a_flagged_step():
    """What the trainer relies on for a device-side skip: found_inf makes the fused kernel a no-op."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    opt.found_inf = torch.ones(())
    opt.step()
    assert torch.equal(p.detach(), torch.ones(4)) and opt.state[p]["step"].item() == 0
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros(4))
    p.grad = torch.ones(4)
    opt.found_inf = torch.zeros(())
    opt.step()
    assert (p.detach() < 1).all() and opt.state[p]["step"].item() == 1


def plateau_stream(start: float, level: float, n: int, seed: int = 0) -> list[float]:
    """A loss that falls from `start` to `level` within 20 steps, then stays there with noise of std 0.02."""
    rng = random.Random(seed)
    return [level + (start - level) * math.exp(-i / 4) + rng.gauss(0, 0.02) for i in range(n)]


def feed(detector: PlateauDetector, losses: list[float]) -> PlateauDetector:
    for step, loss in enumerate(losses, start=1):
        detector.update(step, loss)
    return detector


def test_plateau_detector_calls_a_stall_at_the_unigram_entropy_only():
    entropy = 6.58
    stalled = feed(PlateauDetector(entropy, warmup_steps=30, max_steps=200), plateau_stream(8.3, 6.60, 200))
    assert "within 0.1 nats of the unigram entropy" in stalled.stalled()
    learning = feed(PlateauDetector(entropy, warmup_steps=30, max_steps=200), plateau_stream(8.3, 4.6, 200))
    assert learning.stalled() is None
    # a run that reaches the plateau and then goes on learning, slowly, is not stalled either
    passing = plateau_stream(8.3, 6.65, 100) + [6.65 - 0.004 * i for i in range(1, 101)]
    assert feed(PlateauDetector(entropy, warmup_steps=30, max_steps=200), passing).stalled() is None
    # nor is one that ends near the entropy while still falling through it
    falling = [8.3 - 0.009 * i for i in range(200)]  # passes 6.58 at step ~190
    assert feed(PlateauDetector(entropy, warmup_steps=30, max_steps=200), falling).stalled() is None
    # not enough steps after warm-up for a full window: nothing to judge; no entropy: nothing to compare with
    short = feed(PlateauDetector(entropy, warmup_steps=30, max_steps=200), plateau_stream(8.3, 6.6, 35))
    assert short.stalled() is None
    assert PlateauDetector(None, warmup_steps=0, max_steps=100).stalled() is None


def test_plateau_window_is_half_the_steps_after_warmup():
    assert PlateauDetector(6.0, warmup_steps=30, max_steps=200).window == 85
    assert PlateauDetector(6.0, warmup_steps=5, max_steps=20).window == 10


def test_plateau_state_round_trips():
    detector = feed(PlateauDetector(6.0, warmup_steps=2, max_steps=20), [7.0, 6.5, 6.05, 6.0, 5.98, 6.02] * 2)
    restored = PlateauDetector(6.0, warmup_steps=2, max_steps=20)
    restored.load_state_dict(detector.state_dict())
    for step in range(13, 20):
        detector.update(step, 6.01)
        restored.update(step, 6.01)
    assert restored.stalled() == detector.stalled() is not None


def test_unigram_entropy_of_known_distributions():
    assert unigram_entropy(np.array([3, 3, 3, 3]), 8) == pytest.approx(0.0)
    assert unigram_entropy(np.array([0, 1, 2, 3] * 10), 8) == pytest.approx(math.log(4))
    assert unigram_entropy(np.array([0, 0, 0, 1]), 2) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert unigram_entropy(np.array([], dtype=np.uint16), 8) is None


def test_divergence_when_loss_stays_at_init_after_warmup():
    monitor = DivergenceMonitor(warmup_steps=20, patience=10)
    losses = [6.0] + [6.0 + 0.001 * (step % 3 + 1) for step in range(2, 40)]  # stuck just above step 1's loss
    reasons = [monitor.update(step, loss) for step, loss in enumerate(losses, start=1)]
    # never before warm-up ends, then as soon as a full window of 10 steps after it is at/above step 1's loss
    assert reasons[:20] == [None] * 20
    assert reasons[20] is not None and "at or above the loss at initialization (6.0000)" in reasons[20]


def test_no_divergence_for_a_learning_run_even_with_a_spike():
    monitor = DivergenceMonitor(warmup_steps=20, patience=10)
    losses = noisy_decay(300)
    losses[150] = losses[0] + 1.0  # one step above init is a spike, not divergence
    assert all(monitor.update(step, loss) is None for step, loss in enumerate(losses, start=1))


def test_divergence_state_round_trips():
    monitor = DivergenceMonitor(warmup_steps=5, patience=3)
    for step in range(1, 5):
        monitor.update(step, 5.0 - step * 0.1)
    restored = DivergenceMonitor(warmup_steps=5, patience=3)
    restored.load_state_dict(monitor.state_dict())
    for step in range(5, 12):
        assert monitor.update(step, 6.0) == restored.update(step, 6.0)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    config = NormGPTConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
    )
    return NormGPTForCausalLM(config)


def test_probes_match_direct_computation(tiny):
    ids = torch.randint(0, 97, (3, 11))
    with attention_logit_probe(tiny.model.layers, max_sequences=2) as found:
        out = tiny(ids, output_hidden_states=True, use_cache=False)
    assert len(found) == 3
    rms = residual_rms(out.hidden_states)
    for i in range(3):
        torch.testing.assert_close(rms[i], out.hidden_states[i + 1].pow(2).mean().sqrt())
    # the largest causal logit of layer 1, recomputed from its input
    layer = tiny.model.layers[1]
    x = layer.input_layernorm(out.hidden_states[1])[:2]
    cos, sin = tiny.model.rotary_emb(x, torch.arange(11).expand(2, 11))
    attn = layer.self_attn
    q = attn.q_proj(x).view(2, 11, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(2, 11, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    mask = torch.ones(11, 11, dtype=torch.bool).tril()
    torch.testing.assert_close(found[1], scores.masked_fill(~mask, -1e9).amax())
    # hooks are gone afterwards
    assert all(not layer.self_attn.logits_probe._forward_hooks for layer in tiny.model.layers)


def test_mean_drift_of_constructed_vectors():
    centred = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    assert mean_drift(centred).item() == 0.0
    assert mean_drift(torch.full((3, 5, 8), -2.0)).item() == pytest.approx(1.0)  # a constant vector: all offset
    # offset c on a centred vector of RMS 1: |mean| / RMS = c / sqrt(1 + c^2); averaged over the vectors
    both = torch.stack([centred[0] / math.sqrt(2.5) + 0.5, centred[0] / math.sqrt(2.5)])
    assert mean_drift(both).item() == pytest.approx((0.5 / math.sqrt(1.25) + 0.0) / 2)
    assert mean_drift(torch.zeros(2, 4)).item() == 0.0  # a zero vector has no offset (not NaN)


@pytest.mark.parametrize("rms_impl", ["torch", "triton"])
def test_norm_input_drift_is_taken_where_each_norm_reads_the_stream(tiny, rms_impl):
    """Pre-norm: block i's attention norm reads the stream entering it (hidden state i), its MLP norm the stream plus
    the attention's output, which the fused add-and-norm kernel (rms_impl=triton) computes inside itself."""
    tiny.set_rms_impl(rms_impl)
    ids = torch.randint(0, 97, (2, 10))
    attention_outputs = []
    handles = [
        layer.self_attn.register_forward_hook(lambda m, args, out: attention_outputs.append(out[0]))
        for layer in tiny.model.layers
    ]
    with torch.no_grad(), norm_input_probe(tiny.model.layers) as found:
        out = tiny(ids, output_hidden_states=True, use_cache=False)
    for handle in handles:
        handle.remove()
    assert sorted(found) == list(range(6))  # two norms a block, three blocks; QK-norm is no norm of the stream
    h = out.hidden_states
    for i in range(3):
        torch.testing.assert_close(found[2 * i], mean_drift(h[i]))
        torch.testing.assert_close(found[2 * i + 1], mean_drift(h[i] + attention_outputs[i]))
    assert all(not norm._forward_pre_hooks for layer in tiny.model.layers for norm in layer.children())


def test_max_attention_logit_respects_cache_offset_and_padding():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)  # 3 new queries after 2 cached keys
    scores = q @ k.transpose(-1, -2) / 2.0
    allowed = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)
    torch.testing.assert_close(max_attention_logit(q, k, None, 4), scores.masked_fill(~allowed, -1e9).amax())
    pad = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    pad[..., 0] = False  # the first key is padding
    expected = scores.masked_fill(~(allowed & pad), -1e9).amax()
    torch.testing.assert_close(max_attention_logit(q, k, pad, 4), expected)


def test_block_grad_and_update_norms(tiny):
    ids = torch.randint(0, 97, (2, 9))
    tiny(ids, labels=ids).loss.backward()
    blocks = tiny.model.layers
    grads = block_sq_sums(blocks, "grad").sqrt()
    expected = torch.stack([torch.cat([p.grad.flatten() for p in b.parameters()]).norm() for b in blocks])
    torch.testing.assert_close(grads, expected)
    before = snapshot_blocks(blocks)
    torch.optim.SGD(tiny.parameters(), lr=0.1).step()
    updates = update_sq_sums(blocks, before).sqrt()
    torch.testing.assert_close(updates, 0.1 * expected)  # SGD moves each block by lr * its gradient


def test_default_patience_is_as_long_as_warmup():
    assert DivergenceMonitor(warmup_steps=30).patience == 30
    assert DivergenceMonitor(warmup_steps=3).patience == 10


# ---------------------------------------------------------------------------------------------------------------------
# Run-wide numbers: one list (train/run_directory.py RUN_METRICS) from the trainer's fold to the sweep report. A new
# one is a probe in train/stability.py, an entry in RUN_METRICS with its Summary field, and a test here: 3 files.


def test_run_metrics_fold_the_largest_finite_probe_value():
    from train.run_directory import RUN_METRICS

    logits = next(m for m in RUN_METRICS if m.from_rows == "attn_logit_max")
    values: dict[str, float] = {}
    for row in ({"attn_logit_max": [1.0, float("nan")]}, {"attn_logit_max": [3.0, 2.0]}, {"loss": 1.0}):
        for metric in RUN_METRICS:
            metric.fold(values, row)
    assert values == {logits.key: 3.0}  # metrics without from_rows are the trainer's own; nan is skipped


def test_every_run_metric_reaches_the_summary_the_csv_and_the_report(tmp_path):
    """Each RUN_METRICS entry is a Summary field, a summary.csv column and a column of both report tables, combined
    over a variant's runs as it says (sum or max), with no line of the report written for it by name. (And the
    report's eps is the summary's, which the norm registry gave it.)"""
    import csv
    import dataclasses

    from train.run_directory import RUN_METRICS, RunStatus, Summary
    from train.sweep import report
    from train.sweep.directory import RecordedRun, SweepRecord, write_sweep_record

    assert {m.key for m in RUN_METRICS} <= {f.name for f in dataclasses.fields(Summary)}
    runs = []
    for seed in (0, 1):
        runs.append(RecordedRun(f"seed={seed}", {"seed": seed}))
        values = {m.key: (seed + 1) * (1 if m.digits is None else 1.25) for m in RUN_METRICS}
        summary = Summary(RunStatus.COMPLETED, steps=4, max_steps=4, init_val_loss=5.0, final_val_loss=4.0, **values)
        summary.model = {"norm_type": "dyt", "norm_placement": "pre", "rms_norm_eps": 1e-6, "norm_eps": None}
        (tmp_path / "runs" / runs[-1].name).mkdir(parents=True)
        summary.write(tmp_path / "runs" / runs[-1].name)
    write_sweep_record(tmp_path, SweepRecord(grid={"seed": [0, 1]}, runs=runs, fields={"seed": "seed"}))
    report.write_report(tmp_path)
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    text = (tmp_path / "report.md").read_text()
    for m in RUN_METRICS:
        assert [row[m.key] for row in rows] == [str((s + 1) * (1 if m.digits is None else 1.25)) for s in (0, 1)]
        combined = {"sum": 3, "max": 2}[m.across_runs] * (1 if m.digits is None else 1.25)
        cell = report.metric_text(m, combined)
        results = next(line for line in text.split("## Results")[1].splitlines() if line.startswith("| all runs |"))
        assert f"| {cell} |" in results, (m.key, results)
        assert m.label in text.split("## Runs")[1].splitlines()[2]  # the runs table's header
    assert "| all runs | dyt | pre | none |" in text  # the eps the registry gave the summary: DyT has none
