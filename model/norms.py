"""The normalization layers, their registry, and the sentence each one gives a report about its numerics.

A norm is a config string (`norm_type`) resolved once per norm of the model, by `build_norm`, through the `NORMS`
registry, which also says where in the block the norm sits (`NORM_POSITIONS`): a norm may be set up differently
there (DyT's alpha before attention, as Zhu et al. 2025 do for LLMs). Each class
declares what reports must say about it (`numerics`, `has_eps`) and initialises its own parameters
(`reset_parameters`), so the model code never asks which norm it holds. Each registry entry says how model cards name
it and which stock layer, if any, computes the same function (what the export to stock architectures reads).

Adding a norm is one class, one registry entry and one test; a script may also add one at runtime with
`register_norm`, before it builds a config or calls the trainer: the config's validation, the trainer's `--norm`
choices, model cards and reports read the registry when they run, not when they are imported.

This file is copied next to every saved checkpoint (remote code): it imports only the library, torch and its
same-directory sibling.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .rmsnorm_triton import HAS_TRITON, fused_add_rms_norm, fused_rms_norm, rms_norm_reference, triton_can_run

# rms_impl=auto, by measurement: for eager and for compiled execution, the row widths from which the fused Triton
# kernel beats the PyTorch path there (None: at no width). From the first GPU measurements (one H200, torch 2.11,
# Triton 3.6, bf16; the decision and its numbers are in docs/benchmarks.md):
# - eager, the PyTorch path is several kernels: the fused kernel wins at every width measured (forward 8.6-12.8x,
#   forward+backward 2.0-12.5x at N = 1024-32768, 32768 rows), and the 124M step runs 237k against 208k tokens/s;
# - compiled, inductor fuses the PyTorch path into its neighbours, and it wins at every width measured
#   (forward+backward 0.48-0.98x for the old kernel at N = 1024-32768) and in the 124M step (405k against 386k
#   tokens/s), so `rms` compiled is never slower than with rms_impl=torch: it is the same graph.
# Re-measure with scripts/bench_step.py and scripts/bench_norm.py after a kernel change; a width where the kernel
# wins compiled becomes a threshold here.
AUTO_KERNEL_FROM_WIDTH = {"eager": 1, "compiled": None}


def auto_uses_kernel(width: int, device_type: str, compiling: bool) -> bool:
    """Whether rms_impl=auto runs the fused kernel for rows of `width` on `device_type` (only CUDA has it)."""
    threshold = AUTO_KERNEL_FROM_WIDTH["compiled" if compiling else "eager"]
    return device_type == "cuda" and threshold is not None and width >= threshold


class Norm(nn.Module):
    """A norm layer of the residual stream.

    `add_forward` is the residual add followed by the norm; a subclass that can fuse the two (RMSNorm on the Triton
    path) overrides it, so the block never branches on the norm type; while a forward pre-hook is registered (a
    stability probe of the norm's input) it must call the norm on the sum, so the hook sees it. `numerics` says in
    one sentence where the statistics are computed and in which dtype; `has_eps` whether an epsilon takes part at
    all. Reports quote both.
    """

    numerics = ""
    has_eps = True

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (norm(x + residual), x + residual)."""
        hidden = x + residual
        return self(hidden), hidden

    def reset_parameters(self) -> None:
        """Unit gain and zero bias: the norm starts as a pure normalization. `transformers.initialization` skips
        tensors that `from_pretrained` already loaded."""
        if getattr(self, "weight", None) is not None:
            init.ones_(self.weight)
        if getattr(self, "bias", None) is not None:
            init.zeros_(self.bias)

    def stock_state_dict(self) -> dict[str, torch.Tensor]:
        """This norm's parameters as the stock layer its registry entry names (`NormSpec.stock`) stores them, keyed
        relative to the module. The default is its own state; a norm that computes the stock layer's function with
        parameters of another shape (a gain shared by all features, say) maps them here."""
        return self.state_dict()


RMS_IMPLS = ("auto", "triton", "torch")  # RMSNorm's kernel choices (`impl`): a runtime option, never saved


class RMSNorm(Norm):
    """Root-mean-square norm (Zhang & Sennrich 2019) with Llama numerics.

    `y = weight * (x * rsqrt(mean(x^2, -1) + eps)).to(x.dtype)`:
    - the mean of squares and the rsqrt are computed in float32 whatever the input dtype, because squaring bf16/fp16
      activations loses most of their mantissa (and overflows fp16 near 256);
    - eps sits inside the square root, so rows of zeros give zeros, not NaN;
    - the normalized value is cast back to the input dtype *before* the weight multiply (as in Llama/HF), so a bf16
      model multiplies in bf16; the result has the input's dtype.
    There is no mean subtraction and no bias: that is the whole difference from LayerNorm.

    `impl` picks the kernel, never the numerics: `auto` takes whichever path `auto_uses_kernel` says was measured
    faster for the row width and for eager or compiled execution, `triton` forces the fused Triton kernel (an error
    where it cannot run), `torch` forces PyTorch.
    """

    numerics = (
        "mean of squares and rsqrt in float32, normalized value cast back to the input dtype before the weight "
        "multiply (Llama); eps inside the square root"
    )

    def __init__(self, hidden_size: int, eps: float = 1e-6, impl: str = "auto") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.impl = impl

    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.impl == "torch":
            return False
        if self.impl == "auto":
            return HAS_TRITON and auto_uses_kernel(x.shape[-1], x.device.type, torch.compiler.is_compiling())
        if not triton_can_run(x):
            raise RuntimeError(
                f"rms_impl='triton' cannot run on a {x.device.type} tensor here: it needs Triton and a CUDA device "
                "(or TRITON_INTERPRET=1 on CPU); use rms_impl='auto' or 'torch'"
            )
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            return fused_rms_norm(x, self.weight, self.eps)
        return rms_norm_reference(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One pass over memory instead of three (read x and residual, write the sum, read it again to normalize).
        # A forward pre-hook (a stability probe of the norm's input) sees the sum only on the unfused path.
        if self._use_triton(x) and not self._forward_pre_hooks:
            return fused_add_rms_norm(x, residual, self.weight, self.eps)
        return super().add_forward(x, residual)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, impl={self.impl}"


class LayerNorm(Norm):
    """LayerNorm (Ba et al. 2016): `(x - mean) / sqrt(var + eps) * weight + bias`. The constructor follows
    `nn.LayerNorm`: `elementwise_affine=False` drops both parameters (OLMo 1's non-parametric LayerNorm), `bias=False`
    keeps only the gain."""

    numerics = (
        "F.layer_norm: mean and variance in float32 for half-precision inputs, result and affine in the input dtype; "
        "eps inside the square root"
    )

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        affine = f"weight={self.weight is not None}, bias={self.bias is not None}"
        return f"{self.normalized_shape[0]}, eps={self.eps}, {affine}"


class PartialRMSNorm(Norm):
    """pRMSNorm (Zhang & Sennrich 2019): the RMS is estimated from the first `ceil(fraction * d)` features only and
    scales all of them; otherwise the numerics of RMSNorm above."""

    numerics = (
        "RMS of the first p*d features in float32, normalized value cast back to the input dtype before the weight "
        "multiply; eps inside the square root"
    )

    def __init__(self, hidden_size: int, fraction: float = 0.0625, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.k = max(1, math.ceil(fraction * hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf[..., : self.k].pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (xf * rstd).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, k={self.k}, eps={self.eps}"


class DyT(Norm):
    """Dynamic Tanh (Zhu et al. 2025): `weight * tanh(alpha * x) + bias` with a learnable scalar alpha, or without the
    bias (`bias=False`, as their LLaMA code has it). No statistics at all, so no reduction over the features and no
    eps: it squashes outliers instead of rescaling rows. Every parameter starts at a constant, so a DyT model draws
    no random numbers its RMSNorm twin does not (seeds stay paired across norms)."""

    numerics = "no statistics and no eps: tanh(alpha * x) in the input dtype, then the affine"
    has_eps = False

    def __init__(self, hidden_size: int, alpha_init: float = 0.5, bias: bool = True) -> None:
        super().__init__()
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.weight * torch.tanh(self.alpha * x)
        return y + self.bias if self.bias is not None else y

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init.constant_(self.alpha, self.alpha_init)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, alpha_init={self.alpha_init}, bias={self.bias is not None}"


class Identity(Norm):
    """No normalization: the negative control of an ablation, and the slot of a norm a placement does not have."""

    numerics = "no normalization"
    has_eps = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


STOCK_LAYERS = {
    "rms": "RMSNorm with Llama's numerics: weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype), a gain per feature",
    "layer": "LayerNorm (F.layer_norm), a gain and a bias per feature; a norm without them has them at 1 and 0",
}


# Where a norm of the residual stream sits, as the blocks tell `build_norm`: before the attention or the MLP reads the
# stream (pre- and peri-norm), on a sublayer's output (peri-norm) or on the sum of the stream and a sublayer's output
# (post-norm: `attention_output` and `mlp_output` too), or on the stream leaving the last block (`final`).
NORM_POSITIONS = ("attention_input", "mlp_input", "attention_output", "mlp_output", "final")


class NormSpec(NamedTuple):
    """A registry entry: how to build the norm from a config and its position (one of NORM_POSITIONS, or None where
    no position is meant), how reports and model cards name it, and the stock layer that computes exactly what it
    computes (a key of STOCK_LAYERS), which the export to stock architectures (Llama, Qwen3, StableLM, ...) needs;
    `no_stock` says why there is none, after "norm_type=<name>: ". A builder of the config alone is accepted too: the
    norm is then the same everywhere."""

    build: Callable[..., Norm]  # (config, position) -> module; the config is a NormGPTConfig (typed loosely: see NORMS)
    title: str
    tag: str  # the Hub tag of a model that uses it
    stock: str | None = None
    no_stock: str = "its registry entry declares no stock layer that computes it"


# configuration_normgpt.py imports this file for the list of names, so the builders take the config untyped. The
# kernel RMSNorm runs (`impl`) is not part of a model: the model sets it at runtime (`set_rms_impl`).
NORMS: dict[str, NormSpec] = {
    "rms": NormSpec(lambda c: RMSNorm(c.hidden_size, c.rms_norm_eps), "RMSNorm", "rmsnorm", stock="rms"),
    "layer": NormSpec(
        lambda c: LayerNorm(c.hidden_size, c.rms_norm_eps), "LayerNorm (gain and bias)", "layernorm", stock="layer"
    ),
    "layer_nobias": NormSpec(
        lambda c: LayerNorm(c.hidden_size, c.rms_norm_eps, bias=False),
        "LayerNorm (gain, no bias)",
        "layernorm",
        stock="layer",
    ),
    "layer_noaffine": NormSpec(
        lambda c: LayerNorm(c.hidden_size, c.rms_norm_eps, elementwise_affine=False),
        "LayerNorm without parameters (OLMo)",
        "layernorm",
        stock="layer",
    ),
    "prms": NormSpec(
        lambda c: PartialRMSNorm(c.hidden_size, c.prms_fraction, c.rms_norm_eps),
        "partial RMSNorm",
        "prmsnorm",
        no_stock="no stock class has a partial RMSNorm (the RMS of the first prms_fraction of the features)",
    ),
    "dyt": NormSpec(
        lambda c, position: DyT(
            c.hidden_size, c.dyt_attention_alpha_init if position == "attention_input" else c.dyt_alpha_init, c.dyt_bias
        ),
        "Dynamic Tanh (DyT)",
        "dyt",
        no_stock="no stock class has a DyT layer (Dynamic Tanh)",
    ),
    "none": NormSpec(
        lambda c: Identity(),
        "none (no normalization)",
        "no-norm",
        no_stock="every stock class normalizes its blocks (no normalization)",
    ),
}
BUILTIN_NORMS = frozenset(NORMS)  # those this file defines: a copy of it (remote code) knows no others


def register_norm(name: str, spec: NormSpec) -> None:
    """Make `name` a `norm_type`: the model builds it, the config accepts it, the trainer's `--norm` offers it, and
    cards, reports and the export read its entry. Call it before building a config that names it. A model saved with
    it loads only where it is registered too: the model code saved beside the weights does not define it."""
    if not isinstance(spec, NormSpec):
        raise TypeError(f"register_norm({name!r}, ...) takes a NormSpec, got {type(spec).__name__}")
    if name in NORMS:
        raise ValueError(f"norm_type {name!r} is already registered")
    if spec.stock is not None and spec.stock not in STOCK_LAYERS:
        raise ValueError(f"unknown stock layer {spec.stock!r} for norm_type {name!r}; valid: {', '.join(STOCK_LAYERS)}")
    NORMS[name] = spec


@functools.cache
def takes_position(build: Callable[..., Norm]) -> bool:
    """Whether a builder takes the norm's position after the config (builders written before positions existed
    take the config alone)."""
    try:
        params = list(inspect.signature(build).parameters.values())
    except (TypeError, ValueError):  # no signature to read: assume the current form
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def build_norm(config: Any, position: str | None = None) -> Norm:
    """The one place a norm name becomes a module: the norm at `position` (NORM_POSITIONS; None: no position in
    particular, e.g. to read the class's declarations)."""
    if config.norm_type not in NORMS:
        raise ValueError(f"unknown norm_type {config.norm_type!r}; valid: {', '.join(NORMS)}")
    if position is not None and position not in NORM_POSITIONS:
        raise ValueError(f"unknown norm position {position!r}; valid: {', '.join(NORM_POSITIONS)}")
    build = NORMS[config.norm_type].build
    return build(config, position) if takes_position(build) else build(config)


def norm_eps(config: Any) -> float | None:
    """The eps of the config's norm, None when that norm has none (DyT, none)."""
    return config.rms_norm_eps if build_norm(config).has_eps else None


def describe_norms(config: Any) -> str:
    """Everything a report must say about normalization, in one line: which norm, where, eps, and the numerics (and
    DyT's setup, and the embedding scale, where a config has them)."""
    norm = build_norm(config)
    eps = f"eps={config.rms_norm_eps:g}" if norm.has_eps else "no eps"
    parts = [f"{config.norm_type} norm, {config.norm_placement} placement, {eps} ({norm.numerics})"]
    if isinstance(norm, DyT):
        attention, other = config.dyt_attention_alpha_init, config.dyt_alpha_init
        if attention == other:
            alpha = f"alpha init {other:g}"
        else:
            alpha = f"alpha init {attention:g} before attention, {other:g} elsewhere"
        parts.append(f"DyT {alpha}, {'with' if config.dyt_bias else 'no'} bias")
    if getattr(config, "embedding_scale", False):
        parts.append(f"embeddings times a learnable scalar (init {config.embedding_scale_init:g})")
    if config.qk_norm:
        parts.append(f"qk_norm: RMSNorm per head, eps={config.rms_norm_eps:g}")
    if config.z_loss:
        parts.append(f"z_loss={config.z_loss:g}")
    return "; ".join(parts)


__all__ = [
    "BUILTIN_NORMS",
    "NORMS",
    "NORM_POSITIONS",
    "RMS_IMPLS",
    "STOCK_LAYERS",
    "DyT",
    "NormSpec",
    "Identity",
    "LayerNorm",
    "Norm",
    "PartialRMSNorm",
    "RMSNorm",
    "auto_uses_kernel",
    "build_norm",
    "describe_norms",
    "norm_eps",
    "register_norm",
]
