"""`normgpt evaluate`: a normgpt model under lm-evaluation-harness, bits per byte on local text, offline, plus any
hub task.

    normgpt evaluate RUN_DIR --text held_out.txt                 # offline: bits per byte of the file
    normgpt evaluate RUN_DIR --text docs/ --tasks hellaswag,arc_easy --limit 200    # hub tasks need internet

RUN_DIR is a run directory or an export (`normgpt export`): a stock export loads as its stock class, a
remote-code one with trust_remote_code=True. `--text` takes .txt files or folders of them; each file is one
document, scored by lm-eval's rolling log-likelihood (windows of the model's context length), and the metrics are
lm-eval's own: bits_per_byte, byte_perplexity and word_perplexity. With only local text the run is offline
(HF_HUB_OFFLINE, HF_DATASETS_OFFLINE): nothing is downloaded, and the task index of lm-eval's hub tasks is not built.

Needs the `eval` extra: `pip install -e ".[eval]"` (lm-eval).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from train.atomic_io import write_json
from train.cli import OneLineParser
from train.run_directory import MODEL_CONFIG

LOCAL_TASK = "normgpt_text_bpb"
METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity")


class EvalError(ValueError):
    """A bad argument or an unusable model directory; the message is one line."""


def text_files(paths: list[Path]) -> list[Path]:
    """The .txt files named or inside the folders named, sorted; one line of error for anything else."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.txt") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise EvalError(f"--text '{path}' does not exist; pass a .txt file or a folder of them")
    if paths and not found:
        raise EvalError(f"--text {', '.join(map(str, paths))}: no .txt file found")
    return found


def local_task(files: list[Path]) -> dict[str, Any]:
    """An lm-eval task config: every file a document (datasets' `text` builder, local and offline), scored by
    rolling log-likelihood. The byte and word counts lm-eval divides by come from the same text."""
    return {
        "task": LOCAL_TASK,
        "dataset_path": "text",
        "dataset_kwargs": {"data_files": {"test": [str(p.resolve()) for p in files]}, "sample_by": "document"},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [{"metric": name} for name in METRICS],
    }


def model_arguments(model_dir: Path, device: str, batch_size: int) -> dict[str, Any]:
    """lm-eval `hf` model arguments: float32, and trust_remote_code only for a remote-code (normgpt) model."""
    config_path = model_dir / MODEL_CONFIG
    if not config_path.is_file():
        raise EvalError(f"'{model_dir}' holds no model (no {MODEL_CONFIG}); train or export one first")
    config = json.loads(config_path.read_text())
    remote = bool(config.get("auto_map")) or config.get("model_type") == "normgpt"
    return {
        "pretrained": str(model_dir),
        "trust_remote_code": remote,
        "dtype": "float32",
        "device": device,
        "batch_size": batch_size,
    }


def evaluate(
    model_dir: Path,
    text: list[Path],
    tasks: list[str],
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 1,
) -> dict[str, Any]:
    """lm-eval's results dict for the local text task (when `text` names files) and the hub `tasks`."""
    files = text_files(text)
    if not files and not tasks:
        raise EvalError("nothing to evaluate: pass --text FILE (bits per byte, offline) and/or --tasks NAMES")
    if not tasks:  # before datasets and the hub client are imported: they read these once
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvalError("lm-eval is not installed; pip install -e '.[eval]'") from None

    specs: list[Any] = ([local_task(files)] if files else []) + list(tasks)
    # The index of lm-eval's own tasks takes a minute to build; local text needs none of it.
    manager = TaskManager(include_defaults=bool(tasks))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_arguments(Path(model_dir), device, batch_size),
        tasks=specs,
        task_manager=manager,
        limit=limit,
        log_samples=False,
        bootstrap_iters=0,
    )
    if results is None:
        raise EvalError("lm-eval returned no results")
    return results


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for task, metrics in results["results"].items():
        values = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        lines.append(f"{task}: {values}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        name="evaluate", prog="normgpt evaluate", description="Evaluate a normgpt model with lm-evaluation-harness."
    )
    parser.add_argument("model_dir", type=Path, help="run directory or export directory")
    parser.add_argument("--text", type=Path, nargs="*", default=[], help=".txt files or folders: bits per byte")
    parser.add_argument("--tasks", default="", help="comma-separated lm-eval task names (downloads their data)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many documents per task")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        results = evaluate(args.model_dir, args.text, tasks, args.limit, args.device, args.batch_size)
    except EvalError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    for line in summary_lines(results):
        print(line)
    if args.output is not None:
        kept = {key: results.get(key) for key in ("results", "versions", "n-samples", "config")}
        write_json(args.output, json.loads(json.dumps(kept, default=str)))
        print(f"results: {args.output}")
    return 0
