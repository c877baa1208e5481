"""The fused RMSNorm kernels (model/rmsnorm_triton.py) against a float64 reference.

Without CUDA the kernels run through the Triton interpreter on CPU (TRITON_INTERPRET=1, set here and in conftest.py
before triton is imported), at shapes small enough for CI. Full-size checks are marked ``gpu``.

Every buffer a kernel must fill is handed out pre-filled with NaN (see ``_poison_kernel_buffers``), so an element a
kernel forgets to write fails whichever comparison reads it.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from model import rmsnorm_triton as rt  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
EPS = 1e-5
MODULE_PATH = Path(rt.__file__)

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
# Correctness against float64
# ----------------------------------------------------------------------------------------------------------------

HIDDEN_SIZES = [1, 2, 7, 100, 127, 1000, 4099, 8192]
ROW_COUNTS = [1, 3, 129]
DTYPE_PAIRS = [(f32, f32), (bf16, bf16), (bf16, f32), (f16, f16), (f16, f32)]  # (input, weight)
SHORT = {f32: "f32", bf16: "bf16", f16: "f16"}


def sweep() -> list:
    """Every hidden size with every (dtype, weight dtype); the row count rotates so each N meets all three.

    Not the full product with the row counts, which would triple the interpreter time for little extra.
    """
    cases = []
    for i, n in enumerate(HIDDEN_SIZES):
        for j, (dtype, weight_dtype) in enumerate(DTYPE_PAIRS):
            rows = ROW_COUNTS[(i + j) % len(ROW_COUNTS)]
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


# ----------------------------------------------------------------------------------------------------------------
# Long rows: the chunked two-pass path
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Lower the register-resident row limits so rows of ~100 take the multi-chunk path the big N use."""
    monkeypatch.setattr(rt, "FWD_MAX_FUSED_N", 64)
    monkeypatch.setattr(rt, "FWD_CHUNK_N", 32)
    monkeypatch.setattr(rt, "BWD_MAX_FUSED_N", 64)
    monkeypatch.setattr(rt, "BWD_CHUNK_N", 16)


@needs_kernels
@pytest.mark.parametrize(("shape", "dtype", "weight_dtype"), [((129, 100), bf16, f32), ((3, 7, 127), f32, f32)])
def test_chunked_path_matches_float64(tiny_chunks, shape, dtype, weight_dtype):
    n_rows, n_cols = int(np.prod(shape[:-1])), shape[-1]
    fwd_block, _, _, fwd_single = rt._fwd_config(n_rows, n_cols)
    bwd_block, _, _, bwd_single = rt._bwd_config(n_rows, n_cols)
    # Several full chunks plus a ragged one, in both directions.
    assert not fwd_single and not bwd_single and n_cols % fwd_block and n_cols % bwd_block
    check_rms_norm(shape, dtype, weight_dtype)
    check_add_rms_norm(shape, dtype, weight_dtype, seed=1)


@needs_kernels
def test_hidden_size_65536():
    # 65536 is past both register limits, so this is the real chunked configuration, not a lowered one.
    assert not rt._fwd_config(2, 65536)[3] and not rt._bwd_config(2, 65536)[3]
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
    assert {((129, 127), bf16), ((129,), f32)} <= allocated  # y and h, rstd
    assert any(dtype == f32 and shape[1:] == (127,) for shape, dtype in allocated)  # dW partials
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
def test_torch_compile_fullgraph_keeps_the_custom_ops():
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

    # The same kernels run either way, so compiled and eager agree exactly.
    assert torch.equal(out, expected)
    for got, want in zip(compiled_grads, [p.grad for p in block.parameters()], strict=True):
        assert torch.equal(got, want)
    forward_graph, backward_graph = graphs
    ops = torch.ops.normgpt
    forward_targets = {node.target for node in forward_graph.graph.nodes}
    backward_targets = {node.target for node in backward_graph.graph.nodes}
    assert {ops.rms_norm_fwd.default, ops.add_rms_norm_fwd.default} <= forward_targets
    assert ops.rms_norm_bwd.default in backward_targets


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
    assert rt.triton_can_run(cpu) == (rt.HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1")
    if torch.cuda.is_available():
        assert rt.triton_can_run(cpu.cuda()) == rt.HAS_TRITON


@needs_kernels
def test_second_copy_of_the_module_reuses_the_registered_ops():
    """A checkpoint's remote-code copy imported next to the project's must not re-register normgpt::* ops."""
    spec = importlib.util.spec_from_file_location("normgpt_checkpoint_copy_of_rmsnorm_triton", MODULE_PATH)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    x, _, weight, _, _ = make_inputs((3, 16), f32, f32)
    assert torch.equal(copy.fused_rms_norm(x, weight, EPS), rt.fused_rms_norm(x, weight, EPS))


def test_imports_and_falls_back_without_triton():
    script = f"""
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import importlib.util
import torch
spec = importlib.util.spec_from_file_location("rmsnorm_triton", {str(MODULE_PATH)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
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
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------------------------
# GPU: full sizes (skipped without CUDA)
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
def test_gpu_inductor_compiles_without_graph_breaks():
    # float32, because inductor may split Linear's bias add from the GEMM; in bf16 that rounding difference can
    # cancel in proj(y) + h and fail an elementwise comparison for reasons that have nothing to do with the norm.
    torch._dynamo.reset()
    block = PreNormBlock(1024).cuda()
    x, residual, _, _, _ = make_inputs((4, 512, 1024), f32, f32)
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x, residual), block(x, residual))
