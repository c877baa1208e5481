"""summary.md and results.json of a scripts/gpu_checks.sh folder: every figure its steps produced, in tables, with
the targets of issues 14 and 17 next to them, and what did not run.

    python scripts/gpu_summary.py WORK_DIR OUT_DIR

WORK_DIR holds the steps' outputs (steps.tsv, env.json, junit_*.xml, bench_norm.json, bench_step.json,
trainer/<run>/{metrics.jsonl,summary.json}, fsdp.json); whatever is missing is reported as not run. Writes
OUT_DIR/summary.md and OUT_DIR/results.json, and prints summary.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
TRAINER_RUNS = ("rms_compiled", "rms", "layer", "layer_compiled")  # gpu_checks.sh's order
NORM_TARGETS = {"fwd": 95.0, "bwd": 85.0, "fwd+bwd": 85.0}  # % of a same-size copy (issue 14)
NOT_BASELINES = ("normgpt", "copy", "F.layer_norm")  # F.layer_norm does more work: a yardstick, not a rival


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(head: list[str], rows: list[list]) -> list[str]:
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    return [f"| {' | '.join(head)} |", f"|{'---|' * len(head)}", *(f"| {' | '.join(r)} |" for r in cells)]


# ----------------------------------------------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------------------------------------------


def steps_part(work: Path) -> tuple[list[str], list[dict]]:
    steps = []
    if (work / "steps.tsv").is_file():
        for line in (work / "steps.tsv").read_text().splitlines():
            name, box, used, status = line.split("\t")
            steps.append({"step": name, "box_s": int(box), "used_s": int(used), "status": status})
    rows = [[s["step"], s["box_s"], s["used_s"], s["status"]] for s in steps]
    return ["## Steps", "", *table(["step", "box s", "used s", "status"], rows)], steps


def machine_part(env: dict | None) -> list[str]:
    if env is None:
        return ["## Machine", "", "not recorded (the env step did not run)"]
    v, c = env.get("versions", {}), env.get("ceilings", {})
    head = ["device", "SMs", "GiB", "driver", "torch", "CUDA", "triton", "transformers", "accelerate"]
    memory = f"{env['memory_GiB']:.0f}" if env.get("memory_GiB") else None
    row = [env.get("device"), env.get("sm_count"), memory, env.get("driver"), v.get("torch")]
    row += [env.get("cuda_version"), v.get("triton"), v.get("transformers"), v.get("accelerate")]
    lines = ["## Machine", "", *table(head, [row]), ""]
    if c:
        lines.append(
            f"Ceilings: device copy **{c['copy_TBps']:.2f} TB/s** (bytes read + written, {c['copy_GiB']:g} GiB)"
        )
        lines[-1] += f", bf16 matmul **{c['bf16_matmul_TFLOPs']:.0f} TFLOP/s** ({c['matmul_n']}^3), CUDA-event medians."
    if env.get("missing"):
        lines.append(f"**Not importable:** {', '.join(env['missing'])}")
    return lines


def junit(path: Path) -> dict | None:
    """Counts, seconds, the failures (name and first line) and the slowest tests of a JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    cases, failures = list(root.iter("testcase")), []
    for case in cases:
        for kind in ("failure", "error"):
            for bad in case.findall(kind):
                first = (bad.get("message") or bad.text or "").strip().splitlines()
                failures.append(f"{case.get('classname')}::{case.get('name')} ({kind}: {(first or [''])[0][:160]})")
    skipped = sum(1 for case in cases if case.find("skipped") is not None)
    slowest = sorted(cases, key=lambda c: -float(c.get("time") or 0))[:8]
    return {
        "tests": len(cases),
        "failed": len(failures),
        "skipped": skipped,
        "passed": len(cases) - len(failures) - skipped,
        "seconds": round(sum(float(s.get("time") or 0) for s in root.iter("testsuite")), 1),
        "failures": failures,
        "slowest": [f"{c.get('classname')}::{c.get('name')} {float(c.get('time') or 0):.1f}s" for c in slowest],
    }


def tests_part(work: Path) -> tuple[list[str], dict]:
    parts = {"gpu tests (kernels + gpu-marked)": "junit_gpu.xml", "the rest of the suite": "junit_suite.xml"}
    results = {name: junit(work / file) for name, file in parts.items()}
    rows = [
        [n, r["passed"], r["failed"], r["skipped"], r["seconds"]] if r else [n, "-", "-", "-", "not run"]
        for n, r in results.items()
    ]
    lines = ["## Tests", "", *table(["part", "passed", "failed", "skipped", "seconds"], rows)]
    for name, r in results.items():
        if r and r["failures"]:
            lines += ["", f"Failed in {name}:", *(f"- {f}" for f in r["failures"])]
    suite = results["the rest of the suite"]
    if suite:
        lines += ["", "Slowest tests of the suite (they bound `pytest -n 16`):", *(f"- {s}" for s in suite["slowest"])]
    return lines, results


def norm_part(record: dict | None) -> tuple[list[str], list[dict]]:
    if record is None:
        return ["## Kernel benchmark (bench_norm.py)", "", "not run"], []
    gbps = load_script("bench_norm").gbps
    rows, figures = [], []
    for case in record["norm"]:
        ours, copy = gbps(case, "normgpt"), gbps(case, "copy")
        rivals = {n: ms for n, ms in case["kernel_ms"].items() if n not in NOT_BASELINES}
        best = min(rivals, key=rivals.get) if rivals else None
        speedup = rivals[best] / case["kernel_ms"]["normgpt"] if best else None
        pct = 100 * ours / copy
        target = NORM_TARGETS[case["mode"]]
        figure = {k: case[k] for k in ("dtype", "mode", "rows", "hidden")}
        figure |= {"normgpt_GBps": ours, "pct_copy": pct, "best_baseline": best, "vs_best": speedup}
        figures.append(figure)
        verdict = "met" if pct >= target and (speedup or 0) >= 1.0 else "MISSED"
        rows.append([case["dtype"], case["mode"], case["rows"], case["hidden"], f"{ours:.0f}", f"{pct:.1f}"])
        rows[-1] += [f"{best} {speedup:.2f}x" if best else "-", f"≥ {target:g}% and ≥ 1.0x: {verdict}"]
    head = ["dtype", "mode", "rows", "N", "normgpt GB/s", "% copy", "vs best baseline", "target"]
    lines = ["## Kernel benchmark (bench_norm.py)", "", *table(head, rows)]
    if record.get("skipped"):
        lines.append(f"\nNot measured (time box): {len(record['skipped'])} cases.")
    return lines, figures


def step_part(record: dict | None) -> list[str]:
    if record is None:
        return ["## Step benchmark (bench_step.py)", "", "not run"]
    meta, rows = record["meta"], []
    for r in record["results"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        mode = r["mode"] if r["mode"] == "eager" or r["compile_mode"] == "default" else r["compile_mode"]
        memory = f"{r['max_memory_GiB']:.1f}" if "max_memory_GiB" in r else "-"
        rows.append([r["label"] or r["variant"], mode, r["batch_size"], r["loss"], f"{r['tokens_per_s']:,.0f}", mfu])
        rows[-1].append(memory)
    head = ["run", "mode", "micro-batch", "loss", "tokens/s", "MFU", "peak GiB"]
    formula = next((r["flops_formula"] for r in record["results"] if "flops_formula" in r), "")
    lines = ["## Step benchmark (bench_step.py)", "", *table(head, rows), ""]
    lines.append(f"MFU = tokens/s x FLOPs per token / {(meta.get('peak_flops') or 0) / 1e12:.0f} TFLOP/s; {formula}.")
    targets = load_script("bench_step").TARGETS
    for name, value in record["ratios"].items():
        target = targets.get(name)
        lines.append(f"- {name}: {value:.3f}" + (f" (target ≥ {target:.2f})" if target else ""))
    if record.get("skipped"):
        lines.append(f"- not run (time box): {', '.join(record['skipped'])}")
    return lines


def trainer_run(run_dir: Path) -> dict | None:
    """tokens/s and MFU of a trainer run: its metrics rows after the first (compilation, tuning), harmonic mean."""
    from train.run_directory import METRICS, MetricsLog, Summary

    if not (run_dir / METRICS).is_file():
        return None
    rows = [r for r in MetricsLog(run_dir / METRICS).rows() if "tokens_per_sec" in r]
    later = rows[1:] or rows
    figures = {"windows": len(later), "steps": rows[-1]["step"] if rows else 0}
    if later:
        figures["tokens_per_s"] = len(later) / sum(1 / r["tokens_per_sec"] for r in later)
        mfus = [r["mfu"] for r in later if r.get("mfu") is not None]
        figures["mfu"] = sum(mfus) / len(mfus) if mfus else None
        figures["first_window_s"] = rows[0]["elapsed"]
    try:
        summary = Summary.read(run_dir)
        figures |= {"status": str(summary.status), "export": (summary.export or {}).get("architecture")}
        figures["verified"] = (summary.export or {}).get("verified")
    except (OSError, ValueError):
        figures["status"] = "no summary"
    return figures


def trainer_part(work: Path, step_record: dict | None) -> tuple[list[str], dict]:
    runs = {name: trainer_run(work / "trainer" / name) for name in TRAINER_RUNS}
    rows = []
    for name, r in runs.items():
        if r is None or "tokens_per_s" not in r:
            rows.append([name, "-", "-", "-", "not run" if r is None else r.get("status"), "-"])
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        export = f"{r.get('export')} ({'verified' if r.get('verified') else 'NOT verified'})"
        rows.append([name, f"{r['tokens_per_s']:,.0f}", mfu, f"{r['first_window_s']:.0f}", r["status"], export])
    head = ["run", "tokens/s (after window 1)", "MFU (trainer's)", "first 10 steps s", "status", "export"]
    lines = ["## Trainer: configs/small.yaml, 40 steps", "", *table(head, rows)]
    bare = [r for r in (step_record or {}).get("results", []) if r.get("label", "").startswith("+ micro-batch")]
    trainer = runs.get("rms_compiled") or {}
    if bare and trainer.get("tokens_per_s"):
        ratio = trainer["tokens_per_s"] / bare[0]["tokens_per_s"]
        runs["trainer_vs_bare_loop"] = ratio
        lines.append(
            f"\ntrainer rms compiled / bare loop of the same settings (bench_step): {ratio:.3f} (target ≥ 0.98)"
        )
    return lines, runs


def fsdp_part(record: dict | None) -> list[str]:
    if record is None:
        return ["## FSDP (check_fsdp.py)", "", "not run"]
    if record.get("failure"):
        return ["## FSDP (check_fsdp.py)", "", f"FAILED: {record['failure']}"]
    sharded = (
        "every parameter a sharded DTensor" if not record["not_sharded"] else f"NOT sharded: {record['not_sharded']}"
    )
    return [
        "## FSDP (check_fsdp.py)",
        "",
        f"- {record['distributed_type']}, {record['processes']} process(es): {sharded}",
        f"- sharded checkpoint files: {len(record['checkpoint_shards'])}",
        f"- resumed exactly at every step: {record['resumed_exactly']}",
        f"- passed: {record['passed']}",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: gpu_summary.py WORK_DIR OUT_DIR", file=sys.stderr)
        return 2
    work, out = Path(argv[0]), Path(argv[1])
    env = read_json(work / "env.json")
    step_lines, steps = steps_part(work)
    test_lines, tests = tests_part(work)
    norm_lines, norm = norm_part(read_json(work / "bench_norm.json"))
    step_record = read_json(work / "bench_step.json")
    trainer_lines, trainer = trainer_part(work, step_record)
    title = f"# normgpt GPU checks: {(env or {}).get('device', 'no GPU recorded')}"
    commit = (work / "commit.txt").read_text().strip() if (work / "commit.txt").is_file() else "unknown"
    parts = [[title, "", f"Commit {commit}; `bash scripts/gpu_checks.sh`."], step_lines, machine_part(env), test_lines]
    parts += [norm_lines, step_part(step_record), trainer_lines, fsdp_part(read_json(work / "fsdp.json"))]
    text = "\n\n".join("\n".join(part) for part in parts) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    results = {"steps": steps, "env": env, "tests": tests, "bench_norm": norm, "bench_step": step_record}
    results |= {"trainer": trainer, "fsdp": read_json(work / "fsdp.json"), "commit": commit}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
