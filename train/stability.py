"""Stability signals, cheap enough to leave on: loss spikes, divergence, and per-block probes of gradients, updates,
the residual stream and attention logits. Everything here is read on logging steps only, so the training step itself
does no extra work on the others.

References for what is measured and why:
- loss spikes: a loss more than 6 standard deviations above the mean of the previous 128 steps (as OLMo-core flags
  them);
- max attention logit: Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
  instabilities"): runs whose largest pre-softmax logit grows past ~1e4 diverge;
- update-to-weight RMS ratio per block: how far each step moves the weights, relative to their size;
- residual-stream RMS after each block: pre-norm streams grow with depth, post-norm streams are pinned near 1.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

SPIKE_WINDOW = 128
SPIKE_SIGMAS = 6.0
SPIKE_MIN_HISTORY = 16  # below this the std of the window is too noisy to call anything a 6-sigma event


class SpikeDetector:
    """Flags a step whose loss exceeds mean + 6 std of the previous `window` losses. Non-finite losses are not spikes
    (they are divergence) and are kept out of the window. Its state goes into checkpoints, so a resumed run flags the
    same steps."""

    def __init__(self, window: int = SPIKE_WINDOW, sigmas: float = SPIKE_SIGMAS, min_history: int = SPIKE_MIN_HISTORY):
        self.window, self.sigmas, self.min_history = window, sigmas, min_history
        self.history: deque[float] = deque(maxlen=window)
        self.spike_steps: list[int] = []

    def update(self, step: int, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        spike = False
        if len(self.history) >= self.min_history:
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (n - 1))
            spike = loss > mean + self.sigmas * std
        if spike:
            self.spike_steps.append(step)
        self.history.append(loss)
        return spike

    def state_dict(self) -> dict:
        return {"history": list(self.history), "spike_steps": list(self.spike_steps)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.window)
        self.spike_steps = list(state["spike_steps"])


class DivergenceMonitor:
    """A run has diverged when its loss is non-finite, or when, after warm-up, the mean loss of the last `patience`
    steps (default: as many as the warm-up, at least 10) is still at or above the loss at initialization (it has
    learnt nothing, or lost what it learnt). Such a run is stopped: the rest of its budget would be wasted."""

    def __init__(self, warmup_steps: int, patience: int | None = None) -> None:
        self.warmup_steps = warmup_steps
        # "stays" above: a window as long as warm-up (at least 10 steps), so a brief post-warm-up bump is forgiven
        self.patience = patience or max(10, warmup_steps)
        self.init_loss: float | None = None
        self.recent: deque[float] = deque(maxlen=self.patience)

    def update(self, step: int, loss: float) -> str | None:
        """Feed the loss of optimizer step `step` (1-based); returns the reason when the run has diverged."""
        if not math.isfinite(loss):
            return f"loss became non-finite ({loss}) at step {step}"
        if self.init_loss is None:
            self.init_loss = loss  # step 1's loss is computed with the initial weights
        self.recent.append(loss)
        if step > self.warmup_steps and len(self.recent) == self.patience:
            mean = sum(self.recent) / len(self.recent)
            if mean >= self.init_loss:
                return (
                    f"mean loss of steps {step - self.patience + 1}-{step} ({mean:.4f}) is at or above the loss at "
                    f"initialization ({self.init_loss:.4f}) after warm-up"
                )
        return None

    def state_dict(self) -> dict:
        return {"init_loss": self.init_loss, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.init_loss = state["init_loss"]
        self.recent = deque(state["recent"], maxlen=self.patience)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def block_sq_sums(blocks: Sequence[nn.Module], what: str) -> torch.Tensor:
    """Per block, the sum of squares of every parameter's `.grad` (what="grad") or value (what="param"): [L], fp32.
    Under FSDP these are per-shard partial sums: the caller all-reduces them before taking the square root."""
    sums = []
    for block in blocks:
        tensors = [_local(p.grad if what == "grad" else p.detach()) for p in block.parameters()]
        tensors = [t for t in tensors if t is not None]
        sums.append(torch.stack([t.float().pow(2).sum() for t in tensors]).sum() if tensors else torch.zeros(()))
    return torch.stack(sums)


def snapshot_blocks(blocks: Sequence[nn.Module]) -> list[list[torch.Tensor]]:
    return [[_local(p.detach()).clone() for p in block.parameters()] for block in blocks]


def update_sq_sums(blocks: Sequence[nn.Module], before: list[list[torch.Tensor]]) -> torch.Tensor:
    """Per block, the sum of squares of (weights now - weights `before`): [L], fp32."""
    sums = []
    for block, old in zip(blocks, before, strict=True):
        diffs = [
            (_local(p.detach()).float() - o.float()).pow(2).sum() for p, o in zip(block.parameters(), old, strict=True)
        ]
        sums.append(torch.stack(diffs).sum() if diffs else torch.zeros(()))
    return torch.stack(sums)


@contextmanager
def probe(blocks: Sequence[nn.Module], max_sequences: int = 4) -> Iterator[dict[str, list]]:
    """Hooks for one forward pass: the RMS of the residual stream after each block and the largest pre-softmax
    attention logit per layer (over the first `max_sequences` sequences of the batch, which bounds the cost of
    materialising the [H, T, S] score matrix that SDPA never shows). Yields a dict the hooks fill."""
    found: dict[str, list] = {"resid_rms": [], "attn_logit_max": []}
    handles = []

    def on_block(module, args, output):
        found["resid_rms"].append(output.detach().float().pow(2).mean().sqrt())

    def on_attention(module, args, output):
        x, cos, sin, attn_mask = args[0][:max_sequences], args[1][:max_sequences], args[2][:max_sequences], args[3]
        with torch.no_grad():
            q, k = module.queries_and_keys(x, cos, sin)  # [b, H, T, D], [b, Hkv, T, D]
            k = k.repeat_interleave(module.num_heads // module.num_kv_heads, dim=1)  # [b, H, T, D]
            scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(module.head_dim)  # [b, H, T, T]
            T = scores.shape[-1]
            causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
            if attn_mask is not None:
                causal = causal & attn_mask[:max_sequences, :, -T:, -T:]
            found["attn_logit_max"].append(scores.masked_fill(~causal, float("-inf")).amax())

    for block in blocks:
        handles.append(block.register_forward_hook(on_block))
        handles.append(block.self_attn.register_forward_hook(on_attention))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
