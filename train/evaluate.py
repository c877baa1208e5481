"""`normgpt evaluate`: a normgpt model under lm-evaluation-harness, bits per byte on local text, offline, plus any
hub task.

    normgpt evaluate RUN_DIR --text held_out.txt                 # offline: bits per byte of the file
    normgpt evaluate RUN_DIR --text docs/ --tasks hellaswag,arc_easy --limit 200    # hub tasks need internet

RUN_DIR is a run directory or an export (`normgpt export`): a stock export loads as its stock class, a normgpt
remote-code one through the installed normgpt package (importing `model` registers it with the Auto classes), never
through the .py files beside its weights. Code from the model folder runs only with `--trust_remote_code`, for a
model of another project; without it such a folder is refused in one line.

`--text` takes .txt files or folders of them; each file is one document, scored by lm-eval's rolling log-likelihood
(windows of the model's context length), and the metrics are lm-eval's own: bits_per_byte, byte_perplexity and
word_perplexity. With only local text the run is offline
(HF_HUB_OFFLINE, HF_DATASETS_OFFLINE): nothing is downloaded, and the task index of lm-eval's hub tasks is not built.
`--tasks` first asks the Hub once (a few seconds at most) and stops in one line when it cannot be reached, rather than
after lm-eval's retries; with HF_DATASETS_OFFLINE=1 the tasks' data comes from the datasets cache without asking.

Needs the `eval` extra: `pip install -e ".[eval]"` (lm-eval).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from train.atomic_io import write_json
from train.cli import OneLineParser, one_line
from train.library_noise import VERBOSE_ENV, hide_log_messages, verbose
from train.run_directory import MODEL_CONFIG

LOCAL_TASK = "normgpt_text_bpb"
# The metrics of the local text task and how lm-eval aggregates each over documents. These are lm-eval's defaults for
# them, declared so that it does not warn, twice per metric, that it chose them; all three are lower-is-better.
METRICS = {
    "bits_per_byte": "bits_per_byte",
    "byte_perplexity": "weighted_perplexity",
    "word_perplexity": "weighted_perplexity",
}
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_PROBE_SECONDS = 5.0  # how long `--tasks` waits for the Hub to answer before calling it unreachable


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
        "metric_list": [
            {"metric": name, "aggregation": aggregation, "higher_is_better": False}
            for name, aggregation in METRICS.items()
        ],
    }


def check_device(device: str) -> None:
    """One line for a device string torch does not parse, or a device this machine does not have."""
    import torch

    try:
        wanted = torch.device(device)
    except RuntimeError:
        raise EvalError(f"--device '{device}' is not a device; pass cpu, cuda, cuda:1, mps, ...") from None
    if wanted.type == "cpu":
        return
    found = torch.accelerator.current_accelerator()
    count = torch.accelerator.device_count() if found is not None else 0
    have = f"this machine has {count} {found.type} device(s)" if found is not None else "this machine has no GPU"
    if found is None or found.type != wanted.type or (wanted.index or 0) >= count:
        raise EvalError(f"--device {device}: {have}; pass --device cpu")


def remote_modules(auto_map: dict[str, Any]) -> list[str]:
    """The .py files a config's auto_map would run (`"AutoConfig": "evil.C"` -> evil.py), at most three named."""
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    names = sorted({ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in refs})
    return [*names[:3], "..."] if len(names) > 3 else names


def model_arguments(model_dir: Path, device: str, batch_size: int, trust_remote_code: bool = False) -> dict[str, Any]:
    """lm-eval `hf` model arguments: float32, and trust_remote_code only when the user passed it.

    A normgpt model (model_type normgpt, with the auto_map its save wrote) loads through the installed package:
    importing `model` registers normgpt with the Auto classes, and transformers prefers registered code to the
    folder's. Any other model whose config names code to run (an auto_map) and whose type transformers does not
    know is refused without --trust_remote_code, before anything is loaded."""
    config_path = model_dir / MODEL_CONFIG
    if not config_path.is_file():
        raise EvalError(f"'{model_dir}' holds no model (no {MODEL_CONFIG}); train or export one first")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise EvalError(f"'{config_path}' is not readable JSON ({one_line(err)})") from None
    if not isinstance(config, dict):
        raise EvalError(f"'{config_path}' is not a JSON object")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import model  # noqa: F401  (registers normgpt with transformers' Auto classes)

    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict) and config.get("model_type") not in CONFIG_MAPPING and not trust_remote_code:
        modules = ", ".join(remote_modules(auto_map)) or "its auto_map"
        raise EvalError(
            f"'{model_dir}' loads only by running its own code ({modules}), and normgpt runs none unless asked: "
            "read it, then pass --trust_remote_code"
        )
    return {
        "pretrained": str(model_dir),
        "backend": "causal",  # every model here is a causal LM; lm-eval's guess warns on types it does not list
        "trust_remote_code": trust_remote_code,
        "dtype": "float32",
        "device": device,
        "batch_size": batch_size,
    }


def hub_problem() -> str | None:
    """Why the Hub cannot serve hub tasks' data now, or None. One request with a short timeout, so that an offline
    machine hears it in seconds instead of after datasets' retries (about a minute). Skipped when the user chose
    the caches (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE): datasets then fails at once on data it does not have."""
    if any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_ENV):
        return None
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as err:  # httpx's and the OS's network errors alike: the Hub did not answer
        return f"{constants.ENDPOINT} cannot be reached ({one_line(err)})"
    return None


def check_tasks(manager: Any, tasks: list[str]) -> None:
    """One line naming the task names (or patterns) lm-eval's index does not match, with the nearest names."""
    unknown = [name for name in tasks if not manager.match_tasks([name])]
    if not unknown:
        return
    near = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise EvalError(f"unknown lm-eval task {', '.join(unknown)}{hint} (`lm-eval ls tasks` lists them)")


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval without the messages it prints that say nothing about this evaluation (NORMGPT_VERBOSE=1 keeps them).

    - transformers' "Token indices sequence length is longer than the specified maximum ... indexing errors": lm-eval
      tokenizes a whole document before it cuts it into windows of the model's context, so no sequence longer than
      the context ever reaches the model.
    - git's "fatal: not a git repository": lm-eval records the git commit of the working directory (not the model's,
      and not kept in normgpt's results) by running git with its stderr open, which outside a repository says so."""
    hide_log_messages("transformers.tokenization_utils_base", r"Token indices sequence length is longer than")
    import lm_eval.evaluator

    if verbose() or not hasattr(lm_eval.evaluator, "get_git_commit_hash"):
        yield
        return
    probe = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = probe


def evaluate(
    model_dir: Path,
    text: list[Path],
    tasks: list[str],
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """lm-eval's results dict for the local text task (when `text` names files) and the hub `tasks`. Everything that
    can be checked is checked before the model loads or a download starts; EvalError is the one-line refusal."""
    files = text_files(text)
    if not files and not tasks:
        raise EvalError("nothing to evaluate: pass --text FILE (bits per byte, offline) and/or --tasks NAMES")
    if importlib.util.find_spec("lm_eval") is None:
        raise EvalError("lm-eval is not installed; pip install -e '.[eval]'")
    if not tasks:  # before datasets and the hub client are imported: they read these once
        for name in OFFLINE_ENV:
            os.environ.setdefault(name, "1")
    check_device(device)
    model_args = model_arguments(Path(model_dir), device, batch_size, trust_remote_code)
    if tasks and (problem := hub_problem()):
        raise EvalError(
            f"--tasks needs the Hugging Face Hub for the tasks' data, and {problem}; --text evaluates offline, and "
            "HF_DATASETS_OFFLINE=1 uses task data already in the datasets cache"
        )
    import lm_eval
    from lm_eval.tasks import TaskManager

    specs: list[Any] = ([local_task(files)] if files else []) + list(tasks)
    # The index of lm-eval's own tasks takes seconds to build (10 s on 2 cores); local text needs none of it.
    manager = TaskManager(include_defaults=bool(tasks))
    check_tasks(manager, tasks)
    try:
        with quiet_lm_eval():
            results = lm_eval.simple_evaluate(
                model="hf",
                model_args=model_args,
                tasks=specs,
                task_manager=manager,
                limit=limit,
                log_samples=False,
                bootstrap_iters=0,
            )
    except Exception as err:  # a model that does not load, data that cannot be fetched, ...: one line
        if verbose():
            raise
        raise EvalError(f"lm-eval failed: {one_line(err)} ({VERBOSE_ENV}=1 shows where)") from err
    if results is None:
        raise EvalError("lm-eval returned no results")
    return results


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for task, metrics in results["results"].items():
        values = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        lines.append(f"{task}: {values}")
    return lines


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        name="evaluate", prog="normgpt evaluate", description="Evaluate a normgpt model with lm-evaluation-harness."
    )
    parser.add_argument("model_dir", type=Path, help="run directory or export directory")
    parser.add_argument("--text", type=Path, nargs="*", default=[], help=".txt files or folders: bits per byte")
    parser.add_argument("--tasks", default="", help="comma-separated lm-eval task names (downloads their data)")
    parser.add_argument("--limit", type=positive_int, default=None, help="at most this many documents per task")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=positive_int, default=1)
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the Python files of a model folder whose type transformers does not know (never needed for normgpt)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        results = evaluate(
            args.model_dir, args.text, tasks, args.limit, args.device, args.batch_size, args.trust_remote_code
        )
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
