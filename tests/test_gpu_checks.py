"""scripts/gpu_checks.sh, as far as a machine without a GPU can check it: the dry run lists every step with a time
box that fits the deadline, bad arguments are one line, the environment step reads every dependency, and the
summary turns each step's output into its tables (from outputs in the formats the steps write). check_fsdp.py's
two launches and comparison run under DDP on the CPU in an opt-in test."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.run_directory import METRICS, MetricsLog, RunStatus, Summary

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
STEPS = ["env", "gpu_tests", "bench_norm", "bench_step", "trainer", "fsdp"]


def gpu_checks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / "gpu_checks.sh"), *args], capture_output=True, text=True, timeout=60)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_lists_every_step_in_order_with_boxes_that_fit_the_deadline():
    done = gpu_checks("--dry-run")
    assert done.returncode == 0, done.stderr
    boxes = {name: int(box) for name, box in re.findall(r"^  (\w+)\s+box\s+(\d+) s", done.stdout, re.M)}
    assert list(boxes) == STEPS and all(box >= 10 for box in boxes.values())
    assert sum(boxes.values()) <= 8 * 60 - 15  # the summary's reserve
    assert 'pytest -m "not cuda"' in done.stdout and "summary.md" in done.stdout
    short = gpu_checks("--dry-run", "--minutes", "3", "--only", "env,trainer,suite")
    steps = re.findall(r"^  (\w+)\s+box\s+(\d+) s", short.stdout, re.M)
    assert [name for name, _ in steps] == ["env", "trainer"] and sum(int(b) for _, b in steps) <= 3 * 60 - 15


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "bench"], "unknown step 'bench' in --only; valid: env gpu_tests"),
        (["--minutes", "0"], "--minutes must be a whole number >= 1, got '0'"),
        (["--wheels", "/no/such/folder"], "--wheels '/no/such/folder' is not a directory"),
        (["--fast"], "unknown argument '--fast'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    done = gpu_checks(*args, "--dry-run")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the checks")
def test_without_a_gpu_it_says_so_and_exits_2():
    done = gpu_checks()
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr and not done.stdout


def test_the_environment_step_reads_every_dependency(tmp_path):
    assert load_script("gpu_env").main(["--no-ceilings", "--json", str(tmp_path / "env.json")]) == 0
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["normgpt"] and env["missing"] == []


# ---------------------------------------------------------------------------------------------------------------------
# The summary, from outputs in the steps' formats


def junit_xml(failing: str | None = None) -> str:
    failure = f'<testcase classname="tests.test_x" name="{failing}" time="1.5"><failure message="boom"/></testcase>'
    return (
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" time="42.0">'
        '<testcase classname="tests.test_x" name="test_ok" time="3.0"/>'
        '<testcase classname="tests.test_x" name="test_skip" time="0.0"><skipped message="no"/></testcase>'
        f"{failure if failing else ''}</testsuite></testsuites>"
    )


def norm_case(mode: str, hidden: int, ours_ms: float) -> dict:
    times = {"copy": 1.0, "normgpt": ours_ms, "compiled_ref": 1.25, "F.rms_norm": 2.0, "F.layer_norm": 0.5}
    return {"dtype": "bf16", "mode": mode, "rows": 32768, "hidden": hidden, "bytes": 4e9, "kernel_ms": times}


def trainer_run(run_dir: Path, rates: list[float]) -> None:
    log = MetricsLog(run_dir / METRICS)
    for i, rate in enumerate(rates):
        log.append({"step": 10 * (i + 1), "loss": 5.0, "tokens_per_sec": rate, "elapsed": 20.0 + i, "mfu": 0.4})
    export = {"architecture": "LlamaForCausalLM", "verified": True, "format": "stock"}
    Summary(status=RunStatus.COMPLETED, steps=40, max_steps=40, export=export).write(run_dir)


def test_the_summary_holds_every_figure_and_names_every_failure(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "trainer" / "rms_compiled").mkdir(parents=True)
    (work / "steps.tsv").write_text(
        "env\t25\t9\tok\ngpu_tests\t75\t75\ttime box reached\nfsdp\t45\t0\tnot run: no time left\n"
    )
    env = {"device": "NVIDIA H200", "sm_count": 132, "memory_GiB": 140.0, "driver": "580", "cuda_version": "13.0"}
    env |= {"versions": {"torch": "2.11.0"}, "missing": ["gguf (ImportError)"]}
    env["ceilings"] = {"copy_TBps": 4.22, "bf16_matmul_TFLOPs": 782.0, "copy_GiB": 2.0, "matmul_n": 8192}
    (work / "env.json").write_text(json.dumps(env))
    (work / "junit_gpu.xml").write_text(junit_xml(failing="test_kernel_at_full_size"))
    (work / "junit_suite.xml").write_text(junit_xml())
    norm = {"norm": [norm_case("fwd", 768, 1.02), norm_case("fwd+bwd", 4096, 1.1)], "skipped": [{"hidden": 1}]}
    (work / "bench_norm.json").write_text(json.dumps(norm))
    bare = {"kind": "lever", "label": "+ micro-batch 64", "variant": "rms_auto", "mode": "compiled", "batch_size": 64}
    bare |= {"loss": "chunked", "compile_mode": "default", "tokens_per_s": 500_000.0, "mfu": 0.432}
    bare |= {"max_memory_GiB": 40.0, "flops_formula": "6 x 123.59M matmul weights + ..."}
    step = {"meta": {"peak_flops": 989e12}, "results": [bare], "ratios": {"trainer / bare loop": 0.99}, "skipped": []}
    (work / "bench_step.json").write_text(json.dumps(step))
    trainer_run(work / "trainer" / "rms_compiled", [100_000.0, 490_000.0, 490_000.0, 490_000.0])
    (work / "fsdp.json").write_text(
        json.dumps({"passed": True, "distributed_type": "FSDP", "processes": 1, "not_sharded": []}).replace(
            "}", ', "checkpoint_shards": ["a.distcp"], "resumed_exactly": true}'
        )
    )
    assert load_script("gpu_summary").main([str(work), str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "# normgpt GPU checks: NVIDIA H200" in md and "| gpu_tests | 75 | 75 | time box reached |" in md
    assert "device copy **4.22 TB/s**" in md and "**Not importable:** gguf (ImportError)" in md
    assert "- tests.test_x::test_kernel_at_full_size (failure: boom)" in md
    assert "| bf16 | fwd | 32768 | 768 | 3922 | 98.0 | compiled_ref 1.23x | ≥ 95% and ≥ 1.0x: met |" in md
    assert "| bf16 | fwd+bwd | 32768 | 4096 | 3636 | 90.9 | compiled_ref 1.14x | ≥ 85% and ≥ 1.0x: met |" in md
    assert "| + micro-batch 64 | compiled | 64 | chunked | 500,000 | 43.2% | 40.0 |" in md
    assert "| rms_compiled | 490,000 | 40.0% | 20 | completed | LlamaForCausalLM (verified) |" in md
    assert "| layer | - | - | - | not run | - |" in md
    assert "bare loop of the same settings (bench_step): 0.980" in md
    assert "resumed exactly at every step: True" in md
    results = json.loads((out / "results.json").read_text())
    assert results["tests"]["gpu tests (kernels + gpu-marked)"]["failed"] == 1
    assert results["trainer"]["rms_compiled"]["tokens_per_s"] == pytest.approx(490_000.0)


@pytest.mark.opt_in
def test_check_fsdp_runs_both_launches_and_compares_them_under_ddp_on_the_cpu(tmp_path):
    """The two launches and the comparison of check_fsdp.py, under DDP over gloo (accelerate shards nothing on the CPU):
    the resume is exact, the parameters are plain tensors, so the check fails and says why (~1 min)."""
    config = SCRIPTS.parent / "configs" / "accelerate" / "cpu_2proc.yaml"
    argv = ["--out", str(tmp_path), "--config_file", str(config), "--json", str(tmp_path / "fsdp.json")]
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "check_fsdp.py"), *argv], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 1 and "check_fsdp.py: FAILED: not sharded:" in done.stderr, done.stderr[-2000:]
    result = json.loads((tmp_path / "fsdp.json").read_text())
    assert result["resumed_exactly"] and result["processes"] == 2 and len(result["losses_full"]) == 8
    assert not result["checkpoint_shards"] and result["not_sharded"]
