"""The trainer under FSDP really shards its parameters, and resumes its sharded checkpoint exactly. Needs a CUDA GPU.

    python scripts/check_fsdp.py --out runs/check_fsdp                    # one process per GPU
    python scripts/check_fsdp.py --out runs/check_fsdp --num_processes 1 --json runs/check_fsdp/fsdp.json

Two launches of the trainer through `accelerate launch --config_file configs/accelerate/fsdp.yaml`: a small model
(64 wide, 2 blocks) on a slice of the standard library for 8 steps with a checkpoint at step 4, then the same run
resumed from that checkpoint in a copy of its directory. Inside each launch this script wraps the trainer: after its
setup it records every parameter of the prepared model (a DTensor or not, its placements, its local and global
shape). It passes when every parameter is a DTensor sharded over all the processes, the checkpoint holds sharded
files (torch.distributed.checkpoint's .distcp), and the resumed run logs the uninterrupted run's loss and gradient
norm at every step. Both launches run with deterministic algorithms (warnings only, CUBLAS_WORKSPACE_CONFIG set), and
the resume pins the fused RMSNorm's recorded launch configurations, as every resume does.

`--config_file` takes another accelerate config (a DDP one shows the check failing on plain tensors). Exit status 0
when every check passed, 1 when one failed (the JSON says which), 2 for bad input or no GPU for FSDP. Without a GPU,
accelerate forms no FSDP group: tests/test_fsdp.py drives FSDP2 on the CPU instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))  # `accelerate launch scripts/check_fsdp.py` runs it as a file

STEPS, SAVE_AT = 8, 4
TRAINING = {
    "dataset": "stdlib",
    "max_train_bytes": 1_000_000,
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "block_size": 64,
    "max_position_embeddings": 64,
    "per_device_train_batch_size": 8,
    "max_steps": STEPS,
    "save_steps": SAVE_AT,
    "logging_steps": 1,
    "eval_steps": 0,
    "max_eval_batches": 2,
    "warmup_steps": 2,
    "learning_rate": 3e-3,
    "sample_max_new_tokens": 0,
    "seed": 0,
}


# ----------------------------------------------------------------------------------------------------------------
# Inside a launch: the trainer, wrapped
# ----------------------------------------------------------------------------------------------------------------


def parameter_record(model) -> dict:
    """Each parameter of the prepared model: DTensor or not, its placements, its local and global shape."""
    record = {}
    for name, p in model.named_parameters():
        placements = [f"Shard({x.dim})" if x.is_shard() else type(x).__name__ for x in getattr(p, "placements", ())]
        local = p.to_local().shape if hasattr(p, "to_local") else p.shape
        mesh = getattr(p, "device_mesh", None)
        record[name] = {"type": type(p).__name__, "placements": placements, "local": list(local)}
        record[name] |= {"global": list(p.shape), "mesh_size": mesh.size() if mesh is not None else None}
    return record


def worker(record_path: Path, trainer_flags: list[str]) -> int:
    import torch

    from train.config import parse_args
    from train.trainer import Trainer

    torch.use_deterministic_algorithms(True, warn_only=True)  # a resume is only exact where the kernels are
    trainer = Trainer(parse_args(trainer_flags))
    trainer.setup()
    facts = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "processes": trainer.accelerator.num_processes,
    }
    facts["parameters"] = parameter_record(trainer.model)
    if trainer.is_main:
        record_path.write_text(json.dumps(facts, indent=1))
    trainer.train()
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The driver: two launches, then the checks
# ----------------------------------------------------------------------------------------------------------------


def launch(args, out: Path, record: Path, **extra) -> subprocess.CompletedProcess:
    flags = [item for key, value in {**TRAINING, **extra}.items() for item in (f"--{key}", str(value))]
    flags += ["--cache_dir", str(args.out / "cache"), "--output_dir", str(out)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(args.config_file)]
    command += ["--main_process_port", "0"]
    command += ["--num_processes", str(args.num_processes)] if args.num_processes else []
    command += [__file__, "--worker", str(record), "--", *flags]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)


def losses(run_dir: Path) -> dict[int, list]:
    from train.run_directory import METRICS, MetricsLog

    return {r["step"]: [r["loss"], r["grad_norm"]] for r in MetricsLog(run_dir / METRICS).rows() if "loss" in r}


def sharding_problems(record: dict) -> list[str]:
    processes = record["processes"]
    problems = [
        f"{name}: {p['type']} {p['placements']} over {p['mesh_size']} process(es)"
        for name, p in record["parameters"].items()
        if p["type"] != "DTensor"
        or not any(x.startswith("Shard(") for x in p["placements"])
        or p["mesh_size"] != processes
    ]
    return problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])


def check(args) -> dict:
    """Both launches and every check; the result (what the JSON holds)."""
    full, resumed = args.out / "full", args.out / "resumed"
    result: dict = {"config_file": str(args.config_file), "passed": False}
    done = launch(args, full, args.out / "full_setup.json", overwrite_output_dir="true")
    (args.out / "full.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return result | {"failure": f"the uninterrupted run exited {done.returncode}: see {args.out / 'full.log'}"}
    shutil.rmtree(resumed, ignore_errors=True)
    shutil.copytree(full, resumed, ignore=shutil.ignore_patterns(".normgpt.lock"))
    again = launch(
        args, resumed, args.out / "resumed_setup.json", resume_from_checkpoint=resumed / f"checkpoint-{SAVE_AT}"
    )
    (args.out / "resumed.log").write_text(again.stdout + again.stderr)
    if again.returncode != 0:
        return result | {"failure": f"the resumed run exited {again.returncode}: see {args.out / 'resumed.log'}"}
    setup = json.loads((args.out / "full_setup.json").read_text())
    expected, got = losses(full), losses(resumed)
    shards = sorted(str(p.relative_to(full)) for p in (full / f"checkpoint-{SAVE_AT}").rglob("*.distcp"))
    result |= {"distributed_type": setup["distributed_type"], "processes": setup["processes"]}
    result |= {"not_sharded": sharding_problems(setup), "checkpoint_shards": shards}
    result |= {"losses_full": expected, "losses_resumed": got, "resumed_exactly": got == expected}
    result["passed"] = not result["not_sharded"] and bool(shards) and result["resumed_exactly"]
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from train.cli import OneLineParser

    parser = OneLineParser(
        description=__doc__, name="check_fsdp.py", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="a directory for the two runs and their logs")
    parser.add_argument("--config_file", type=Path, default=REPO / "configs" / "accelerate" / "fsdp.yaml")
    parser.add_argument("--num_processes", type=int, help="default: the config's (one per GPU)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    parser.add_argument("--json", type=Path, help="write the result to this file")
    args = parser.parse_args(argv)
    if not args.config_file.is_file():
        parser.error(f"--config_file '{args.config_file}' does not exist")
    if args.num_processes is not None and args.num_processes < 1:
        parser.error("--num_processes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # inside a launch: --worker RECORD -- TRAINER FLAGS
        return worker(Path(argv[1]), argv[3:])
    args = parse_args(argv)
    import torch

    if "FSDP" in args.config_file.read_text() and not torch.cuda.is_available():
        print(
            "check_fsdp.py: needs a CUDA GPU for FSDP (none found); tests/test_fsdp.py checks FSDP2 on the CPU",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = check(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if result["passed"]:
        print(
            f"FSDP: every parameter a sharded DTensor over {result['processes']} process(es); "
            f"{len(result['checkpoint_shards'])} checkpoint shard file(s); resumed exactly at every step"
        )
    else:
        reason = result.get("failure") or "; ".join(
            [
                *(["not sharded: " + ", ".join(result["not_sharded"])] if result["not_sharded"] else []),
                *([] if result["checkpoint_shards"] else ["no sharded checkpoint files"]),
                *([] if result["resumed_exactly"] else ["the resumed losses differ from the uninterrupted run's"]),
            ]
        )
        print(f"check_fsdp.py: FAILED: {reason}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
