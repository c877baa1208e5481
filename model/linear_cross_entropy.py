"""The causal-LM loss of the output layer without its logits: cross-entropy of `hidden @ weight.T`, computed a chunk of
rows at a time, with the gradients computed chunk by chunk in the same pass.

Why: the output layer is the widest matrix of a small model. For the 124M preset (768 features, 50,304 tokens) the
plain path holds, for one micro-batch of 16 x 1024 positions, the bf16 logits (1.6 GB), their float32 copy (3.3 GB),
the log-softmax the backward keeps (3.3 GB) and, in the backward, the float32 and bf16 gradients of the logits: the
largest tensors of the whole step, written and read several times. Here the logits of one chunk of rows exist at a
time (`CHUNK_BYTES` of float32), and nothing of the size of the logits outlives the chunk.

How: the loss is a scalar, so its gradient with respect to the hidden states and the weight can be computed in the
forward, chunk by chunk, and stored (they are as large as the inputs, not as the logits); the backward multiplies them
by the incoming gradient. No chunk's logits are recomputed, so the FLOPs are those of the plain path: one matmul for
the logits, two for the gradients.

Numerics, as `NormGPTForCausalLM.causal_lm_loss` computes them:
- the logits are a matmul in the compute dtype (the autocast dtype when autocast is on, else the hidden states'),
  turned into float32 before log-sum-exp and softmax;
- the loss is the mean over the target positions (or the sum divided by `num_items_in_batch`), plus
  `z_loss * logsumexp^2` per position when the z-loss is on;
- the gradient of the logits is computed in float32 and rounded to the compute dtype once, as autograd does on the
  plain path. The weight's gradient is one matmul per chunk, each rounded to the compute dtype and summed in float32
  (the plain path rounds one matmul over all rows), so the two paths agree to that rounding; in float32 they agree to
  float32 rounding.

This file is copied next to saved checkpoints with its siblings (remote code): it imports only torch.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label of a position without a loss (padding, the end of a sequence), as everywhere in HF
CHUNK_BYTES = 256 * 2**20  # float32 logits of one chunk: 1334 rows of the 124M model's 50,304 tokens


def rows_per_chunk(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows whose float32 logits fit in `chunk_bytes`: big enough for efficient matmuls, small next to the batch."""
    return max(1, chunk_bytes // (4 * vocab_size))


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets for every position of `labels` [B, T], flattened to [B*T]: position t predicts token t+1,
    and the last position of each sequence has none (IGNORE_INDEX). The hidden states are then used unsliced."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)


def _chunk_loss_and_grad(h, w, targets, z_loss: float, scale, with_grad: bool):
    """One chunk: the summed loss of its target rows, and (with_grad) the gradient of the logits, already multiplied
    by `scale` (1 / the loss's divisor), in the compute dtype."""
    logits = (h @ w.t()).float()  # [rows, V]
    lse = torch.logsumexp(logits, dim=-1)
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)[:, None]
    row_loss = lse - logits.gather(1, safe).squeeze(1)
    if z_loss:
        row_loss = row_loss + z_loss * lse.square()
    loss = torch.where(valid, row_loss, 0.0).sum()
    if not with_grad:
        return loss, None
    # d(row loss)/d(logits) = softmax * (1 + 2 z lse) - one_hot(target), zero on rows without a target
    row_scale = torch.where(valid, scale, 0.0)
    grad = logits.sub_(lse[:, None]).exp_().mul_(((1 + 2 * z_loss * lse) * row_scale)[:, None])
    grad.scatter_add_(1, safe, -row_scale[:, None])
    return loss, grad.to(h.dtype)


class LinearCrossEntropy(torch.autograd.Function):
    """loss = cross_entropy(hidden @ weight.T, targets) / divisor, chunk by chunk; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, z_loss: float, compute_dtype: torch.dtype, rows: int):
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        scale = 1.0 / divisor
        total = hidden.new_zeros((), dtype=torch.float32)
        dh = torch.empty_like(h)
        # float32, as the weight's own gradient is; only if asked for (a frozen output layer needs none)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for start in range(0, h.shape[0], rows):
            h_chunk = h[start : start + rows]
            loss, grad = _chunk_loss_and_grad(h_chunk, w, targets[start : start + rows], z_loss, scale, True)
            total = total + loss
            dh[start : start + rows] = grad @ w
            if dw is not None:
                dw += (grad.t() @ h_chunk).float()
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_loss = grad_loss.float()
        grad_weight = (dw * grad_loss).to(weight_dtype) if dw is not None else None
        return (dh.float() * grad_loss).to(hidden_dtype), grad_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    z_loss: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of the logits `hidden @ weight.T` ([N, D] @ [D, V]) against `targets` [N] (IGNORE_INDEX: no
    loss), averaged over the target rows or summed and divided by `num_items_in_batch`, plus the z-loss; the logits
    are never materialised beyond `rows` rows at a time (default: `rows_per_chunk`). Differentiable in `hidden` and
    `weight`. Under autocast the matmuls run in the autocast dtype, as `nn.Linear` would."""
    device_type = hidden.device.type
    # what autocast would run nn.Linear in: its dtype, except for float64 inputs, which it leaves alone
    autocast = torch.is_autocast_enabled(device_type) and hidden.dtype != torch.float64
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
    rows = rows or rows_per_chunk(weight.shape[0])
    if num_items_in_batch is None:
        divisor = (targets != IGNORE_INDEX).sum().float()
    else:
        divisor = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=hidden.device)
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return LinearCrossEntropy.apply(hidden, weight, targets, divisor, z_loss, compute_dtype, rows)
        # No gradient wanted (evaluation): the loss alone, chunk by chunk.
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        total = sum(
            _chunk_loss_and_grad(h[s : s + rows], w, targets[s : s + rows], z_loss, None, False)[0]
            for s in range(0, h.shape[0], rows)
        )
        return total / divisor
