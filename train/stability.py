"""Stability signals, cheap enough to leave on: loss spikes, divergence, non-finite steps, the unigram plateau, and
per-block probes of gradients, updates, the residual stream and attention logits.

What is measured and why:
- loss spikes: a loss more than 6 standard deviations above the mean of the previous 128 steps (as OLMo-core flags
  them);
- divergence: a windowed mean loss still at or above the loss at initialization after warm-up, or too many
  non-finite steps in a row;
- non-finite steps: a step whose gradient norm is not finite is not applied (the fused AdamW kernel skips it on the
  device, as AMP's GradScaler does), and counted;
- the unigram plateau: a run whose loss sits at the entropy of the training tokens' unigram distribution has learnt
  token frequencies and nothing of the context (post-norm at high learning rates does this instead of diverging);
- max attention logit: Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
  instabilities"): runs whose largest pre-softmax logit grows past ~1e4 diverge;
- update-to-weight RMS ratio per block: how far each step moves the weights, relative to their size;
- residual-stream RMS after each block: pre-norm streams grow with depth, post-norm streams are pinned near 1;
- mean drift: |mean over features| / RMS of each token's vector, averaged over tokens, of the residual stream after
  each block and of the input of each norm in the blocks. 0 for vectors centred on zero, 1 for constant ones (it
  never exceeds 1). RMSNorm does not subtract the mean, LayerNorm does: where the stream's vectors share a common
  offset, RMSNorm passes it on (Zhang & Sennrich 2019 argue re-centering is dispensable; this measures whether the
  offset grows).
The probes run on logging steps only, so the other steps do no extra work.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from model.norms import Norm

SPIKE_WINDOW = 128
SPIKE_SIGMAS = 6.0
SPIKE_MIN_HISTORY = 16  # below this the std of the window is too noisy to call anything a 6-sigma event
PLATEAU_BAND = 0.1  # nats: how close to the unigram entropy a loss must stay to count as the plateau
ENTROPY_MAX_TOKENS = 2**26  # above this, the unigram entropy is estimated from evenly spaced chunks


class SpikeDetector:
    """Flags a step whose loss exceeds mean + 6 std of the previous `window` losses. Non-finite losses are not spikes
    (the non-finite guard handles them) and are kept out of the window. Its state goes into checkpoints, so a resumed
    run flags the same steps."""

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
    """The windowed half of the divergence rule: after warm-up, the mean loss of the last `patience` steps (default:
    as many as the warm-up, at least 10) is still at or above the loss at initialization (it has learnt nothing, or
    lost what it learnt). Non-finite losses are left to `NonFiniteGuard`, which stops a run within one step."""

    def __init__(self, warmup_steps: int, patience: int | None = None) -> None:
        self.warmup_steps = warmup_steps
        # "stays" above: a window as long as warm-up (at least 10 steps), so a brief post-warm-up bump is forgiven
        self.patience = patience or max(10, warmup_steps)
        self.init_loss: float | None = None
        self.recent: deque[float] = deque(maxlen=self.patience)

    def update(self, step: int, loss: float) -> str | None:
        """Feed the loss of optimizer step `step` (1-based); returns the reason when the run has diverged."""
        if not math.isfinite(loss):
            return None
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


class PlateauDetector:
    """The unigram plateau: over the second half of the steps after warm-up (at least 10), the training loss sits
    within `band` nats of the unigram entropy of the training tokens and stays there: its mean is within the band,
    and its least-squares trend changes it by less than the band over that window. A run still falling through the
    plateau (a slow but learning run) moves by more than the band and is not stalled; so is a run merely noisy
    around it. Judged at the end of a run that trained to the end (`stalled`)."""

    def __init__(self, entropy: float | None, warmup_steps: int, max_steps: int, band: float = PLATEAU_BAND) -> None:
        self.entropy, self.warmup_steps, self.band = entropy, warmup_steps, band
        self.window = max(10, (max_steps - warmup_steps) // 2)
        self.recent: deque[float] = deque(maxlen=self.window)

    def update(self, step: int, loss: float) -> None:
        if step > self.warmup_steps and math.isfinite(loss):
            self.recent.append(loss)

    def stalled(self) -> str | None:
        """The reason the run counts as stalled, or None."""
        n = len(self.recent)
        if self.entropy is None or n < self.window:
            return None
        mean = sum(self.recent) / n
        centre = (n - 1) / 2
        slope = sum((i - centre) * (x - mean) for i, x in enumerate(self.recent)) / sum(
            (i - centre) ** 2 for i in range(n)
        )
        if abs(mean - self.entropy) <= self.band and abs(slope * (n - 1)) <= self.band:
            return (
                f"training loss of the last {n} steps stays at {mean:.4f} (trend {slope * (n - 1):+.4f} over them), "
                f"within {self.band:g} nats of the unigram entropy of the training tokens ({self.entropy:.4f}): "
                "it learnt token frequencies only"
            )
        return None

    def state_dict(self) -> dict:
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.recent = deque(state["recent"], maxlen=self.window)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float | None:
    """Entropy (nats) of the token frequencies: the loss of a model that predicts every token from its frequency
    alone. Exact up to ENTROPY_MAX_TOKENS tokens, estimated from 64 evenly spaced chunks beyond."""
    if len(tokens) == 0:
        return None
    if len(tokens) > ENTROPY_MAX_TOKENS:
        chunk = ENTROPY_MAX_TOKENS // 64
        starts = np.linspace(0, len(tokens) - chunk, 64).astype(np.int64)
        tokens = np.concatenate([tokens[s : s + chunk] for s in starts])
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class NonFiniteGuard:
    """Skips optimizer steps whose gradient norm is not finite; after `patience` of them in a row the run has
    diverged.

    `check` returns `found_inf` (1.0 for a bad step) as a device tensor for the fused AdamW kernel, which then leaves
    weights, moments and its step count untouched, and keeps the streak and total on the device: nothing here
    waits for the device (the trainer reads `streak` one step late). Under DDP and FSDP the gradient norm is the
    global one, so every rank skips the same steps.
    """

    def __init__(self, device: torch.device, patience: int) -> None:
        self.patience = patience
        self.streak = torch.zeros((), dtype=torch.int64, device=device)
        self.total = torch.zeros((), dtype=torch.int64, device=device)

    def check(self, grad_norm: torch.Tensor) -> torch.Tensor:
        bad = (~torch.isfinite(grad_norm.detach().float().reshape(()))).to(torch.int64)
        self.streak = (self.streak + bad) * bad
        self.total = self.total + bad
        return bad.float()

    def diverged(self, streak: int, step: int) -> str | None:
        if streak >= self.patience:
            return f"{streak} optimizer steps in a row had a non-finite gradient norm (the last at step {step})"
        return None

    def state_dict(self) -> dict:
        return {"total": int(self.total.item()), "streak": int(self.streak.item())}

    def load_state_dict(self, state: dict) -> None:
        self.total.fill_(int(state.get("total", 0)))
        self.streak.fill_(int(state.get("streak", 0)))


# ---------------------------------------------------------------------------------------------------------------------
# Probes


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


def residual_rms(hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """RMS of the residual stream after each block, from the model's own `output_hidden_states` (entry 0 is the
    embedding output, entry i the output of block i): [L], fp32."""
    return torch.stack([h.detach().float().pow(2).mean().sqrt() for h in hidden_states[1:]])


def mean_drift(x: torch.Tensor) -> torch.Tensor:
    """|mean over the last dim| / RMS over it, per vector, averaged over all vectors: a scalar in [0, 1], fp32."""
    x = x.detach().float()
    rms = x.pow(2).mean(-1).sqrt().clamp_min(torch.finfo(torch.float32).tiny)  # a zero vector counts as 0, not NaN
    return (x.mean(-1).abs() / rms).mean()


def stream_norms(blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """The norms of the residual stream in the blocks (their direct children; QK-norm, inside attention, is not
    one), block by block in the order the stream meets them."""
    return [m for block in blocks for m in block.children() if isinstance(m, Norm)]


@contextmanager
def norm_input_probe(blocks: Sequence[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """Hooks the input of every norm of the stream (`stream_norms`) for the forward passes inside the block; yields
    the dict that collects each norm's mean drift by its index there. A norm with a hook takes its unfused path
    (norms.py), so the fused add-and-norm kernel cannot hide its input."""
    found: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def on_input(module, args):
            with torch.no_grad():
                found[index] = mean_drift(args[0])

        return on_input

    handles = [norm.register_forward_pre_hook(hook(i)) for i, norm in enumerate(stream_norms(blocks))]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def max_attention_logit(
    query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None, max_sequences: int
) -> torch.Tensor:
    """The largest pre-softmax logit q.k/sqrt(d) over the positions each query may attend to, over the first
    `max_sequences` sequences (which bounds the cost of materialising the [b, H, T, S] scores SDPA never shows)."""
    q, k = query[:max_sequences].float(), key[:max_sequences].float()  # [b, H, T, D], [b, Hkv, S, D]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [b, H, S, D]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [b, H, T, S]
    T, S = scores.shape[-2:]
    # query i sits at position S - T + i of the keys: causal means key position <= that
    allowed = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(diagonal=S - T)
    if attn_mask is not None:
        allowed = allowed & attn_mask[:max_sequences].bool()
    return scores.masked_fill(~allowed, float("-inf")).amax()


@contextmanager
def attention_logit_probe(blocks: Sequence[nn.Module], max_sequences: int = 4) -> Iterator[list[torch.Tensor]]:
    """Hooks every block's query/key probe point (`self_attn.logits_probe`) for the forward passes inside the block;
    yields the list that collects one max logit per layer. Leave the block before backward, so recomputation under
    gradient checkpointing adds nothing."""
    found: list[torch.Tensor] = []

    def on_query_key(module, args, kwargs, output):
        with torch.no_grad():
            found.append(max_attention_logit(kwargs["query"], kwargs["key"], kwargs["attn_mask"], max_sequences))

    handles = [block.self_attn.logits_probe.register_forward_hook(on_query_key, with_kwargs=True) for block in blocks]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


class BlockProbes:
    """The probes of one logging step, in the order the step runs them: `forward` around the forward pass of the last
    micro-batch (its output must carry `hidden_states`), `before_update` after backward, `after_update` after the
    optimizer step, which returns the finished row fields. A new per-block signal is a function above and a line
    here; its run-wide maximum, in summary.json and the sweep report, is a `RunMetric` entry in
    train/run_directory.py (with its Summary field).

    `reduce` sums per-shard partial sums over processes (FSDP); identity otherwise."""

    def __init__(self, blocks: Sequence[nn.Module], reduce=lambda t: t, max_sequences: int = 4) -> None:
        self.blocks, self.reduce, self.max_sequences = blocks, reduce, max_sequences
        self.row: dict = {}

    def _norms(self, sq_sums: torch.Tensor) -> list[float]:
        return [round(v, 6) for v in self.reduce(sq_sums).sqrt().tolist()]

    @contextmanager
    def forward(self) -> Iterator[None]:
        with attention_logit_probe(self.blocks, self.max_sequences) as logits, norm_input_probe(self.blocks) as inputs:
            yield
        self._logits, self._norm_inputs = logits, [inputs[i] for i in sorted(inputs)]

    def after_forward(self, out) -> None:
        stream = out.hidden_states[1:]  # after each block
        self.row = {
            "resid_rms": [round(v, 5) for v in residual_rms(out.hidden_states).tolist()],
            "resid_mean_drift": [round(v, 5) for v in torch.stack([mean_drift(h) for h in stream]).tolist()],
            "norm_input_mean_drift": [round(v, 5) for v in torch.stack(self._norm_inputs).tolist()]
            if self._norm_inputs
            else [],
            "attn_logit_max": [round(float(v), 4) for v in torch.stack(self._logits).tolist()],
            "log_z": round(torch.logsumexp(out.logits.detach().float(), dim=-1).mean().item(), 5),
        }

    def before_update(self) -> None:
        self.row["grad_norm_blocks"] = self._norms(block_sq_sums(self.blocks, "grad"))
        self._before = snapshot_blocks(self.blocks)

    def after_update(self) -> dict:
        # ratio of L2 norms = ratio of RMS: both sums run over the same elements
        weight = self._norms(block_sq_sums(self.blocks, "param"))
        update = self._norms(update_sq_sums(self.blocks, self._before))
        del self._before
        self.row["update_ratio_blocks"] = [round(u / max(w, 1e-12), 8) for u, w in zip(update, weight, strict=True)]
        order = (
            "grad_norm_blocks",
            "update_ratio_blocks",
            "resid_rms",
            "resid_mean_drift",
            "norm_input_mean_drift",
            "attn_logit_max",
            "log_z",
        )
        return {key: self.row[key] for key in order}
