"""Model FLOPs per token and the GPU peaks that turn tokens/s into MFU (model FLOPs utilization)."""

from __future__ import annotations

from torch import nn

# Dense bf16 peak FLOP/s from vendor datasheets (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "4090": 165e12,
    "3090": 71e12,
}


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return None


def matmul_parameters(model: nn.Module) -> int:
    """Weights that take part in a matrix multiply per token: every nn.Linear (the output projection included),
    counted once even when tied to the embedding. The embedding lookup and the norms' elementwise gains are not
    matmuls."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def flops_per_token(n_matmul_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 per matmul weight, plus the attention scores and
    weighted sum, 12 * layers * width * sequence (PaLM, appendix B). Causal masking's skipped half is not subtracted,
    which is the usual MFU convention."""
    return 6 * n_matmul_params + 12 * num_layers * hidden_size * seq_len
