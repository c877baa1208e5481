"""Stability signals on constructed inputs: the spike detector, the divergence rule, and the probes' numbers against
direct computations on a tiny model."""

import math
import random

import pytest
import torch

from model import NormGPTConfig, NormGPTForCausalLM
from model.modeling_normgpt import apply_rotary
from train.stability import DivergenceMonitor, SpikeDetector, block_sq_sums, probe, snapshot_blocks, update_sq_sums


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


def test_divergence_on_non_finite_loss():
    monitor = DivergenceMonitor(warmup_steps=10, patience=10)
    assert monitor.update(1, 5.0) is None
    assert monitor.update(2, float("inf")) == "loss became non-finite (inf) at step 2"
    assert DivergenceMonitor(10, 10).update(1, float("nan")).startswith("loss became non-finite (nan)")


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


def test_probe_matches_direct_computation(tiny):
    ids = torch.randint(0, 97, (3, 11))
    with probe(tiny.model.layers, max_sequences=2) as found:
        out = tiny(ids, output_hidden_states=True, use_cache=False)
    assert len(found["resid_rms"]) == len(found["attn_logit_max"]) == 3
    for i in range(3):
        expected = out.hidden_states[i + 1].pow(2).mean().sqrt()
        torch.testing.assert_close(found["resid_rms"][i], expected)
    # the largest causal logit of layer 1, recomputed from its input
    layer = tiny.model.layers[1]
    x = layer.input_layernorm(out.hidden_states[1])[:2]
    cos, sin = tiny.model.rotary_emb(torch.arange(11).expand(2, 11), x.dtype)
    attn = layer.self_attn
    q = attn.q_proj(x).view(2, 11, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(2, 11, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    mask = torch.ones(11, 11, dtype=torch.bool).tril()
    torch.testing.assert_close(found["attn_logit_max"][1], scores.masked_fill(~mask, -1e9).amax())
    # hooks are gone afterwards
    assert all(not layer._forward_hooks and not layer.self_attn._forward_hooks for layer in tiny.model.layers)


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
