"""The fused RMSNorm kernels (model/rmsnorm_*.py) against a float64 reference, and the choice of their launch
configurations.

Without CUDA the kernels run through the Triton interpreter on CPU (TRITON_INTERPRET=1, set here and in conftest.py
before triton is imported), at shapes small enough for CI. Full-size checks are marked ``gpu``.

Every buffer a kernel must fill is handed out pre-filled with NaN (see ``_poison_kernel_buffers``), so an element a
kernel forgets to write fails whichever comparison reads it. The tuner is isolated per test (``_fresh_tuner``): no
pins, no earlier choices, and a cache file in the test's own directory.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from model import rmsnorm_triton as rt  # noqa: E402
from model import rmsnorm_tuning as tuning  # noqa: E402
from model.rmsnorm_tuning import KernelConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
EPS = 1e-5
KERNEL_FILES = ("rmsnorm_kernels.py", "rmsnorm_tuning.py", "rmsnorm_triton.py")  # copied as remote code together
MODEL_DIR = Path(rt.__file__).parent

needs_kernels = pytest.mark.skipif(
    not rt.triton_can_run(torch.empty(0, device=DEVICE)),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16

# Tolerances against float64, keyed by the dtype of the tensor compared: (rtol, atol_frac). A half-precision output
# is rounded to its dtype at most twice (the normalized value, then the weight product), so rtol is two units in the
# last place (2**-7 for bf16, 2**-10 for fp16); float32 only differs by summation order. atol is atol_frac times the
# magnitude of the terms a value is computed from: gradients are differences and sums of float32 terms
# (dx = rstd * (g - x_hat * mean(g * x_hat)), dW a sum over rows) that can cancel far below the terms' size, and
# there the float32 rounding of the terms sets the error (at N = 1, dx is ~1e-12 from terms of ~1).
TOLERANCES = {f32: (1e-5, 1e-5), bf16: (2 * 2**-7, 1e-4), f16: (2 * 2**-10, 1e-5)}


def assert_close64(actual: torch.Tensor, expected: torch.Tensor, what: str, scale: float | None = None) -> None:
    rtol, atol_frac = TOLERANCES[actual.dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(
        actual.double(), expected, rtol=rtol, atol=atol_frac * scale, msg=lambda m: f"{what}: {m}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _poison_kernel_buffers(monkeypatch):
    """Hand every kernel output buffer out as NaN and record what was allocated."""
    allocations = []

    def alloc_nan(shape, dtype, device):
        allocations.append((tuple(shape), dtype))
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(rt, "_alloc", alloc_nan)
    return allocations


@pytest.fixture(autouse=True)
def _fresh_tuner(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMGPT_CACHE_DIR", str(tmp_path / "normgpt-cache"))
    rt.TUNER.reset()
    yield
    rt.TUNER.reset()


@pytest.fixture(autouse=True)
def _interpreter_rounds_bf16_like_the_gpu(monkeypatch):
    """Make the interpreter's float32 -> bfloat16 cast round to nearest even, as the GPU's cvt.rn.bf16.f32 does.

    Triton 3.9's interpreter truncates that cast (triton/runtime/interpreter.py: cast_impl -> _convert_float with
    no rounding mode), which would make bf16 results differ from PyTorch by a unit in the last place in about half
    the elements and hide real numerics differences. Patched here rather than worked around in the kernels.
    """
    if not INTERPRETED:
        return
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    truncating_convert = interpreter._convert_float

    def convert_float(values, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            as_f32 = torch.from_numpy(np.ascontiguousarray(values).view(np.float32))
            return as_f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(values.shape)
        return truncating_convert(values, input_dtype, output_dtype, rounding_mode)

    monkeypatch.setattr(interpreter, "_convert_float", convert_float)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def make_inputs(shape, dtype, weight_dtype, *, scale=1.0, seed=0):
    """Random non-zero x, residual, weight, dy and grad-of-h (all on DEVICE, seeded).

    x has a non-zero mean so RMSNorm and LayerNorm differ, and the weight is far from 1 so a missing or misplaced
    multiply shows. ``scale`` shrinks x so that eps dominates mean(x^2) and its placement matters.
    """
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = ((torch.randn(shape, generator=g) + 0.5) * scale).to(dtype)
    residual = ((torch.randn(shape, generator=g) - 0.25) * scale).to(dtype)
    weight = (1.0 + 0.5 * torch.randn(n, generator=g)).to(weight_dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    dh = torch.randn(shape, generator=g).to(dtype)
    return [t.to(DEVICE) for t in (x, residual, weight, dy, dh)]


class Reference(NamedTuple):
    y: torch.Tensor
    dh: torch.Tensor  # gradient of the normalized input (x, or h for the fused add)
    dw: torch.Tensor
    dh_scale: float  # largest magnitude of the terms dh is computed from
    dw_scale: float


def reference64(h, weight, dy, dh=None) -> Reference:
    """float64 y = rmsnorm(h) and the gradients of sum(y * dy) [+ sum(h * dh)] with respect to h and weight."""
    h64 = h.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    rstd = torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + EPS)
    y64 = w64 * h64 * rstd
    loss = (y64 * dy.double()).sum()
    if dh is not None:
        loss = loss + (h64 * dh.double()).sum()
    dh64, dw64 = torch.autograd.grad(loss, (h64, w64))

    x_hat, g, rstd = (h64 * rstd).detach(), dy.double() * w64.detach(), rstd.detach()
    dh_terms = rstd * (g.abs() + x_hat.abs() * (g * x_hat).abs().mean(-1, keepdim=True))
    if dh is not None:
        dh_terms = dh_terms + dh.double().abs()
    dw_terms = (dy.double() * x_hat).abs().reshape(-1, h.shape[-1]).sum(0)  # (N,)
    return Reference(y64.detach(), dh64, dw64, dh_terms.max().item(), dw_terms.max().item())


def check_rms_norm(shape, dtype, weight_dtype, *, scale=1.0, seed=0):
    x, _, weight, dy, _ = make_inputs(shape, dtype, weight_dtype, scale=scale, seed=seed)
    x.requires_grad_()
    weight.requires_grad_()
    y = rt.fused_rms_norm(x, weight, EPS)
    dx, dw = torch.autograd.grad(y, (x, weight), dy)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == weight_dtype
    ref = reference64(x, weight, dy)
    assert_close64(y, ref.y, "y")
    assert_close64(dx, ref.dh, "dx", ref.dh_scale)
    assert_close64(dw, ref.dw, "dw", ref.dw_scale)


def check_add_rms_norm(shape, dtype, weight_dtype, *, scale=1.0, seed=0, residual_dtype=None):
    x, residual, weight, dy, dh = make_inputs(shape, dtype, weight_dtype, scale=scale, seed=seed)
    residual = residual.to(residual_dtype or dtype)
    h_dtype = torch.result_type(x, residual)
    dy, dh = dy.to(h_dtype), dh.to(h_dtype)
    for t in (x, residual, weight):
        t.requires_grad_()
    y, h = rt.fused_add_rms_norm(x, residual, weight, EPS)
    dx, dres, dw = torch.autograd.grad((y, h), (x, residual, weight), (dy, dh))
    assert (y.dtype, h.dtype, dx.dtype, dres.dtype, dw.dtype) == (
        h_dtype,
        h_dtype,
        x.dtype,
        residual.dtype,
        weight.dtype,
    )
    # h is defined as PyTorch's own x + residual, so it must match bit for bit.
    assert torch.equal(h, x.detach() + residual.detach())
    ref = reference64(h, weight, dy, dh)
    assert_close64(y, ref.y, "y")
    assert_close64(dx, ref.dh, "dx", ref.dh_scale)
    assert_close64(dres, ref.dh, "dresidual", ref.dh_scale)
    assert_close64(dw, ref.dw, "dw", ref.dw_scale)


# ----------------------------------------------------------------------------------------------------------------
# Correctness against float64 (each shape with the tuner's choice: in the interpreter, the space's default)
# ----------------------------------------------------------------------------------------------------------------

HIDDEN_SIZES = [1, 2, 7, 100, 127, 1000, 4099, 8192]
ROW_COUNTS = [1, 3, 129]
DTYPE_PAIRS = [(f32, f32), (bf16, bf16), (bf16, f32), (f16, f16), (f16, f32)]  # (input, weight)
SHORT = {f32: "f32", bf16: "bf16", f16: "f16"}


def sweep() -> list:
    """Every hidden size with every (dtype, weight dtype); the row count rotates so each N meets several.

    Not the full product with the row counts, which would triple the interpreter time for little extra. 129 rows
    (more than the tallest tile) only for narrow rows; wider ones take 37, a ragged count for every tile height,
    and rows of 4099 and 8192 elements fill a tile each, so 1 and 3 rows cover them.
    """
    cases = []
    for i, n in enumerate(HIDDEN_SIZES):
        for j, (dtype, weight_dtype) in enumerate(DTYPE_PAIRS):
            rows = ROW_COUNTS[(i + j) % (len(ROW_COUNTS) if n <= 1000 else 2)]
            rows = 37 if rows == 129 and n > 127 else rows
            case_id = f"{rows}x{n}-{SHORT[dtype]}-w{SHORT[weight_dtype]}"
            cases.append(pytest.param((rows, n), dtype, weight_dtype, id=case_id))
    return cases


@needs_kernels
@pytest.mark.parametrize(("shape", "dtype", "weight_dtype"), sweep())
def test_rms_norm_matches_float64(shape, dtype, weight_dtype):
    check_rms_norm(shape, dtype, weight_dtype)


@needs_kernels
@pytest.mark.parametrize(("shape", "dtype", "weight_dtype"), sweep())
def test_add_rms_norm_matches_float64(shape, dtype, weight_dtype):
    check_add_rms_norm(shape, dtype, weight_dtype)


@needs_kernels
@pytest.mark.parametrize(
    ("shape", "dtype", "weight_dtype", "scale"),
    [
        ((2, 5, 1000), f32, f32, 1.0),
        ((4, 3, 100), bf16, bf16, 1.0),
        ((2, 3, 5, 127), bf16, f32, 1.0),
        ((2, 2, 3, 7), f16, f16, 1.0),
        # mean(x^2) ~ 1e-6, below eps = 1e-5: only right if eps sits inside the square root.
        ((3, 127), f16, f16, 1e-3),
        ((1, 8192), f32, f32, 1e-3),
    ],
    ids=["3d-f32", "3d-bf16", "4d-bf16-wf32", "4d-f16", "tiny-f16", "tiny-f32"],
)
def test_higher_rank_and_eps_dominated_inputs(shape, dtype, weight_dtype, scale):
    check_rms_norm(shape, dtype, weight_dtype, scale=scale)
    check_add_rms_norm(shape, dtype, weight_dtype, scale=scale, seed=1)


@needs_kernels
@pytest.mark.parametrize(
    ("dtype", "residual_dtype", "weight_dtype"), [(bf16, f32, f32), (f16, f32, f16), (f32, bf16, f32)], ids=str
)
def test_add_rms_norm_with_a_residual_stream_in_another_dtype(dtype, residual_dtype, weight_dtype):
    """E.g. bf16 block outputs added to a float32 residual stream: h and y are float32, as x + residual would be."""
    check_add_rms_norm((129, 100), dtype, weight_dtype, residual_dtype=residual_dtype)
    check_add_rms_norm((3, 4099), dtype, weight_dtype, residual_dtype=residual_dtype, seed=1)


@needs_kernels
@pytest.mark.parametrize(("dtype", "weight_dtype"), [(bf16, bf16), (bf16, f32), (f16, f16), (f16, f32)])
def test_forward_rounds_like_the_pytorch_reference(dtype, weight_dtype):
    """Llama numerics: (x * rstd) is rounded to x's dtype before the weight multiply.

    Skipping that intermediate rounding still lands within two ulps of float64, so the tolerance tests above
    cannot see it; but it disagrees bit-wise with the reference in about a quarter of the elements. The kernel
    may differ only where its float32 rstd differs from PyTorch's in the last bit and that flips a rounding.
    """
    x, _, weight, _, _ = make_inputs((257, 1000), dtype, weight_dtype, seed=1)
    y = rt.fused_rms_norm(x, weight, EPS)
    expected = rt.rms_norm_reference(x, weight, EPS)
    assert y.dtype == expected.dtype == dtype
    identical = (y == expected).double().mean().item()
    assert identical >= 0.999, f"only {identical:.4%} of elements bit-identical to rms_norm_reference"
    torch.testing.assert_close(y, expected, rtol=2 * torch.finfo(dtype).eps, atol=0)


@needs_kernels
def test_rstd_matches_float64():
    x, _, weight, _, _ = make_inputs((3, 5, 100), bf16, f32)
    y, rstd = torch.ops.normgpt.rms_norm_fwd(x, weight, EPS)
    assert rstd.dtype == f32 and rstd.shape == (3, 5)
    x64 = x.double()
    assert_close64(rstd, torch.rsqrt(x64.pow(2).mean(-1) + EPS), "rstd")


@needs_kernels
def test_gradient_flows_through_new_residual_only():
    """With y unused, the fused add must behave exactly like h = x + residual for autograd."""
    x, residual, weight, _, dh = make_inputs((3, 100), f32, f32)
    for t in (x, residual, weight):
        t.requires_grad_()
    _, h = rt.fused_add_rms_norm(x, residual, weight, EPS)
    dx, dres, dw = torch.autograd.grad(h, (x, residual, weight), dh)
    assert torch.equal(dx, dh) and torch.equal(dres, dh)
    assert torch.equal(dw, torch.zeros_like(dw))


def test_eps_is_a_float32_kernel_argument():
    """A bare Python float can reach a kernel as float64 (inductor passes them so), halving its throughput."""
    from model import rmsnorm_kernels

    kernel = rmsnorm_kernels.rms_norm_fwd_kernel
    fn = getattr(kernel, "fn", kernel)
    assert inspect.signature(fn).parameters["eps"].annotation == rmsnorm_kernels.tl.float32


# ----------------------------------------------------------------------------------------------------------------
# Every configuration the tuner can pick
# ----------------------------------------------------------------------------------------------------------------
# The interpreter runs a kernel's programs one after another on numpy arrays, so num_warps and num_stages change
# nothing it computes; what does is the tile (block_n, rows, single pass or chunks) and, for the persistent
# backward, how many programs share the tiles (programs_per_sm on the interpreter's single "SM", capped at the
# number of tiles). Each distinct one of those is run here, on odd shapes that leave a ragged last tile; every
# configuration as compiled is run by the gpu-marked test below, and compiled for sm_90 offline by
# scripts/check_kernel_registers.py.


@pytest.fixture
def forced(monkeypatch):
    """The kernels run with ``forced["fwd"]`` / ``forced["bwd"]`` instead of the tuner's choice."""
    forced = {}
    seen = []

    def choose(key, space, measure):
        config = forced[key[0]]
        assert config in space(), f"{config} is not in the {key[0]} space of {tuning.key_name(key)}"
        seen.append(config)
        return config

    monkeypatch.setattr(rt.TUNER, "choose", choose)
    forced["seen"] = seen
    return forced


def distinct_in_interpreter(space: list[KernelConfig], n_rows: int) -> list[KernelConfig]:
    found = {}
    for config in space:
        programs = min(-(-n_rows // config.rows), config.programs_per_sm) if config.programs_per_sm else 0
        found.setdefault((config.block_n, config.rows, programs), config)
    return list(found.values())


# (rows, n, dtype, weight dtype): a row narrower than a warp's vectors, rows packed 4..64 to a tile, rows of 1000
# in float32 (1..16 to a tile); ragged last tiles everywhere.
CONFIG_SHAPES = [(5, 7, f16, f32), (37, 100, bf16, bf16), (19, 1000, f32, f32)]


def _config_cases(kind: str) -> list:
    cases = []
    for rows, n, dtype, weight_dtype in CONFIG_SHAPES:
        itemsize = torch.tensor([], dtype=dtype).element_size()
        bucket = tuning.next_pow2(rows)
        if kind == "fwd":
            space = tuning.forward_space(n, bucket, itemsize)
        else:
            space = tuning.backward_space(n, bucket, itemsize, has_dres=True)
        for i, config in enumerate(distinct_in_interpreter(space, rows)):
            case_id = f"{rows}x{n}-{SHORT[dtype]}-rows{config.rows}-p{config.programs_per_sm}"
            cases.append(pytest.param((rows, n), dtype, weight_dtype, config, i % 2 == 0, id=case_id))
    return cases


@needs_kernels
@pytest.mark.parametrize(("shape", "dtype", "weight_dtype", "config", "with_residual"), _config_cases("fwd"))
def test_every_forward_configuration(forced, shape, dtype, weight_dtype, config, with_residual):
    itemsize = torch.tensor([], dtype=dtype).element_size()
    default_bwd = tuning.backward_space(shape[-1], tuning.next_pow2(shape[0]), itemsize, has_dres=with_residual)[0]
    forced.update(fwd=config, bwd=default_bwd)
    if with_residual:
        check_add_rms_norm(shape, dtype, weight_dtype)
    else:
        check_rms_norm(shape, dtype, weight_dtype)
    assert config in forced["seen"]


@needs_kernels
@pytest.mark.parametrize(("shape", "dtype", "weight_dtype", "config", "with_dres"), _config_cases("bwd"))
def test_every_backward_configuration(forced, shape, dtype, weight_dtype, config, with_dres):
    itemsize = torch.tensor([], dtype=dtype).element_size()
    bwd_space = tuning.backward_space(shape[-1], tuning.next_pow2(shape[0]), itemsize, has_dres=with_dres)
    # The same tile with and without the residual gradient (the space may differ in its pipeline depths only).
    config = next(
        c
        for c in bwd_space
        if (c.block_n, c.rows, c.programs_per_sm) == (config.block_n, config.rows, config.programs_per_sm)
    )
    forced.update(fwd=tuning.forward_space(shape[-1], tuning.next_pow2(shape[0]), itemsize)[0], bwd=config)
    if with_dres:
        check_add_rms_norm(shape, dtype, weight_dtype)
    else:
        check_rms_norm(shape, dtype, weight_dtype)
    assert config in forced["seen"]


@needs_kernels
def test_dw_column_sum_over_more_partials_than_one_block():
    """On a GPU the backward leaves ~1000-2000 partial rows, several of the column sum's row blocks; the
    interpreter's backward never leaves more than 16."""
    g = torch.Generator().manual_seed(0)
    partial = torch.randn(301, 40, generator=g).to(DEVICE)
    block_p, block_c = rt._column_sum_blocks(40)
    assert partial.shape[0] > block_p
    for dtype in (f32, bf16):
        dw = torch.full((40,), float("nan"), dtype=dtype, device=DEVICE)
        rt.dw_column_sum_kernel[(-(-40 // block_c),)](partial, dw, 301, 40, BLOCK_P=block_p, BLOCK_C=block_c)
        assert_close64(dw, partial.double().sum(0), "dw", partial.abs().sum(0).max().item())


# ----------------------------------------------------------------------------------------------------------------
# Long rows: the chunked two-pass path
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Lower the register-resident row limits so rows of ~100 take the multi-chunk path the big N use."""
    monkeypatch.setattr(tuning, "FWD_MAX_FUSED_N", 64)
    monkeypatch.setattr(tuning, "FWD_CHUNK_N", 32)
    monkeypatch.setattr(tuning, "BWD_MAX_FUSED_N", 64)
    monkeypatch.setattr(tuning, "BWD_CHUNK_BYTES", 32)  # 16 bf16 or 8 float32 elements


@needs_kernels
@pytest.mark.parametrize(("shape", "dtype", "weight_dtype"), [((9, 100), bf16, f32), ((3, 1, 127), f32, f32)])
def test_chunked_path_matches_float64(tiny_chunks, forced, shape, dtype, weight_dtype):
    """Every distinct chunked configuration: several full chunks plus a ragged one, in both directions."""
    n_rows, n_cols = int(np.prod(shape[:-1])), shape[-1]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    bucket = tuning.next_pow2(n_rows)
    fwd_space = distinct_in_interpreter(tuning.forward_space(n_cols, bucket, itemsize), n_rows)
    bwd_space = distinct_in_interpreter(tuning.backward_space(n_cols, bucket, itemsize, True), n_rows)
    for config in fwd_space + bwd_space:
        assert config.block_n < n_cols and n_cols % config.block_n
    for i in range(max(len(fwd_space), len(bwd_space))):
        forced.update(fwd=fwd_space[i % len(fwd_space)], bwd=bwd_space[i % len(bwd_space)])
        check_rms_norm(shape, dtype, weight_dtype, seed=i)
        check_add_rms_norm(shape, dtype, weight_dtype, seed=i + 1)


@needs_kernels
def test_hidden_size_65536():
    # 65536 is past both register limits, so this is the real chunked configuration, not a lowered one.
    assert tuning.forward_space(65536, 2, 2)[0].block_n < 65536 > tuning.backward_space(65536, 2, 2, False)[0].block_n
    check_rms_norm((2, 65536), bf16, f32)
    check_add_rms_norm((2, 65536), bf16, bf16)


# ----------------------------------------------------------------------------------------------------------------
# Layouts, buffers, edge cases
# ----------------------------------------------------------------------------------------------------------------


@needs_kernels
def test_kernel_buffers_come_from_the_poisoned_allocator(_poison_kernel_buffers):
    """Guards the poisoning itself: if a launcher stopped using _alloc, every test above would silently weaken."""
    x, residual, weight, dy, dh = make_inputs((129, 127), bf16, f32)  # a ragged last tile of packed rows
    for t in (x, residual, weight):
        t.requires_grad_()
    y, h = rt.fused_add_rms_norm(x, residual, weight, EPS)
    grads = torch.autograd.grad((y, h), (x, residual, weight), (dy, dh))
    allocated = set(_poison_kernel_buffers)
    assert {((129, 127), bf16), ((129,), f32), ((127,), f32)} <= allocated  # y and h, rstd, dw
    assert any(dtype == f32 and len(shape) == 2 and shape[1] == 127 for shape, dtype in allocated)  # dW partials
    for t in (y, h, *grads):
        assert torch.isfinite(t).all()


@needs_kernels
def test_strided_inputs():
    x, _, weight, dy, _ = make_inputs((6, 40), f32, f32)
    # Rows that are not adjacent in memory (row stride 45, read as a view) and a transposed tensor whose last dim
    # is not unit-stride (copied).
    padded = torch.zeros(6, 45, device=DEVICE)
    padded[:, :40] = x
    transposed = x.t().contiguous().t()
    assert padded[:, :40].stride() == (45, 1) and transposed.stride(-1) != 1
    for view in (padded[:, :40], transposed):
        torch.testing.assert_close(rt.fused_rms_norm(view, weight, EPS), rt.fused_rms_norm(x, weight, EPS))
    # A gradient broadcast along rows (row stride 0), as autograd may hand the backward.
    x.requires_grad_()
    weight.requires_grad_()
    broadcast_dy = dy[0].expand_as(x)
    dx, dw = torch.autograd.grad(rt.fused_rms_norm(x, weight, EPS), (x, weight), broadcast_dy)
    ref = reference64(x, weight, broadcast_dy)
    assert_close64(dx, ref.dh, "dx", ref.dh_scale)
    assert_close64(dw, ref.dw, "dw", ref.dw_scale)


@needs_kernels
def test_empty_rows():
    x = torch.empty(0, 3, 64, device=DEVICE, requires_grad=True)
    weight = torch.ones(64, device=DEVICE, requires_grad=True)
    y = rt.fused_rms_norm(x, weight, EPS)
    assert y.shape == x.shape
    dx, dw = torch.autograd.grad(y, (x, weight), torch.empty_like(y))
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(weight))


@needs_kernels
def test_rejects_bad_inputs():
    x = torch.randn(3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="hidden size"):
        rt.fused_rms_norm(x, torch.ones(7, device=DEVICE), EPS)
    with pytest.raises(TypeError, match="float32/bfloat16/float16 inputs"):
        rt.fused_rms_norm(x.double(), torch.ones(8, device=DEVICE), EPS)
    with pytest.raises(ValueError, match="residual must be a float tensor of x's shape"):
        rt.fused_add_rms_norm(x, x[:2], torch.ones(8, device=DEVICE), EPS)
    with pytest.raises(ValueError, match="dy shape"):
        torch.ops.normgpt.rms_norm_bwd(x[:2], x, torch.ones(8, device=DEVICE), torch.ones(3, device=DEVICE), None)


# ----------------------------------------------------------------------------------------------------------------
# The tuner: space, order of choices, cache file, record and pins
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("itemsize", [2, 4])
def test_every_space_is_small_valid_and_starts_with_its_default(itemsize):
    vector = 16 // itemsize
    for n in [1, 7, 64, 100, 768, 1000, 1024, 2048, 4096, 5000, 8192, 16384, 32768, 65536, 100_000]:
        for n_rows in (1, 3, 4096, 32768):
            bucket = tuning.next_pow2(n_rows)
            for space in (
                tuning.forward_space(n, bucket, itemsize),
                tuning.backward_space(n, bucket, itemsize, has_dres=False),
                tuning.backward_space(n, bucket, itemsize, has_dres=True),
            ):
                assert 1 <= len(space) <= 32, (n, n_rows, len(space))  # each one is compiled when tuning
                assert len(set(space)) == len(space)
                for c in space:
                    assert KernelConfig.from_dict(c.as_dict()) == c
                    assert c.rows <= bucket and (c.block_n >= tuning.next_pow2(n) or c.rows == 1)
                    # Full 16-byte vectors per thread, unless the whole tile is smaller than one warp's.
                    assert c.elements_per_thread() % vector == 0 or c.rows * c.block_n < 32 * vector


def test_backward_space_fits_shared_memory_and_single_pass_limits():
    for n in (64, 768, 4096, 8192, 8193, 65536):
        for c in tuning.backward_space(n, 32768, 2, has_dres=True):
            pipeline = (c.num_stages - 1) * c.rows * c.block_n * 2 * 3
            assert c.programs_per_sm * pipeline <= tuning.SMEM_PER_SM
            vectors = c.elements_per_thread() // 8
            resident = c.programs_per_sm * c.num_warps * vectors
            assert resident in tuning.BWD_RESIDENT_WARPS or c.programs_per_sm in (1, tuning.MAX_PROGRAMS_PER_SM)
            assert (c.block_n >= n) == (tuning.next_pow2(n) <= tuning.BWD_MAX_FUSED_N)


class FakeMeasure:
    """Times configurations from a table; counts the calls."""

    def __init__(self, timings: dict[KernelConfig, float]):
        self.timings, self.calls = timings, 0

    def __call__(self, config: KernelConfig) -> float:
        self.calls += 1
        return self.timings[config]


KEY = ("bwd", "Fake GPU (4 SMs)", 768, 16384, bf16, f32, None)


def _space():
    return tuning.backward_space(768, 16384, 2, has_dres=False)


def test_the_fastest_configuration_is_chosen_remembered_and_cached():
    space = _space()
    fastest = space[5]
    measure = FakeMeasure({c: (0.5 if c == fastest else 1.0 + i) for i, c in enumerate(space)})
    tuner = tuning.Tuner("ns")
    assert tuner.choose(KEY, _space, measure) == fastest
    assert measure.calls == len(space)
    assert tuner.choose(KEY, _space, measure) == fastest and measure.calls == len(space)  # remembered
    record = tuner.choices(timings=True)["choices"][tuning.key_name(KEY)]
    assert record["source"] == "measured" and record["config"] == fastest.as_dict()
    assert len(record["timings_ms"]) == len(space)
    # A new process finds the choice in the cache file and measures nothing.
    again = tuning.Tuner("ns")
    assert again.choose(KEY, _space, FakeMeasure({})) == fastest
    assert again.choices()["choices"][tuning.key_name(KEY)]["source"] == "cache"
    # Other triton or kernel versions have their own section.
    other = tuning.Tuner("other versions")
    assert other.choose(KEY, _space, None) == space[0]
    assert other.choices()["choices"][tuning.key_name(KEY)]["source"] == "default"


def test_pins_beat_every_other_source_and_round_trip_through_json():
    space = _space()
    tuner = tuning.Tuner("ns")
    tuner.choose(KEY, _space, FakeMeasure({c: float(i) for i, c in enumerate(space)}))  # measured: space[0]
    record = json.loads(json.dumps(tuner.choices()))
    record["choices"][tuning.key_name(KEY)]["config"] = space[3].as_dict()
    resumed = tuning.Tuner("ns")
    resumed.pin(record)
    assert resumed.choose(KEY, _space, FakeMeasure({})) == space[3]
    assert resumed.choices()["choices"][tuning.key_name(KEY)]["source"] == "pinned"
    # Pinning after a choice was made replaces it from the next call on.
    tuner.pin(record)
    assert tuner.choose(KEY, _space, None) == space[3]


@pytest.mark.parametrize(
    "record",
    [
        None,
        {"choices": []},
        {"choices": {"k": {}}},
        {"choices": {"k": {"config": {"block_n": 1024, "rows": 1}}}},
        {"choices": {"k": {"config": {**KernelConfig(1024, 1, 4).as_dict(), "rows": 3}}}},
        {"choices": {"k": {"config": {**KernelConfig(1024, 1, 4).as_dict(), "num_warps": 64}}}},
        {"choices": {"k": {"config": {**KernelConfig(1024, 1, 4).as_dict(), "num_stages": "2"}}}},
    ],
    ids=["none", "list", "no-config", "missing-fields", "rows-3", "warps-64", "string-field"],
)
def test_malformed_records_are_refused_whole(record):
    tuner = tuning.Tuner("ns")
    with pytest.raises(ValueError):
        tuner.pin(record)
    assert tuner.choose(KEY, _space, None) == _space()[0]


def test_a_damaged_or_stale_cache_file_is_ignored_and_rewritten(tmp_path):
    space = _space()
    path = tuning.cache_path()
    path.parent.mkdir(parents=True)
    stale = KernelConfig(1024, 64, 4, 1, 8)  # valid, but no longer in the space: measured again
    assert stale not in space
    for content in ("{not json", json.dumps(["a list"]), json.dumps({"ns": {tuning.key_name(KEY): stale.as_dict()}})):
        path.write_text(content)
        tuner = tuning.Tuner("ns")
        measure = FakeMeasure({c: float(len(space) - i) for i, c in enumerate(space)})
        assert tuner.choose(KEY, _space, measure) == space[-1] and measure.calls == len(space)
        assert json.loads(path.read_text())["ns"][tuning.key_name(KEY)] == space[-1].as_dict()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_an_unwritable_cache_warns_and_still_uses_the_measurement(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NORMGPT_CACHE_DIR", str(blocker / "cache"))
    space = _space()
    with pytest.warns(UserWarning, match="could not save the RMSNorm kernel tuning cache"):
        chosen = tuning.Tuner("ns").choose(KEY, _space, FakeMeasure({c: float(-i) for i, c in enumerate(space)}))
    assert chosen == space[-1]


def test_failed_measurements_fall_back_to_the_default():
    space = _space()
    tuner = tuning.Tuner("ns")
    assert tuner.choose(KEY, _space, FakeMeasure({c: math.inf for c in space})) == space[0]
    assert tuner.choices()["choices"][tuning.key_name(KEY)]["source"] == "default"
    assert not tuning.cache_path().exists()


def test_no_memory_for_scratch_tensors_means_the_default():
    def out_of_memory(config):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    tuner = tuning.Tuner("ns")
    assert tuner.choose(KEY, _space, out_of_memory) == _space()[0]
    assert tuner.choices()["choices"][tuning.key_name(KEY)]["source"] == "default"


def test_measuring_needs_cuda_and_can_be_switched_off(monkeypatch):
    assert not tuning.can_measure(torch.device("cpu"))
    monkeypatch.setenv("NORMGPT_RMSNORM_AUTOTUNE", "0")
    assert not tuning.measuring_enabled() and not tuning.can_measure(torch.device("cuda", 0))


@needs_kernels
def test_kernel_choices_record_and_pins_drive_the_launches(_poison_kernel_buffers):
    x, _, weight, dy, _ = make_inputs((37, 100), bf16, f32)
    x.requires_grad_()
    weight.requires_grad_()
    torch.autograd.grad(rt.fused_rms_norm(x, weight, EPS), (x, weight), dy)
    record = rt.kernel_choices()
    assert record["namespace"].startswith("triton ")
    assert sorted(name.split("|")[0] for name in record["choices"]) == ["bwd", "fwd"]
    assert {entry["source"] for entry in record["choices"].values()} == {"default"}  # nothing measured on CPU
    # Pin the backward to a configuration with 2 programs: the dW partial buffer then has 2 rows.
    bwd_name = next(name for name in record["choices"] if name.startswith("bwd"))
    two_programs = next(c for c in tuning.backward_space(100, 64, 2, False) if c.programs_per_sm == 2)
    rt.pin_kernel_choices({"choices": {bwd_name: {"config": two_programs.as_dict()}}})
    _poison_kernel_buffers.clear()
    grads = torch.autograd.grad(rt.fused_rms_norm(x, weight, EPS), (x, weight), dy)
    assert ((2, 100), f32) in _poison_kernel_buffers
    assert rt.kernel_choices()["choices"][bwd_name] == {"config": two_programs.as_dict(), "source": "pinned"}
    ref = reference64(x, weight, dy)
    assert_close64(grads[0], ref.dh, "dx", ref.dh_scale)
    assert_close64(grads[1], ref.dw, "dw", ref.dw_scale)


@needs_kernels
def test_launch_configuration_is_worked_out_once_per_shape(monkeypatch):
    calls = []
    real_space = tuning.forward_space
    monkeypatch.setattr(rt, "forward_space", lambda *a: calls.append(a) or real_space(*a))
    x, _, weight, _, _ = make_inputs((3, 100), f32, f32)
    for _ in range(3):
        rt.fused_rms_norm(x, weight, EPS)
    rt.fused_rms_norm(x[:2], weight, EPS)  # another row-count bucket (2 rows, not up to 4): a new key
    assert len(calls) == 2


# ----------------------------------------------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------------------------------------------


def _opcheck_cases():
    x, residual, weight, dy, dh = make_inputs((2, 3, 40), bf16, f32)
    rstd = torch.rand(2, 3, device=DEVICE) + 0.5
    x_grad, residual_grad, weight_grad = (t.clone().requires_grad_() for t in (x, residual, weight))
    return [
        ("rms_norm_fwd", (x_grad, weight_grad, EPS)),
        ("add_rms_norm_fwd", (x_grad, residual_grad, weight_grad, EPS)),
        ("add_rms_norm_fwd", (x_grad, residual_grad.float().detach().requires_grad_(), weight_grad, EPS)),
        ("rms_norm_bwd", (dy, x, weight, rstd, None)),
        ("rms_norm_bwd", (dy, x, weight, rstd, dh)),
    ]


@needs_kernels
@pytest.mark.parametrize(
    "case",
    range(5),
    ids=["rms_norm_fwd", "add_rms_norm_fwd", "add_rms_norm_fwd-f32-residual", "rms_norm_bwd", "bwd+dres"],
)
def test_opcheck(case):
    name, args = _opcheck_cases()[case]
    torch.library.opcheck(getattr(torch.ops.normgpt, name).default, args)


class PreNormBlock(torch.nn.Module):
    """h = x + residual; y = norm(h); out = norm(proj(y) + h): both ops, both backward paths."""

    def __init__(self, n: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(1 + 0.1 * torch.randn(n, generator=g))
        self.w2 = torch.nn.Parameter(1 + 0.1 * torch.randn(n, generator=g))
        self.proj = torch.nn.Linear(n, n)

    def forward(self, x, residual):
        y, h = rt.fused_add_rms_norm(x, residual, self.w1, EPS)
        return rt.fused_rms_norm(self.proj(y) + h, self.w2, EPS)


@needs_kernels
def test_torch_compile_fullgraph_keeps_the_kernels():
    """No graph break; the traced graphs call the kernels: the opaque ops under the interpreter, the Triton kernels
    themselves (triton_op decomposed into kernel-wrapper nodes) with compiled Triton."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep_graph(gm, example_inputs):  # aot_eager, but keeping the traced graphs to inspect
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    block = PreNormBlock(64).to(DEVICE)
    x, residual, _, _, _ = make_inputs((2, 5, 64), f32, f32)
    compiled = torch.compile(
        block, fullgraph=True, backend=aot_autograd(fw_compiler=keep_graph, bw_compiler=keep_graph)
    )

    out = compiled(x, residual)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    expected = block(x, residual)
    expected.square().sum().backward()

    # The same kernels with the same configurations run either way, so compiled and eager agree exactly.
    assert torch.equal(out, expected)
    for got, want in zip(compiled_grads, [p.grad for p in block.parameters()], strict=True):
        assert torch.equal(got, want)
    forward_graph, backward_graph = graphs
    if rt.INTERPRETED:
        ops = torch.ops.normgpt
        forward_targets = {node.target for node in forward_graph.graph.nodes}
        backward_targets = {node.target for node in backward_graph.graph.nodes}
        assert {ops.rms_norm_fwd.default, ops.add_rms_norm_fwd.default} <= forward_targets
        assert ops.rms_norm_bwd.default in backward_targets
    else:
        assert "triton_kernel_wrapper" in forward_graph.code and "triton_kernel_wrapper" in backward_graph.code
        assert "normgpt" not in forward_graph.code + backward_graph.code


# ----------------------------------------------------------------------------------------------------------------
# Module-level behaviour: reference numerics, availability, being loaded as remote code
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", [bf16, f32])
def test_reference_is_llama_rmsnorm(weight_dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, residual, weight, _, _ = make_inputs((4, 64), bf16, weight_dtype)
    llama = LlamaRMSNorm(64, eps=EPS).to(DEVICE)
    llama.weight.data = weight.clone()
    expected = llama(x).to(bf16)  # HF promotes to the weight's dtype; ours keeps the input dtype
    assert torch.equal(rt.rms_norm_reference(x, weight, EPS), expected)
    y, h = rt.add_rms_norm_reference(x, residual, weight, EPS)
    assert torch.equal(h, x + residual) and torch.equal(y, llama(x + residual).to(bf16))


def test_triton_can_run():
    assert not rt.triton_can_run(torch.empty(1, device="meta"))
    cpu = torch.empty(1)
    assert rt.triton_can_run(cpu) == (rt.HAS_TRITON and rt.INTERPRETED)
    if torch.cuda.is_available():
        assert rt.triton_can_run(cpu.cuda()) == rt.HAS_TRITON


def _checkpoint_copy(root: Path, name: str) -> Path:
    """The kernel files as a checkpoint's remote code has them: a package of their own."""
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for file in KERNEL_FILES:
        shutil.copy(MODEL_DIR / file, package / file)
    return package


@needs_kernels
def test_second_copy_of_the_module_reuses_the_registered_ops(tmp_path, monkeypatch):
    """A checkpoint's remote-code copy imported next to the project's must not re-register normgpt::* ops."""
    _checkpoint_copy(tmp_path, "normgpt_checkpoint_copy")
    monkeypatch.syspath_prepend(str(tmp_path))
    copy = importlib.import_module("normgpt_checkpoint_copy.rmsnorm_triton")
    x, _, weight, _, _ = make_inputs((3, 16), f32, f32)
    assert torch.equal(copy.fused_rms_norm(x, weight, EPS), rt.fused_rms_norm(x, weight, EPS))


def test_imports_and_falls_back_without_triton(tmp_path):
    _checkpoint_copy(tmp_path, "copied")
    script = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import torch
from copied import rmsnorm_triton as module
x, w = torch.randn(2, 8), torch.rand(8)
assert module.HAS_TRITON is False and not module.triton_can_run(x)
expected = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
torch.testing.assert_close(module.rms_norm_reference(x, w, 1e-6), expected)
try:
    module.fused_rms_norm(x, w, 1e-6)
except RuntimeError as error:
    assert "rms_norm_reference" in str(error)
else:
    raise AssertionError("fused_rms_norm ran without triton")
assert module.kernel_choices()["choices"] == {}
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_remote_code_needs_no_package_beyond_torch_and_transformers():
    """transformers refuses remote code whose imports (outside try blocks) name a missing package; triton must
    stay optional for a checkpoint, and the kernel files must travel together (relative imports)."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    for file in KERNEL_FILES:
        third_party = set(get_imports(MODEL_DIR / file)) - set(sys.stdlib_module_names)
        assert third_party <= {"torch", "transformers"}, file
    assert {Path(p).name for p in get_relative_import_files(MODEL_DIR / "norms.py")} == set(KERNEL_FILES)


# ----------------------------------------------------------------------------------------------------------------
# GPU: full sizes and every compiled configuration (skipped without CUDA)
# ----------------------------------------------------------------------------------------------------------------


@gpu
@needs_cuda
@pytest.mark.parametrize(
    ("shape", "dtype", "weight_dtype"),
    [
        ((32768, 4096), bf16, f32),
        ((32768, 4096), bf16, bf16),
        ((8, 4096, 2048), f16, f16),
        ((32768, 1000), f32, f32),
        ((16384, 768), bf16, f32),
        ((1024, 8192), bf16, f32),
        ((1024, 16384), bf16, bf16),
        ((512, 32768), bf16, f32),
        ((256, 65536), bf16, bf16),
        ((256, 65536), f32, f32),
        ((4099, 4099), f16, f32),
        ((129, 1), bf16, bf16),
        ((3, 7), f32, f32),
    ],
    ids=str,
)
def test_gpu_full_sizes(shape, dtype, weight_dtype):
    check_rms_norm(shape, dtype, weight_dtype)
    check_add_rms_norm(shape, dtype, weight_dtype, seed=1)


@gpu
@needs_cuda
@pytest.mark.parametrize(("n", "with_residual"), [(768, True), (768, False), (4096, False), (16384, True)])
def test_gpu_every_configuration_of_the_space(forced, n, with_residual):
    """Every configuration as compiled (warps and pipeline stages included), at the 124M width, a mid width and
    a width whose backward is chunked: 4099 rows, so the last tile is ragged for every tile height."""
    shape, itemsize = (4099, n), 2
    bucket = tuning.next_pow2(shape[0])
    fwd_space = tuning.forward_space(n, bucket, itemsize)
    bwd_space = tuning.backward_space(n, bucket, itemsize, has_dres=with_residual)
    for i in range(max(len(fwd_space), len(bwd_space))):
        forced.update(fwd=fwd_space[i % len(fwd_space)], bwd=bwd_space[i % len(bwd_space)])
        check = check_add_rms_norm if with_residual else check_rms_norm
        check(shape, bf16, f32, seed=i)


@gpu
@needs_cuda
def test_gpu_backward_is_deterministic():
    """No atomics on dW: two backward passes agree bit for bit."""
    x, _, weight, dy, _ = make_inputs((32768, 4096), bf16, f32)
    x.requires_grad_()
    weight.requires_grad_()
    first = torch.autograd.grad(rt.fused_rms_norm(x, weight, EPS), (x, weight), dy)
    second = torch.autograd.grad(rt.fused_rms_norm(x, weight, EPS), (x, weight), dy)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@gpu
@needs_cuda
def test_gpu_a_measured_choice_is_recorded_and_reused(tmp_path):
    """On a GPU a large shape is tuned by measurement; a second process reads the choice from the cache file."""
    x, _, weight, _, _ = make_inputs((8192, 1024), bf16, bf16)
    rt.fused_rms_norm(x, weight, EPS)
    ((name, entry),) = rt.kernel_choices(timings=True)["choices"].items()
    assert entry["source"] == "measured" and len(entry["timings_ms"]) == len(tuning.forward_space(1024, 8192, 2))
    rt.TUNER.reset()
    rt.fused_rms_norm(x, weight, EPS)
    assert rt.kernel_choices()["choices"][name] == {"config": entry["config"], "source": "cache"}


@gpu
@needs_cuda
def test_gpu_inductor_compiles_without_graph_breaks():
    # float32, because inductor may split Linear's bias add from the GEMM; in bf16 that rounding difference can
    # cancel in proj(y) + h and fail an elementwise comparison for reasons that have nothing to do with the norm.
    torch._dynamo.reset()
    block = PreNormBlock(1024).cuda()
    x, residual, _, _, _ = make_inputs((4, 512, 1024), f32, f32)
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x, residual), block(x, residual))


@gpu
@needs_cuda
def test_gpu_inductor_with_dynamic_shapes():
    """Sizes traced as symbols are specialized where the launch configuration is chosen, not a tracing error."""
    torch._dynamo.reset()
    block = PreNormBlock(256).cuda()
    compiled = torch.compile(block, fullgraph=True, dynamic=True)
    for rows in (64, 96):
        x, residual, _, _, _ = make_inputs((2, rows, 256), f32, f32)
        torch.testing.assert_close(compiled(x, residual), block(x, residual))


@gpu
@needs_cuda
def test_gpu_inductor_launches_the_triton_kernels_itself():
    """triton_op: inductor's generated code launches rms_norm_fwd_kernel etc. directly, not an opaque op."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    block = PreNormBlock(256).cuda()
    x, residual, _, _, _ = make_inputs((4, 64, 256), bf16, bf16)
    block = block.to(bf16)
    with torch.no_grad():
        _, codes = run_and_get_code(torch.compile(block, fullgraph=True), x, residual)
    code = "\n".join(codes)
    assert "def rms_norm_fwd_kernel(" in code
    assert "torch.ops.normgpt" not in code  # an opaque custom op would be called as torch.ops.normgpt.<op>
