"""The Triton kernels of the fused RMSNorm: forward (optionally with the residual add), backward, dW column sum.

Only ``@triton.jit`` functions live here: no launch decisions (``rmsnorm_tuning.py`` chooses tile shapes, warps,
pipeline stages and grid sizes by measurement) and no torch glue (``rmsnorm_triton.py``). Every tile-shape knob is
a ``tl.constexpr`` so that each configuration compiles to its own specialized kernel; nothing that depends on the
number of rows is a constexpr, so a new batch size never recompiles.

Numerics (Llama / Hugging Face ``LlamaRMSNorm``):

    rstd = 1 / sqrt(mean(float32(h) ** 2) + eps)      # float32 sum of squares, eps inside the sqrt
    y    = (w * (float32(h) * rstd).to(h.dtype)).to(h.dtype)
    dx   = rstd * (dy * w) - x * (rstd**3 * sum(dy * w * x) / N)   # = rstd * (g - x_hat * mean(g * x_hat))
    dw   = sum over rows of dy * x * rstd

Every reduction and every product of two half-precision values is taken in float32 and rounded once. ``eps`` is a
float32 kernel argument (a Python float left unannotated would become float64 under some callers, e.g. inductor,
and float64 arithmetic runs at a fraction of the speed).

Determinism: for one configuration a kernel performs the same floating-point operations in the same order on every
run, so its outputs are bit-for-bit reproducible. Across configurations they are not: the shape of the row
reductions (the layout of a tile over threads) and, in the backward, the order in which dW's row contributions are
summed (rows of one program, then programs in the column sum) depend on the configuration.

This file is copied next to saved checkpoints as remote code: it imports nothing but triton, and imports cleanly
without it (``HAS_TRITON`` is then False and nothing else is defined).
"""

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs, macOS, or a checkpoint loaded where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False


if HAS_TRITON:

    @triton.jit
    def _load_h(X, R, x_offs, r_offs, mask, HAS_RESIDUAL: tl.constexpr, H_DTYPE: tl.constexpr):
        """The values to normalize: x, or x + residual rounded to H_DTYPE (PyTorch's dtype for x + residual)."""
        h = tl.load(X + x_offs, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(R + r_offs, mask=mask, other=0.0)
            h = (h.to(tl.float32) + r.to(tl.float32)).to(H_DTYPE)
        return h

    @triton.jit
    def rms_norm_fwd_kernel(
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
        BLOCK_N: tl.constexpr,  # the whole row rounded up to a power of two, or the chunk width
        ROWS: tl.constexpr,  # rows per tile: short rows are packed so each thread still has full vector loads
        SINGLE_PASS: tl.constexpr,  # BLOCK_N covers the row
        NUM_STAGES: tl.constexpr,  # software pipelining of the chunk loops (the single pass has no loop)
    ):
        # One program per [ROWS, BLOCK_N] tile: thousands of small programs, which the hardware keeps resident
        # several to an SM, is what keeps enough loads in flight for a one-pass stream.
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
            for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
                c = start + cols
                mask = row_mask[:, None] & (c < n_cols)[None, :]
                h = _load_h(X, R, x_rows + c[None, :], r_rows + c[None, :], mask, HAS_RESIDUAL, Y.dtype.element_ty)
                if HAS_RESIDUAL:
                    tl.store(H + out_rows + c[None, :], h, mask=mask)
                hf = h.to(tl.float32)
                acc += hf * hf
            rstd = tl.rsqrt(tl.sum(acc, axis=1) / n_cols + eps)
            for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
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
    def rms_norm_bwd_kernel(
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
        NUM_STAGES: tl.constexpr,  # > 1: the next tiles' loads are issued (cp.async) while this tile reduces
    ):
        # Persistent: a fixed grid of a few programs per SM walks the row tiles (tile = pid, pid + grid, ...), so dW
        # needs one float32 partial row per program instead of atomics or an (n_rows, n_cols) buffer; the column
        # sum kernel below adds the partial rows up.
        pid = tl.program_id(0)
        num_programs = tl.num_programs(0)
        num_tiles = tl.cdiv(n_rows, ROWS)
        cols = tl.arange(0, BLOCK_N)
        dw_row = DW_PARTIAL + pid.to(tl.int64) * n_cols

        if SINGLE_PASS:
            col_mask = cols < n_cols
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            # dW stays a [ROWS, BLOCK_N] float32 register tile until the end: one cross-row reduction per program
            # instead of one per tile.
            dw_acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
            for tile in tl.range(pid, num_tiles, num_programs, num_stages=NUM_STAGES):
                rows = tile * ROWS + tl.arange(0, ROWS)
                row_mask = rows < n_rows
                rows = rows.to(tl.int64)
                mask = row_mask[:, None] & col_mask[None, :]
                x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
                g = dy * w[None, :]
                # One scalar per row folds mean(g * x_hat) and both rstd factors, so x_hat never has to be kept.
                c = tl.sum(g * x, axis=1) * (rstd * rstd * rstd) / n_cols
                dx = g * rstd[:, None] - x * c[:, None]
                if HAS_DRES:
                    dres = tl.load(DRES + rows[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0)
                    dx += dres.to(tl.float32)
                tl.store(DX + rows[:, None] * n_cols + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
                dw_acc += dy * (x * rstd[:, None])  # padded rows and columns have dy = 0 and add nothing
            # Stored even by a program that got no tile, so the column sum never reads uninitialized memory.
            tl.store(dw_row + cols, tl.sum(dw_acc, axis=0), mask=col_mask)
        else:
            # Long rows: a whole row of dw cannot stay in registers, so each program accumulates into its own
            # DW_PARTIAL row in global memory: private, so no atomics, and at 4*N bytes per program usually
            # L2-resident. Pass 2 re-reads x and dy, which pass 1 has just pulled into L2.
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
                for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
                    c = start + cols
                    mask = row_mask[:, None] & (c < n_cols)[None, :]
                    x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    dy = tl.load(DY + rows[:, None] * stride_dy + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    w = tl.load(W + c, mask=c < n_cols, other=0.0).to(tl.float32)
                    acc += dy * w[None, :] * x
                scale = tl.sum(acc, axis=1) * (rstd * rstd * rstd) / n_cols
                for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
                    c = start + cols
                    mask = row_mask[:, None] & (c < n_cols)[None, :]
                    x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    dy = tl.load(DY + rows[:, None] * stride_dy + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    w = tl.load(W + c, mask=c < n_cols, other=0.0).to(tl.float32)
                    dx = dy * w[None, :] * rstd[:, None] - x * scale[:, None]
                    if HAS_DRES:
                        dres = tl.load(DRES + rows[:, None] * stride_dres + c[None, :], mask=mask, other=0.0)
                        dx += dres.to(tl.float32)
                    tl.store(DX + rows[:, None] * n_cols + c[None, :], dx.to(DX.dtype.element_ty), mask=mask)
                    dw = tl.load(dw_row + c, mask=c < n_cols, other=0.0)
                    tl.store(dw_row + c, dw + tl.sum(dy * (x * rstd[:, None]), axis=0), mask=c < n_cols)
                # The next tile reads DW_PARTIAL back, possibly through different threads than the ones that
                # wrote it; the barrier makes those global writes visible across the program.
                tl.debug_barrier()

    @triton.jit
    def dw_column_sum_kernel(
        DW_PARTIAL,  # (n_partials, n_cols) float32, contiguous
        DW,  # (n_cols,) output in the weight's dtype
        n_partials,
        n_cols,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # One program per BLOCK_C columns walks all partial rows in a fixed order: deterministic, no atomics, and
        # the float32 sum is rounded to the weight's dtype once.
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < n_cols
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for start in range(0, n_partials, BLOCK_P):
            parts = start + tl.arange(0, BLOCK_P)
            mask = (parts < n_partials)[:, None] & col_mask[None, :]
            acc += tl.load(DW_PARTIAL + parts.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
        tl.store(DW + cols, tl.sum(acc, axis=0).to(DW.dtype.element_ty), mask=col_mask)
