"""The benchmark scripts run as they would on a GPU, on CPU tensors: every implementation bench_norm.py times is
called with the arguments its timing loops pass, every mode; bench_step.py's smoke mode trains each variant a step;
check_kernel_registers.py describes every kernel it would compile. Speed is never asserted here (the scripts
measure it); crashes and wrong results are."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from model import rmsnorm_triton as kernels

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
EPS = 1e-6


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_norm = load_script("bench_norm")
bench_step = load_script("bench_step")
check_registers = load_script("check_kernel_registers")
needs_kernels = pytest.mark.skipif(not kernels.triton_can_run(torch.empty(0)), reason="needs the Triton interpreter")


@needs_kernels
@pytest.mark.parametrize("mode", bench_norm.MODES)
def test_every_bench_norm_implementation_runs_every_mode(mode):
    n, rows = 48, 5
    impls = bench_norm.build_impls(n, EPS, kernels, compile_backend="aot_eager")
    assert {"normgpt", "hf_eager", "F.rms_norm", "compiled_ref", "F.layer_norm"} <= set(impls)
    base = bench_norm.make_sets(2, rows, n, torch.bfloat16, torch.float32, "cpu")
    expected = {}
    for name, impl in impls.items():
        sets = bench_norm.prepare(mode, impl, base)
        out = bench_norm.runner(mode, impl)(sets[1])
        outs = [out] if mode == "fwd" else list(out)
        assert [t.shape for t in outs] == ([(rows, n)] if mode == "fwd" else [(rows, n), (n,)]), name
        assert all(torch.isfinite(t).all() for t in outs), name
        expected[name] = outs
    # Everything that computes RMSNorm agrees with the reference (F.layer_norm is the yardstick that does not).
    for name in ("normgpt", "F.rms_norm", "compiled_ref"):
        for got, want in zip(expected[name], expected["hf_eager"], strict=True):
            torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2, msg=name)


@needs_kernels
def test_the_prenorm_step_variants_run_with_the_step_runner():
    n = 32
    linear = torch.nn.Linear(n, n, bias=False, dtype=torch.bfloat16)
    w = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    sets = [tuple(torch.randn(3, n, dtype=torch.bfloat16) for _ in range(4))]
    sets = [(x.requires_grad_(), r.requires_grad_(), dout, dh) for x, r, dout, dh in sets]
    for name, add_norm in bench_norm.prenorm_variants(kernels, EPS, compile_backend="aot_eager").items():
        bench_norm.prenorm_runner(add_norm, linear, w)(sets[0])
        assert torch.isfinite(w.grad).all(), name


def test_the_register_check_covers_every_configuration_with_the_kernels_signatures():
    """Compiling takes minutes, so CI checks what would be compiled: every configuration of every space, each with a
    signature that names exactly the kernel's parameters, as a launch would specialize them."""
    from model import rmsnorm_tuning as tuning

    jobs = check_registers.jobs_for([768, 1000, 65536], ["bf16", "fp32"])
    for n in (768, 1000, 65536):
        for itemsize, dtype in ((2, "bf16"), (4, "fp32")):
            fwd = {
                (j["config"]["block_n"], j["config"]["rows"], j["config"]["num_warps"], j["config"]["num_stages"])
                for j in jobs
                if j["kernel"] == "fwd" and j["n"] == n and j["dtype"] == dtype
            }
            space = tuning.forward_space(n, check_registers.ROWS, itemsize)
            assert fwd == {(c.block_n, c.rows, c.num_warps, c.num_stages) for c in space}
            for residual in (False, True):
                asked = {
                    (
                        j["config"]["block_n"],
                        j["config"]["rows"],
                        j["config"]["num_warps"],
                        j["config"]["num_stages"],
                        p,
                    )
                    for j in jobs
                    if j["kernel"] == "bwd" and j["n"] == n and j["dtype"] == dtype and j["residual"] == residual
                    for p in j["per_sm"]
                }
                space = tuning.backward_space(n, check_registers.ROWS, itemsize, residual)
                assert asked == {(c.block_n, c.rows, c.num_warps, c.num_stages, c.programs_per_sm) for c in space}
    for job in jobs:
        fn, signature, constexprs, attrs = check_registers._signature(job)
        assert list(signature) == fn.arg_names and set(constexprs) <= set(signature)
        assert all(signature[name] == "constexpr" for name in constexprs)
        unaligned = {fn.arg_names[i] for (i,) in attrs} - {n for n, t in signature.items() if t.startswith("*")}
        assert not unaligned if job["n"] == 1000 else unaligned


def test_bytes_are_counted_once_per_tensor():
    rows, n, bf16, f32 = 10, 8, torch.bfloat16, torch.float32
    assert bench_norm.bytes_moved("fwd", rows, n, bf16, f32) == 2 * rows * n * 2 + n * 4
    assert bench_norm.bytes_moved("bwd", rows, n, bf16, f32) == 3 * rows * n * 2 + 2 * n * 4 + rows * 4
    fwd_bwd = bench_norm.bytes_moved("fwd+bwd", rows, n, bf16, f32)
    assert fwd_bwd == bench_norm.bytes_moved("fwd", rows, n, bf16, f32) + bench_norm.bytes_moved(
        "bwd", rows, n, bf16, f32
    )


@pytest.mark.parametrize("script", ["bench_norm", "bench_step"])
@pytest.mark.parametrize(
    "argv",
    [[], ["--steps", "0"], ["--rows", "0"], ["--max-minutes", "0"], ["--modes", "sideways"]],
    ids=["plain", "steps-0", "rows-0", "minutes-0", "bad-mode"],
)
def test_refusals_are_one_line_and_exit_2(script, argv, capsys):
    if not argv and torch.cuda.is_available():
        pytest.skip("with a GPU the plain command runs the benchmark")
    module = {"bench_norm": bench_norm, "bench_step": bench_step}[script]
    try:
        code = module.main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"{script}.py:"), err


@needs_kernels
def test_bench_step_smoke_trains_every_variant(tmp_path, capsys):
    """Every variant eager, and the kernel variant compiled; --json records MFU inputs and the kernel choices."""
    out = tmp_path / "step.json"
    assert bench_step.main(["--smoke", "--modes", "eager", "--json", str(out)]) == 0
    assert bench_step.main(["--smoke", "--variants", "rms_kernel", "--modes", "compiled"]) == 0
    record = json.loads(out.read_text())
    results = {r["variant"]: r for r in record["results"]}
    assert set(results) == set(bench_step.VARIANTS)
    for r in results.values():
        assert r["tokens_per_s"] > 0 and r["mode"] == "eager" and "6 x" in r["flops_formula"]
    # Same seed, same weights (the norms start at unit gain): the two RMSNorm paths give the same first loss.
    assert results["rms_kernel"]["loss_first"] == pytest.approx(results["rms_torch"]["loss_first"], rel=1e-4)
    assert any(name.startswith("fwd|") for name in record["kernel_choices"]["choices"])
    report = capsys.readouterr().out
    assert "MFU = tokens/s x FLOPs per token / peak" in report and "rms_impl=auto, compiled: PyTorch" in report


def test_bench_step_levers_and_the_trainer_against_the_bare_loop(tmp_path, capsys):
    """The levers one at a time (on the CPU eager: no CUDA graphs), then the real trainer with the micro-batch
    step's settings; the report has each lever's ratio to the one before and the trainer's to the bare loop."""
    out = tmp_path / "levers.json"
    argv = ["--smoke", "--variants", "rms_torch", "--modes", "eager", "--levers", "--trainer", "--json", str(out)]
    assert bench_step.main(argv) == 0
    record = json.loads(out.read_text())
    runs = [(r["kind"], r["label"], r["batch_size"], r["loss"]) for r in record["results"]]
    assert runs == [
        ("table", "", 2, "full"),
        ("lever", "baseline", 2, "full"),
        ("lever", "+ chunked loss", 2, "chunked"),
        ("lever", "+ micro-batch 4", 4, "chunked"),
        ("trainer", "trainer", 4, "chunked"),
    ]
    assert record["results"][-1]["windows"] >= 1 and record["results"][-1]["tokens_per_s"] > 0
    assert {"+ chunked loss / baseline", "+ micro-batch 4 / + chunked loss", "trainer / bare loop"} <= set(
        record["ratios"]
    )
    assert "trainer / bare loop: " in capsys.readouterr().out


def test_bench_step_memory_arithmetic_measures_both_losses(tmp_path):
    """--memory needs no GPU: the saved bytes per token of each loss, and the chunked one saves less (no float32
    log-softmax of the vocabulary per token)."""
    out = tmp_path / "memory.json"
    assert bench_step.main(["--smoke", "--memory", "--json", str(out)]) == 0
    plan = json.loads(out.read_text())["memory"]
    full, chunked = plan["full"], plan["chunked"]
    assert 0 < chunked["per_token_bytes"] < full["per_token_bytes"]
    assert chunked["largest_micro_batch"] > full["largest_micro_batch"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bench_norm_runs_every_timing_path(tmp_path):
    """The CUDA-only parts (streams, graph capture of a backward alone, the copy ceiling, the JSON) on one small
    shape, before a long run depends on them."""
    out = tmp_path / "norm.json"
    argv = ["--hidden", "768", "--rows", "4096", "--reps", "2", "--step-hidden", "256", "--json", str(out)]
    assert bench_norm.main(argv) == 0
    record = json.loads(out.read_text())
    assert {case["mode"] for case in record["norm"]} == set(bench_norm.MODES)
    for case in record["norm"]:
        assert not case["errors"] and case["kernel_ms"]["normgpt"] > 0 and case["call_ms"]["normgpt"] > 0
    assert record["prenorm_step"] and record["kernel_choices"]["choices"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bench_step_runs_the_124m_model(tmp_path):
    """Every variant and the levers on the GPU (eager, one step each: compilation is gpu_checks.sh's to time)."""
    out = tmp_path / "step.json"
    argv = ["--modes", "eager", "--steps", "1", "--warmup", "1", "--batch-size", "1", "--seq-len", "128"]
    assert bench_step.main([*argv, "--levers", "--levers-batch", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert {r["variant"] for r in record["results"] if r["kind"] == "table"} == set(bench_step.VARIANTS)
    assert [r["label"] for r in record["results"] if r["kind"] == "lever"][-1] == "+ micro-batch 2"
    assert all(r["mfu"] > 0 and r["max_memory_GiB"] > 0 for r in record["results"])
