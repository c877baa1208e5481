"""Fused RMSNorm (and residual-add + RMSNorm) in Triton, with Llama numerics.

RMSNorm is memory-bound: the floor is one read of the input and one write of the output. The kernels here
keep to that floor where registers allow, and say where they cannot.

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

Layout: ``@triton.jit`` kernels, then host launchers, then the ``torch.library`` custom ops and autograd glue,
then the public API. This file is self-contained on purpose: it is copied next to saved Hugging Face
checkpoints as remote code, so it imports nothing from the rest of the project and imports cleanly without
Triton (``HAS_TRITON`` is then False and only the PyTorch reference functions are usable).
"""

import contextlib
import functools
import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs, macOS, or a checkpoint loaded where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "add_rms_norm_reference",
    "fused_add_rms_norm",
    "fused_rms_norm",
    "rms_norm_reference",
    "triton_can_run",
]


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _load_h(X, R, x_offs, r_offs, mask, HAS_RESIDUAL: tl.constexpr, H_DTYPE: tl.constexpr):
        """The row values to normalize: x, or x + residual rounded to H_DTYPE (PyTorch's dtype for x + residual)."""
        h = tl.load(X + x_offs, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(R + r_offs, mask=mask, other=0.0)
            h = (h.to(tl.float32) + r.to(tl.float32)).to(H_DTYPE)
        return h

    @triton.jit
    def _rms_norm_fwd_kernel(
        X,  # (n_rows, n_cols) input, row stride stride_x
        R,  # (n_rows, n_cols) residual, row stride stride_r; unused unless HAS_RESIDUAL
        W,  # (n_cols,) weight in any float dtype; products are taken in float32
        Y,  # (n_rows, n_cols) output, contiguous, in h's dtype (x's without a residual)
        H,  # (n_rows, n_cols) x + residual, contiguous; unused unless HAS_RESIDUAL
        RSTD,  # (n_rows,) float32, saved for the backward
        stride_x,
        stride_r,
        n_rows,
        n_cols,
        eps: tl.float32,
        HAS_RESIDUAL: tl.constexpr,
        BLOCK_N: tl.constexpr,
        ROWS: tl.constexpr,
        SINGLE_PASS: tl.constexpr,
    ):
        # One program normalizes a [ROWS, BLOCK_N] tile. Small rows are packed several to a program so that
        # every thread still has a few vector loads in flight.
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        rows = rows.to(tl.int64)  # row * stride overflows int32 beyond 2**31 elements
        cols = tl.arange(0, BLOCK_N)
        x_rows = rows[:, None] * stride_x
        r_rows = rows[:, None] * stride_r
        out_rows = rows[:, None] * n_cols

        if SINGLE_PASS:
            # The whole row lives in registers: exactly one read of x (and residual) and one write of y (and h).
            col_mask = cols < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            h = _load_h(X, R, x_rows + cols[None, :], r_rows + cols[None, :], mask, HAS_RESIDUAL, Y.dtype.element_ty)
            if HAS_RESIDUAL:
                tl.store(H + out_rows + cols[None, :], h, mask=mask)
            hf = h.to(tl.float32)
            rstd = tl.rsqrt(tl.sum(hf * hf, axis=1) / n_cols + eps)
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = (hf * rstd[:, None]).to(Y.dtype.element_ty).to(tl.float32) * w[None, :]
            tl.store(Y + out_rows + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
        else:
            # The row is too long for registers. Pass 1 accumulates the sum of squares chunk by chunk (and writes
            # h); pass 2 re-reads the row, which was touched a moment ago and is normally still in L2.
            acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
            for start in range(0, n_cols, BLOCK_N):
                c = start + cols
                mask = row_mask[:, None] & (c < n_cols)[None, :]
                h = _load_h(X, R, x_rows + c[None, :], r_rows + c[None, :], mask, HAS_RESIDUAL, Y.dtype.element_ty)
                if HAS_RESIDUAL:
                    tl.store(H + out_rows + c[None, :], h, mask=mask)
                hf = h.to(tl.float32)
                acc += hf * hf
            rstd = tl.rsqrt(tl.sum(acc, axis=1) / n_cols + eps)
            for start in range(0, n_cols, BLOCK_N):
                c = start + cols
                mask = row_mask[:, None] & (c < n_cols)[None, :]
                # Recompute h from x and residual rather than reading back H: reading global memory written by
                # other threads of this program would need a barrier, and the add is bit-identical each time.
                h = _load_h(X, R, x_rows + c[None, :], r_rows + c[None, :], mask, HAS_RESIDUAL, Y.dtype.element_ty)
                w = tl.load(W + c, mask=c < n_cols, other=0.0).to(tl.float32)
                y = (h.to(tl.float32) * rstd[:, None]).to(Y.dtype.element_ty).to(tl.float32) * w[None, :]
                tl.store(Y + out_rows + c[None, :], y.to(Y.dtype.element_ty), mask=mask)

        tl.store(RSTD + rows, rstd, mask=row_mask)

    @triton.jit
    def _rms_norm_bwd_kernel(
        DY,  # (n_rows, n_cols) upstream gradient of y, row stride stride_dy
        X,  # (n_rows, n_cols) the tensor that was normalized (x, or h for the fused add), row stride stride_x
        W,  # (n_cols,)
        RSTD,  # (n_rows,) float32 from the forward
        DRES,  # (n_rows, n_cols) extra gradient added to dx (grad of h for the fused add); unused unless HAS_DRES
        DX,  # (n_rows, n_cols) output, contiguous
        DW_PARTIAL,  # (num_programs, n_cols) float32: one private row of dW partial sums per program
        stride_dy,
        stride_x,
        stride_dres,
        n_rows,
        n_cols,
        HAS_DRES: tl.constexpr,
        BLOCK_N: tl.constexpr,
        ROWS: tl.constexpr,
        SINGLE_PASS: tl.constexpr,
    ):
        # Persistent: a fixed grid of a few programs per SM walks the row tiles, so dW needs only one float32
        # partial row per program (reduced on the host with .sum(0)) instead of atomics or an (n_rows, n_cols)
        # buffer. With x_hat = x * rstd and g = dy * w:
        #   dx = rstd * (g - x_hat * mean(g * x_hat)),   dw = sum over rows of dy * x_hat
        pid = tl.program_id(0)
        num_programs = tl.num_programs(0)
        num_tiles = tl.cdiv(n_rows, ROWS)
        cols = tl.arange(0, BLOCK_N)
        dw_row = DW_PARTIAL + pid.to(tl.int64) * n_cols

        if SINGLE_PASS:
            col_mask = cols < n_cols
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for tile in range(pid, num_tiles, num_programs):
                rows = tile * ROWS + tl.arange(0, ROWS)
                row_mask = rows < n_rows
                rows = rows.to(tl.int64)
                mask = row_mask[:, None] & col_mask[None, :]
                x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
                x_hat = x * rstd[:, None]
                g = dy * w[None, :]
                mean_gx = tl.sum(g * x_hat, axis=1) / n_cols
                dx = (g - x_hat * mean_gx[:, None]) * rstd[:, None]
                if HAS_DRES:
                    dres = tl.load(DRES + rows[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0)
                    dx += dres.to(tl.float32)
                tl.store(DX + rows[:, None] * n_cols + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
                dw_acc += tl.sum(dy * x_hat, axis=0)  # padded rows have dy = 0 and add nothing
            # Stored even by a program that got no tile, so the host never sums uninitialized memory.
            tl.store(dw_row + cols, dw_acc, mask=col_mask)
        else:
            # Long rows: a whole row of dw cannot stay in registers, so each program accumulates into its own
            # DW_PARTIAL row in global memory: private, so no atomics, and at 4*N bytes per program usually
            # L2-resident. Pass 2 re-reads x and dy, which pass 1 has just pulled into L2. Both extra streams are
            # L2 traffic on paper; whether they stay off HBM at N = 65536 is what the benchmark measures.
            for start in range(0, n_cols, BLOCK_N):
                c = start + cols
                tl.store(dw_row + c, tl.zeros((BLOCK_N,), dtype=tl.float32), mask=c < n_cols)
            tl.debug_barrier()  # see the barrier at the end of the tile loop
            for tile in range(pid, num_tiles, num_programs):
                rows = tile * ROWS + tl.arange(0, ROWS)
                row_mask = rows < n_rows
                rows = rows.to(tl.int64)
                rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
                acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
                for start in range(0, n_cols, BLOCK_N):
                    c = start + cols
                    mask = row_mask[:, None] & (c < n_cols)[None, :]
                    x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    dy = tl.load(DY + rows[:, None] * stride_dy + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    w = tl.load(W + c, mask=c < n_cols, other=0.0).to(tl.float32)
                    acc += dy * w[None, :] * x
                mean_gx = tl.sum(acc, axis=1) * rstd / n_cols  # mean(g * x_hat)
                for start in range(0, n_cols, BLOCK_N):
                    c = start + cols
                    mask = row_mask[:, None] & (c < n_cols)[None, :]
                    x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    dy = tl.load(DY + rows[:, None] * stride_dy + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    w = tl.load(W + c, mask=c < n_cols, other=0.0).to(tl.float32)
                    x_hat = x * rstd[:, None]
                    dx = (dy * w[None, :] - x_hat * mean_gx[:, None]) * rstd[:, None]
                    if HAS_DRES:
                        dres = tl.load(DRES + rows[:, None] * stride_dres + c[None, :], mask=mask, other=0.0)
                        dx += dres.to(tl.float32)
                    tl.store(DX + rows[:, None] * n_cols + c[None, :], dx.to(DX.dtype.element_ty), mask=mask)
                    dw = tl.load(dw_row + c, mask=c < n_cols, other=0.0)
                    tl.store(dw_row + c, dw + tl.sum(dy * x_hat, axis=0), mask=c < n_cols)
                # The next tile reads DW_PARTIAL back, possibly through different threads than the ones that
                # wrote it; the barrier makes those global writes visible across the program.
                tl.debug_barrier()


# ----------------------------------------------------------------------------------------------------------------
# Launch heuristics and host launchers
# ----------------------------------------------------------------------------------------------------------------

# Every number below was checked against ptxas' register report for sm_90 (method in
# docs/benchmarks.md): all configurations stay at or under 64 registers per thread with no spills, so 32 warps fit
# on an SM, which _bwd_num_programs relies on. Tests lower the *_MAX_FUSED_N / *_CHUNK_N values to exercise the
# chunked path at small N.
#
# Longest row kept entirely in registers; beyond it the kernels loop over *_CHUNK_N-wide chunks in two passes.
# (A single-pass forward at 32768 or backward at 16384 spills.)
FWD_MAX_FUSED_N = 16384
BWD_MAX_FUSED_N = 8192
FWD_CHUNK_N = 8192
BWD_CHUNK_N = 4096
# Elements per thread: the backward keeps x, dy, w and the dw accumulator live, twice the forward's footprint.
FWD_ELEMENTS_PER_THREAD = 8
BWD_ELEMENTS_PER_THREAD = 4
# Rows shorter than this are packed several to a program so each thread still has full vector loads in flight.
TILE_ELEMENTS = 2048
# The interpreter runs programs one after another; a handful still exercises the dW partial reduction.
INTERPRETER_PROGRAMS = 4


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _launch_config(
    n_rows: int, n_cols: int, max_fused_n: int, chunk_n: int, elements_per_thread: int
) -> tuple[int, int, int, bool]:
    """(BLOCK_N, ROWS, num_warps, SINGLE_PASS) for one launch.

    BLOCK_N is the whole row rounded up to a power of two when it fits in registers (SINGLE_PASS), else the
    chunk width. Short rows are packed ROWS to a tile of ~TILE_ELEMENTS; num_warps gives each thread
    ~elements_per_thread elements of the tile (capped at 32 warps, so the longest single-pass rows give each
    thread more).
    """
    single_pass = n_cols <= max_fused_n
    block_n = _next_pow2(n_cols) if single_pass else _next_pow2(chunk_n)
    rows = max(1, min(TILE_ELEMENTS // block_n, _next_pow2(n_rows)))
    num_warps = min(32, max(1, rows * block_n // (32 * elements_per_thread)))
    return block_n, rows, num_warps, single_pass


def _fwd_config(n_rows: int, n_cols: int) -> tuple[int, int, int, bool]:
    return _launch_config(n_rows, n_cols, FWD_MAX_FUSED_N, FWD_CHUNK_N, FWD_ELEMENTS_PER_THREAD)


def _bwd_config(n_rows: int, n_cols: int) -> tuple[int, int, int, bool]:
    return _launch_config(n_rows, n_cols, BWD_MAX_FUSED_N, BWD_CHUNK_N, BWD_ELEMENTS_PER_THREAD)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _bwd_num_programs(device: torch.device, num_tiles: int, num_warps: int) -> int:
    if device.type != "cuda":
        return max(1, min(INTERPRETER_PROGRAMS, num_tiles))
    # A persistent program does not overlap the loads of its next tile with the math of the current one, so a
    # single program per SM leaves bandwidth idle. Run enough to keep 32 warps resident (2 programs of 16 warps,
    # 1 of 32): that fits in one wave at <= 64 registers per thread, and keeps the dW partial buffer small.
    per_sm = max(1, 32 // num_warps)
    return max(1, min(_sm_count(device.index or 0) * per_sm, num_tiles))


def _alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel must fully overwrite comes from here, so tests can poison them all with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch_device(x: torch.Tensor):
    """Triton launches on the current CUDA device, which need not be x's in a multi-GPU process."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) with a unit column stride; a view whenever the leading dims can be merged."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])


_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None, dy: torch.Tensor | None = None
) -> None:
    """Shared by the real and the fake kernels, so torch.compile reports bad inputs at trace time."""
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


def _normalized_dtype(x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    """dtype of what gets normalized, and so of y: x's, or PyTorch's promotion of x + residual (an fp32 residual
    stream with bf16 block outputs gives fp32)."""
    return x.dtype if residual is None else torch.result_type(x, residual)


def _require_triton(x: torch.Tensor) -> None:
    if not triton_can_run(x):
        raise RuntimeError(
            f"fused RMSNorm kernels cannot run on a {x.device.type} tensor here (HAS_TRITON={HAS_TRITON}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}); use rms_norm_reference instead"
        )


def _rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns (y, rstd, h); h = x + residual is None without a residual."""
    _check_inputs(x, weight, residual)
    _require_triton(x)
    n_cols = x.shape[-1]
    x2 = _as_rows(x)  # (M, N)
    n_rows = x2.shape[0]
    h_dtype = _normalized_dtype(x, residual)
    y = _alloc(x.shape, h_dtype, x.device)
    rstd = _alloc(x.shape[:-1], torch.float32, x.device)
    h = _alloc(x.shape, h_dtype, x.device) if residual is not None else None
    if n_rows == 0:
        return y, rstd, h
    r2 = _as_rows(residual) if residual is not None else x2  # (M, N); x2 is a placeholder the kernel never reads
    block_n, rows, num_warps, single_pass = _fwd_config(n_rows, n_cols)
    with _launch_device(x):
        _rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
            x2,
            r2,
            weight.contiguous(),
            y,
            h if h is not None else y,
            rstd,
            x2.stride(0),
            r2.stride(0),
            n_rows,
            n_cols,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK_N=block_n,
            ROWS=rows,
            SINGLE_PASS=single_pass,
            num_warps=num_warps,
        )
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
    _require_triton(x)
    n_cols = x.shape[-1]
    x2 = _as_rows(x)  # (M, N)
    dy2 = _as_rows(dy)  # (M, N); may be a stride-0 broadcast along rows, which the kernel reads fine
    n_rows = x2.shape[0]
    dx = _alloc(x.shape, x.dtype, x.device)
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    dres2 = _as_rows(dresidual) if dresidual is not None else dy2  # (M, N); placeholder when absent
    block_n, rows, num_warps, single_pass = _bwd_config(n_rows, n_cols)
    num_programs = _bwd_num_programs(x.device, triton.cdiv(n_rows, rows), num_warps)
    dw_partial = _alloc((num_programs, n_cols), torch.float32, x.device)
    with _launch_device(x):
        _rms_norm_bwd_kernel[(num_programs,)](
            dy2,
            x2,
            weight.contiguous(),
            rstd.contiguous(),
            dres2,
            dx,
            dw_partial,
            dy2.stride(0),
            x2.stride(0),
            dres2.stride(0),
            n_rows,
            n_cols,
            HAS_DRES=dresidual is not None,
            BLOCK_N=block_n,
            ROWS=rows,
            SINGLE_PASS=single_pass,
            num_warps=num_warps,
        )
    return dx, dw_partial.sum(0).to(weight.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Custom ops and autograd
# ----------------------------------------------------------------------------------------------------------------
# Registered through torch.library so torch.compile sees opaque ops with fake (meta) implementations and traces
# a model that uses them without graph breaks. None of them mutates or aliases its inputs.


def _register_ops() -> None:
    @torch.library.custom_op("normgpt::rms_norm_fwd", mutates_args=())
    def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        y, rstd, _ = _rms_norm_fwd(x, weight, eps)
        return y, rstd

    @rms_norm_fwd.register_fake
    def _(x, weight, eps):
        _check_inputs(x, weight)
        return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)

    @torch.library.custom_op("normgpt::add_rms_norm_fwd", mutates_args=())
    def add_rms_norm_fwd(
        x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _rms_norm_fwd(x, weight, eps, residual)

    @add_rms_norm_fwd.register_fake
    def _(x, residual, weight, eps):
        _check_inputs(x, weight, residual)
        h_dtype = _normalized_dtype(x, residual)
        rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)
        return x.new_empty(x.shape, dtype=h_dtype), rstd, x.new_empty(x.shape, dtype=h_dtype)

    @torch.library.custom_op("normgpt::rms_norm_bwd", mutates_args=())
    def rms_norm_bwd(
        dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dresidual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _rms_norm_bwd(dy, x, weight, rstd, dresidual)

    @rms_norm_bwd.register_fake
    def _(dy, x, weight, rstd, dresidual):
        _check_inputs(x, weight, dresidual, dy)
        return x.new_empty(x.shape), weight.new_empty(weight.shape)

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
        # h feeds both the norm and whatever uses the new residual stream, so its total gradient is the norm's
        # dx plus grad_h; h = x + residual then hands that same gradient to both x and residual (in their own
        # dtypes when they differ; .to is a no-op otherwise).
        h, weight, rstd = ctx.saved_tensors
        dh, dw = torch.ops.normgpt.rms_norm_bwd(grad_y, h, weight, rstd, grad_h)
        x_dtype, residual_dtype = ctx.input_dtypes
        return dh.to(x_dtype), dh.to(residual_dtype), dw, None

    add_rms_norm_fwd.register_autograd(add_rms_norm_backward, setup_context=add_rms_norm_setup_context)


# A checkpoint's remote-code copy of this file may be imported alongside the project's own copy; the ops live in
# one process-wide registry, so the first copy registers them and later copies reuse them.
if not hasattr(torch.ops.normgpt, "rms_norm_fwd"):
    _register_ops()


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def triton_can_run(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``t``: a CUDA tensor, or a CPU tensor under TRITON_INTERPRET=1.

    The interpreter flag is read by Triton when the kernels are decorated, i.e. when this module is imported,
    so set it before importing this file (or triton) for the CPU path to work.
    """
    if not HAS_TRITON:
        return False
    return t.is_cuda or (os.environ.get("TRITON_INTERPRET") == "1" and t.device.type == "cpu")


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` (any rank, unit last-dim stride preferred) with Llama numerics.

    Differentiable in ``x`` and ``weight``. Returns a new contiguous tensor of x's shape and dtype.
    """
    y, _ = torch.ops.normgpt.rms_norm_fwd(x, weight, eps)
    return y


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual; return rms_norm(h), h`` in one pass (h is written once and never re-read).

    ``x`` and ``residual`` must have the same shape; their dtypes may differ, and then h and y take PyTorch's
    promoted dtype, exactly as ``add_rms_norm_reference``. Differentiable in all three tensors, including gradient
    flowing into the returned ``h`` from its later use as the residual stream.
    """
    y, _, h = torch.ops.normgpt.add_rms_norm_fwd(x, residual, weight, eps)
    return y, h


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
