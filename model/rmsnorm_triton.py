"""Fused RMSNorm (and residual-add + RMSNorm) with Llama numerics: host launchers, torch.library ops, autograd and
the public API. The Triton kernels are in ``rmsnorm_kernels.py``, the choice of their launch configurations in
``rmsnorm_tuning.py``.

Numerics (identical to ``rms_norm_reference`` below, i.e. Hugging Face ``LlamaRMSNorm``):

    rstd = 1 / sqrt(mean(float32(x) ** 2) + eps)        # sum of squares in float32, eps inside the sqrt
    y    = (weight * (float32(x) * rstd).to(x.dtype)).to(x.dtype)

The normalized value is rounded to the input dtype *before* the weight multiply, exactly like Llama. The
output dtype is always the input dtype: with a float32 weight and bfloat16 input PyTorch would promote the
product to float32; we (and the reference) cast it back, so a norm never silently changes the activation dtype.
Every multiply of two half-precision values is done in float32 and rounded once, which is bit-identical to
what PyTorch does for a bf16/fp16 elementwise multiply. Nothing is ever accumulated in bf16/fp16.

For the fused add, ``h = x + residual`` is computed in float32 and rounded to PyTorch's dtype for ``x + residual``
(x's dtype when the two match, float32 for a bf16 x and a float32 residual stream), written once, and that
rounded ``h`` is what gets normalized; y then has h's dtype, as ``add_rms_norm_reference`` gives.

Determinism: results are bit-for-bit reproducible for a given launch configuration. The configuration is chosen by
measurement per shape (``rmsnorm_tuning.py``) and changes the order of the row reductions and of dW's summation,
so ``kernel_choices()`` reports the choices a process made and ``pin_kernel_choices()`` makes a later process
(a resumed run) use the same ones.

torch.compile: with compiled Triton the ops are ``torch.library.triton_op``s, so the compiler sees the Triton
kernels themselves (no graph break, no opaque call; inductor launches them from its generated code, with the
configuration chosen here, but does not fuse neighbouring ops into them). Under the Triton interpreter (CPU tests)
they are opaque ``custom_op``s, because an interpreted kernel cannot be traced.

This file is copied next to saved Hugging Face checkpoints as remote code, with its two siblings: it imports only
the library and them, and imports cleanly without Triton (``HAS_TRITON`` is then False and only the PyTorch
reference functions are usable).
"""

import contextlib
import functools
import math
import os

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from .rmsnorm_kernels import HAS_TRITON
from .rmsnorm_tuning import (
    MEASURE_MIN_ELEMENTS,
    KernelConfig,
    Tuner,
    backward_space,
    can_measure,
    forward_space,
    kernels_version,
    measure_with,
    next_pow2,
)

if HAS_TRITON:
    from .rmsnorm_kernels import dw_column_sum_kernel, rms_norm_bwd_kernel, rms_norm_fwd_kernel, triton

    # TRITON_INTERPRET=1 at import time makes @triton.jit return interpreted functions that run on CPU tensors.
    INTERPRETED = type(rms_norm_fwd_kernel).__name__ == "InterpretedFunction"
    TUNER = Tuner(f"triton {triton.__version__}, kernels {kernels_version()}")
else:
    INTERPRETED = False
    TUNER = Tuner("no triton")

__all__ = [
    "HAS_TRITON",
    "add_rms_norm_reference",
    "fused_add_rms_norm",
    "fused_rms_norm",
    "kernel_choices",
    "pin_kernel_choices",
    "rms_norm_reference",
    "triton_can_run",
]


# ----------------------------------------------------------------------------------------------------------------
# Inputs and buffers
# ----------------------------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None, dy: torch.Tensor | None = None
) -> None:
    """Run once per op call (and at trace time, so torch.compile reports bad inputs before running anything)."""
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fused RMSNorm supports float32/bfloat16/float16 inputs, got {x.dtype}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fused RMSNorm supports float32/bfloat16/float16 weights, got {weight.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"fused RMSNorm needs a non-empty last dimension, got shape {tuple(x.shape)}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if residual is not None and (residual.shape != x.shape or residual.dtype not in _FLOAT_DTYPES):
        raise ValueError(
            f"residual must be a float tensor of x's shape: got {tuple(residual.shape)} {residual.dtype}, "
            f"x is {tuple(x.shape)}"
        )
    if dy is not None and dy.shape != x.shape:
        raise ValueError(f"dy shape {tuple(dy.shape)} does not match x shape {tuple(x.shape)}")
    if not triton_can_run(x):
        raise RuntimeError(
            f"fused RMSNorm kernels cannot run on a {x.device.type} tensor here (HAS_TRITON={HAS_TRITON}, "
            f"interpreter={INTERPRETED}); use rms_norm_reference instead"
        )


def _normalized_dtype(x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    """dtype of what gets normalized, and so of y: x's, or PyTorch's promotion of x + residual (an fp32 residual
    stream with bf16 block outputs gives fp32)."""
    return x.dtype if residual is None else torch.result_type(x, residual)


def _alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel must fully overwrite comes from here, so tests can poison them all with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _static_shape(t2: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) as Python ints. Launch configurations and grids are chosen per shape, so a torch.compile
    graph traced with symbolic sizes specializes on them here (a guard per shape, as a static graph has)."""
    return int(t2.shape[0]), int(t2.shape[1])


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with a unit column stride; a view whenever the leading dims can be merged."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])


@functools.cache
def _device_info(device: torch.device) -> tuple[str, int]:
    """(name for the tuning key, SM count). The interpreter runs programs one by one: call it one 'SM'."""
    if device.type != "cuda":
        return "interpreter", 1
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.multi_processor_count} SMs)", props.multi_processor_count


def _launch_device(x: torch.Tensor):
    """Triton launches on the current CUDA device, which need not be x's in a multi-GPU process. Not needed (and
    not possible without a GPU) while torch.compile traces with fake tensors."""
    if x.is_cuda and not is_fake(x):
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _real_tensors(device: torch.device):
    """Measuring needs real scratch tensors and direct kernel launches on `device`, also while torch.compile
    traces the ops with fake tensors (it calls them to learn their outputs' shapes, and that is when a
    configuration is chosen)."""
    from torch._library.triton import set_wrap_triton_enabled
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), set_wrap_triton_enabled(False), torch.no_grad(), torch.cuda.device(device):
        yield


# ----------------------------------------------------------------------------------------------------------------
# Launchers: one configuration, one set of tensors
# ----------------------------------------------------------------------------------------------------------------


def _launch_fwd(config: KernelConfig, x2, r2, weight, y, h, rstd, eps: float, has_residual: bool) -> None:
    n_rows, n_cols = _static_shape(x2)
    wrap_triton(rms_norm_fwd_kernel)[(triton.cdiv(n_rows, config.rows),)](
        x2,
        r2,
        weight,
        y,
        h,
        rstd,
        x2.stride(0),
        r2.stride(0),
        n_rows,
        n_cols,
        eps,
        HAS_RESIDUAL=has_residual,
        BLOCK_N=config.block_n,
        ROWS=config.rows,
        SINGLE_PASS=config.block_n >= n_cols,
        NUM_STAGES=config.num_stages,
        num_warps=config.num_warps,
    )


def bwd_num_programs(config: KernelConfig, n_rows: int, device: torch.device) -> int:
    """The persistent grid: programs_per_sm on every SM, never more programs than tiles."""
    return max(1, min(triton.cdiv(n_rows, config.rows), config.programs_per_sm * _device_info(device)[1]))


def _column_sum_blocks(n_cols: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) of the dW column sum: narrow column blocks so that ~100 programs share the partials even
    at N = 768, each walking a [BLOCK_P, BLOCK_C] tile of 4096 float32 values down the partial rows. Each column's
    summation order depends on BLOCK_P only, so the interpreter, whose cost is per program, takes all columns in
    one program and computes the same sums."""
    block_c = min(256, max(16, next_pow2(math.ceil(n_cols / 128))))
    return 4096 // block_c, next_pow2(n_cols) if INTERPRETED else block_c


def _launch_bwd(config: KernelConfig, dy2, x2, weight, rstd, dres2, dx, dw_partial, dw, has_dres: bool) -> None:
    n_rows, n_cols = _static_shape(x2)
    wrap_triton(rms_norm_bwd_kernel)[(dw_partial.shape[0],)](
        dy2,
        x2,
        weight,
        rstd,
        dres2,
        dx,
        dw_partial,
        dy2.stride(0),
        x2.stride(0),
        dres2.stride(0),
        n_rows,
        n_cols,
        HAS_DRES=has_dres,
        BLOCK_N=config.block_n,
        ROWS=config.rows,
        SINGLE_PASS=config.block_n >= n_cols,
        NUM_STAGES=config.num_stages,
        num_warps=config.num_warps,
    )
    block_p, block_c = _column_sum_blocks(n_cols)
    wrap_triton(dw_column_sum_kernel)[(triton.cdiv(n_cols, block_c),)](
        dw_partial, dw, dw_partial.shape[0], n_cols, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4
    )


# ----------------------------------------------------------------------------------------------------------------
# Choosing the configuration (rmsnorm_tuning.py decides; this part builds keys and measurements)
# ----------------------------------------------------------------------------------------------------------------


def _measurable(device: torch.device, n_rows: int, n_cols: int) -> bool:
    return n_rows * n_cols >= MEASURE_MIN_ELEMENTS and can_measure(device)


def _fwd_config(x2, residual2, weight, h_dtype: torch.dtype, eps: float) -> KernelConfig:
    n_rows, n_cols = _static_shape(x2)
    device = x2.device
    bucket = next_pow2(n_rows)
    r_dtype = residual2.dtype if residual2 is not None else None
    key = ("fwd", _device_info(device)[0], n_cols, bucket, x2.dtype, weight.dtype, r_dtype)

    def space():
        return forward_space(n_cols, bucket, x2.element_size())

    def measure(config: KernelConfig) -> float:
        with _real_tensors(device):
            if not scratch:
                make = functools.partial(torch.randn, n_rows, n_cols, device=device)
                w = torch.ones(n_cols, dtype=weight.dtype, device=device)
                scratch.extend([make(dtype=x2.dtype), make(dtype=r_dtype or x2.dtype), w, make(dtype=h_dtype)])
                scratch.extend([make(dtype=h_dtype), torch.empty(n_rows, device=device)])
            x, r, w, y, h, rstd = scratch
            return measure_with(lambda: _launch_fwd(config, x, r, w, y, h, rstd, eps, residual2 is not None))

    scratch: list[torch.Tensor] = []
    return TUNER.choose(key, space, measure if _measurable(device, n_rows, n_cols) else None)


def _bwd_config(x2, weight, has_dres: bool, dres_dtype: torch.dtype | None) -> KernelConfig:
    n_rows, n_cols = _static_shape(x2)
    device = x2.device
    bucket = next_pow2(n_rows)
    key = ("bwd", _device_info(device)[0], n_cols, bucket, x2.dtype, weight.dtype, dres_dtype)

    def space():
        return backward_space(n_cols, bucket, x2.element_size(), has_dres)

    def measure(config: KernelConfig) -> float:
        with _real_tensors(device):
            if not scratch:
                make = functools.partial(torch.randn, n_rows, n_cols, device=device)
                rstd = torch.rand(n_rows, device=device) + 0.5
                w = torch.ones(n_cols, dtype=weight.dtype, device=device)
                scratch.extend([make(dtype=x2.dtype), make(dtype=x2.dtype), w, rstd])
                scratch.extend([make(dtype=dres_dtype or x2.dtype), make(dtype=x2.dtype)])
            dy, x, w, rstd, dres, dx = scratch
            dw_partial = torch.empty(bwd_num_programs(config, n_rows, device), n_cols, device=device)
            dw = torch.empty_like(w)
            return measure_with(lambda: _launch_bwd(config, dy, x, w, rstd, dres, dx, dw_partial, dw, has_dres))

    scratch: list[torch.Tensor] = []
    return TUNER.choose(key, space, measure if _measurable(device, n_rows, n_cols) else None)


# ----------------------------------------------------------------------------------------------------------------
# The ops' implementations
# ----------------------------------------------------------------------------------------------------------------


def _rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns (y, rstd, h); h = x + residual is None without a residual."""
    _check_inputs(x, weight, residual)
    x2 = _as_rows(x)  # (M, N)
    h_dtype = _normalized_dtype(x, residual)
    y = _alloc(x.shape, h_dtype, x.device)
    rstd = _alloc(x.shape[:-1], torch.float32, x.device)
    h = _alloc(x.shape, h_dtype, x.device) if residual is not None else None
    if x2.shape[0] == 0:
        return y, rstd, h
    r2 = _as_rows(residual) if residual is not None else None
    weight = weight.contiguous()
    config = _fwd_config(x2, r2, weight, h_dtype, eps)
    with _launch_device(x):
        # x2 stands in for the residual and y for h when there is none: the kernel never touches them then.
        _launch_fwd(config, x2, x2 if r2 is None else r2, weight, y, y if h is None else h, rstd, eps, r2 is not None)
    return y, rstd, h


def _rms_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    dresidual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (dx, dw). dresidual, when given, is added to dx (the fused add's gradient into h)."""
    _check_inputs(x, weight, dresidual, dy)
    x2 = _as_rows(x)  # (M, N)
    dy2 = _as_rows(dy)  # (M, N); may be a stride-0 broadcast along rows, which the kernel reads fine
    n_rows, n_cols = _static_shape(x2)
    dx = _alloc(x.shape, x.dtype, x.device)
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    dres2 = _as_rows(dresidual) if dresidual is not None else None
    weight = weight.contiguous()
    config = _bwd_config(x2, weight, dres2 is not None, None if dres2 is None else dres2.dtype)
    dw_partial = _alloc((bwd_num_programs(config, n_rows, x.device), n_cols), torch.float32, x.device)
    dw = _alloc(weight.shape, weight.dtype, x.device)
    with _launch_device(x):
        dres2_or_placeholder = dy2 if dres2 is None else dres2  # never read without a residual gradient
        _launch_bwd(
            config, dy2, x2, weight, rstd.contiguous(), dres2_or_placeholder, dx, dw_partial, dw, dres2 is not None
        )
    return dx, dw


# ----------------------------------------------------------------------------------------------------------------
# torch.library ops and autograd
# ----------------------------------------------------------------------------------------------------------------
# None of the ops mutates or aliases its inputs. With compiled Triton they are triton_ops: their implementation is
# also their fake (shape) function, traced by torch.compile. Interpreted kernels cannot be traced, so there they are
# plain custom ops with the fake functions below.


def _fwd_fake(x, weight, eps):
    _check_inputs(x, weight)
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _add_fwd_fake(x, residual, weight, eps):
    _check_inputs(x, weight, residual)
    h_dtype = _normalized_dtype(x, residual)
    rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return x.new_empty(x.shape, dtype=h_dtype), rstd, x.new_empty(x.shape, dtype=h_dtype)


def _bwd_fake(dy, x, weight, rstd, dresidual):
    _check_inputs(x, weight, dresidual, dy)
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _define_op(name: str, fake):
    def define(fn):
        if HAS_TRITON and not INTERPRETED:
            return torch.library.triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op

    return define


def _register_ops() -> None:
    @_define_op("normgpt::rms_norm_fwd", _fwd_fake)
    def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        y, rstd, _ = _rms_norm_fwd(x, weight, eps)
        return y, rstd

    @_define_op("normgpt::add_rms_norm_fwd", _add_fwd_fake)
    def add_rms_norm_fwd(
        x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _rms_norm_fwd(x, weight, eps, residual)

    @_define_op("normgpt::rms_norm_bwd", _bwd_fake)
    def rms_norm_bwd(
        dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dresidual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _rms_norm_bwd(dy, x, weight, rstd, dresidual)

    def rms_norm_setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        _, rstd = output
        ctx.save_for_backward(x, weight, rstd)

    def rms_norm_backward(ctx, grad_y, grad_rstd):
        # rstd is an implementation detail the public API never returns, so grad_rstd is always zero/None.
        x, weight, rstd = ctx.saved_tensors
        dx, dw = torch.ops.normgpt.rms_norm_bwd(grad_y, x, weight, rstd, None)
        return dx, dw, None

    rms_norm_fwd.register_autograd(rms_norm_backward, setup_context=rms_norm_setup_context)

    def add_rms_norm_setup_context(ctx, inputs, output):
        x, residual, weight, _ = inputs
        _, rstd, h = output
        ctx.save_for_backward(h, weight, rstd)
        ctx.input_dtypes = (x.dtype, residual.dtype)

    def add_rms_norm_backward(ctx, grad_y, grad_rstd, grad_h):
        h, weight, rstd = ctx.saved_tensors
        dh, dw = torch.ops.normgpt.rms_norm_bwd(grad_y, h, weight, rstd, grad_h)
        return (*_split_dh(dh, ctx.input_dtypes), dw, None)

    add_rms_norm_fwd.register_autograd(add_rms_norm_backward, setup_context=add_rms_norm_setup_context)


def _split_dh(dh: torch.Tensor, input_dtypes: tuple[torch.dtype, torch.dtype]) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual feeds both the norm and whatever uses the new residual stream, so its total gradient is the
    norm's dx plus grad_h (added in the kernel); the add hands that same gradient to x and to residual, each in its
    own dtype (.to is a no-op where they match)."""
    return dh.to(input_dtypes[0]), dh.to(input_dtypes[1])


class _RMSNorm(torch.autograd.Function):
    """Eager calls skip the torch.library dispatch, which costs more host time than the launch itself (the ops
    are what torch.compile traces). Same implementations, same kernels, same configurations."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd, _ = _rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _rms_norm_bwd(grad_y, x, weight, rstd)
        return dx, dw, None


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        y, rstd, h = _rms_norm_fwd(x, weight, eps, residual)
        ctx.save_for_backward(h, weight, rstd)
        ctx.input_dtypes = (x.dtype, residual.dtype)
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        h, weight, rstd = ctx.saved_tensors
        dh, dw = _rms_norm_bwd(grad_y, h, weight, rstd, grad_h)
        return (*_split_dh(dh, ctx.input_dtypes), dw, None)


# A checkpoint's remote-code copy of this file may be imported alongside the project's own copy; the ops live in
# one process-wide registry, so the first copy registers them and later copies reuse them.
if not hasattr(torch.ops.normgpt, "rms_norm_fwd"):
    _register_ops()


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def triton_can_run(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``t``: a CUDA tensor, or a CPU tensor when the kernels were made for
    the Triton interpreter (TRITON_INTERPRET=1 set before this module, or triton, was first imported) and the
    variable is still set."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or (INTERPRETED and t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` (any rank, unit last-dim stride preferred) with Llama numerics.

    Differentiable in ``x`` and ``weight``. Returns a new contiguous tensor of x's shape and dtype.
    """
    if torch.compiler.is_compiling():
        return torch.ops.normgpt.rms_norm_fwd(x, weight, eps)[0]
    return _RMSNorm.apply(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual; return rms_norm(h), h`` in one pass (h is written once and never re-read).

    ``x`` and ``residual`` must have the same shape; their dtypes may differ, and then h and y take PyTorch's
    promoted dtype, exactly as ``add_rms_norm_reference``. Differentiable in all three tensors, including gradient
    flowing into the returned ``h`` from its later use as the residual stream.
    """
    if torch.compiler.is_compiling():
        y, _, h = torch.ops.normgpt.add_rms_norm_fwd(x, residual, weight, eps)
        return y, h
    return _AddRMSNorm.apply(x, residual, weight, eps)


def kernel_choices(timings: bool = False) -> dict:
    """The launch configurations this process used, for a run's record:
    ``{"namespace": "triton <version>, kernels <source hash>", "choices": {key: {"config": {...}, "source": ...}}}``
    where a key names the kernel, device, row width, row-count bucket and dtypes, and source says whether the
    configuration was pinned, read from the cache file, measured now, or the default. ``timings=True`` adds every
    measured configuration's time in ms."""
    return TUNER.choices(timings)


def pin_kernel_choices(record: dict) -> None:
    """Run with the configurations of ``record`` (an earlier ``kernel_choices()``) wherever their keys occur, e.g.
    when resuming a run, so it computes bit for bit what the uninterrupted run would have. ValueError if the
    record is malformed."""
    TUNER.pin(record)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face LlamaRMSNorm numerics in plain PyTorch (the model's non-Triton path)."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight * y).to(x.dtype)  # weight may be float32 while x is bf16; the output keeps x's dtype


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fused_add_rms_norm`` in plain PyTorch: returns (rms_norm(x + residual), x + residual)."""
    h = x + residual
    return rms_norm_reference(h, weight, eps), h
