"""`normgpt export RUN_DIR OUT_DIR`: a run directory -> a complete, publishable model directory.

    normgpt export RUN_DIR OUT_DIR [--gguf f32,q8_0] [--push_to_hub [--hub_model_id ID] [--hub_private_repo]]

OUT_DIR gets the model in the format a user should get (the verified stock export, or normgpt's remote code with the
reason there is no stock class: train/publish/export.py), its model card and LICENSE, and the GGUF files asked for;
never checkpoints. It is written completely or not at all. Bad input and a failed export are one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from train.atomic_io import read_json, staging_dir
from train.cli import OneLineParser
from train.output_dir import OutputDirError, check_path
from train.publish.export import ExportResult, export_model_dir, read_export_info, write_export_info
from train.publish.gguf import NO_GGUF, QUANT_TYPES, GGUFError, gguf_problem, write_gguf
from train.publish.hub import HubError, push_to_hub, resolve_repo_id
from train.publish.model_card import write_model_card
from train.publish.stock import ExportError, StockTarget, stock_target
from train.run_directory import EXPORT_INFO, MODEL_CONFIG, SUMMARY, model_files, remote_code_files


def copy_stock_export(run_dir: Path, out: Path) -> ExportResult:
    """A run whose root already holds a verified stock export (the trainer writes one): copy its model files, and
    nothing that would run code (a stock export has none: a config.json naming code is refused)."""
    result = read_export_info(run_dir)
    if result is None:
        raise ExportError(f"'{run_dir}' holds neither a normgpt model nor a normgpt export (no {EXPORT_INFO})")
    if remote_code_files(run_dir) or "auto_map" in read_json(run_dir / MODEL_CONFIG):
        raise ExportError(
            f"'{run_dir}/{MODEL_CONFIG}' names remote code (auto_map) although '{run_dir}' holds no normgpt model; "
            "refusing to copy it as a stock model"
        )
    out.mkdir()
    for name in model_files(run_dir):
        shutil.copy2(run_dir / name, out / name)
    result.gguf = [entry for entry in result.gguf if (out / entry["file"]).is_file()]
    result.copied_from = str(run_dir)
    write_export_info(out, result)
    return result


def gguf_refusal(run_dir: Path) -> str | None:
    """Why `run_dir`'s model can have no GGUF file (one line), decided before any export: from the stock class a
    normgpt model would be exported as, or from the stock export a run already holds."""
    config = read_json(run_dir / MODEL_CONFIG)
    if config.get("model_type") != "normgpt":
        return gguf_problem(run_dir)
    from model import NormGPTConfig

    target = stock_target(NormGPTConfig.from_pretrained(run_dir))
    if not isinstance(target, StockTarget):
        return f"{NO_GGUF['NormGPTForCausalLM']}: {target}"
    return gguf_problem(run_dir, architecture=target.architecture, rope=config.get("rope_parameters"))


def _claim_destination(out_dir: Path) -> None:
    """OUT_DIR must be new, and creatable: one line otherwise, before any work."""
    if out_dir.exists() or out_dir.is_symlink():
        raise ExportError(f"'{out_dir}' already exists; pass a new directory")
    try:
        check_path(out_dir, "out_dir")
    except OutputDirError as err:
        raise ExportError(str(err)) from None


def export_run(
    run_dir: Path, out_dir: Path, gguf_types: tuple[str, ...] = (), model_id: str | None = None
) -> ExportResult:
    """Everything the export command writes to `out_dir`, all or nothing: the model (`export_model_dir`, or a copy
    of the stock export a run already holds), its model card and LICENSE when `run_dir` holds a run (the card's code
    loads `model_id`, default `out_dir`), and one GGUF file per type in `gguf_types`. Raises ExportError /
    GGUFError (one line) before anything is published; a GGUF that cannot be written is refused before the export."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / MODEL_CONFIG).is_file():
        raise ExportError(f"'{run_dir}' holds no model (no {MODEL_CONFIG}); a run writes it when training completes")
    _claim_destination(out_dir)
    try:
        normgpt = read_json(run_dir / MODEL_CONFIG).get("model_type") == "normgpt"
        problem = gguf_refusal(run_dir) if gguf_types else None
    except (OSError, ValueError, AttributeError) as err:
        raise ExportError(f"'{run_dir / MODEL_CONFIG}' cannot be read ({str(err).splitlines()[0][:120]})") from None
    if problem:
        raise GGUFError(f"no GGUF for '{run_dir}': {problem}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out_dir) as staging:
        model_dir = staging / "model"
        result = export_model_dir(run_dir, model_dir) if normgpt else copy_stock_export(run_dir, model_dir)
        for qtype in gguf_types:
            result.gguf.append(write_gguf(model_dir, model_dir / f"{out_dir.name}-{qtype}.gguf", qtype, out_dir.name))
        write_export_info(model_dir, result)
        if (run_dir / SUMMARY).is_file():
            write_model_card(run_dir, model_dir, model_id or str(out_dir))
        try:
            os.rename(model_dir, out_dir)
        except OSError:  # another export made `out_dir` meanwhile: the first to finish keeps it
            raise ExportError(f"'{out_dir}' was written by another export meanwhile; nothing written here") from None
    return result


def parse_gguf_types(value: str) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    bad = [t for t in types if t not in QUANT_TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(f"unknown type {', '.join(bad) or value!r}; valid: {', '.join(QUANT_TYPES)}")
    return types


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        name="export",
        prog="normgpt export",
        description="Write a run's model as the stock transformers class that computes it (verified), or as "
        "normgpt remote code where none does; optionally GGUF files and a Hub upload.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory (or any normgpt save_pretrained directory)")
    parser.add_argument("out_dir", type=Path, help="new directory to write the model to")
    parser.add_argument("--gguf", type=parse_gguf_types, default=(), help="GGUF files to write, e.g. f32,q8_0")
    parser.add_argument("--push_to_hub", action="store_true", help="upload out_dir's model files to the Hub")
    parser.add_argument("--hub_model_id", help="Hub repo (default: out_dir's name, in your namespace)")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    repo_id = None
    try:
        if args.push_to_hub:  # first: the card shows the id that loads the model
            repo_id = resolve_repo_id(args.hub_model_id or args.out_dir.name)
        result = export_run(args.run_dir, args.out_dir, args.gguf, repo_id)
    except (ExportError, GGUFError, HubError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    print(f"export: {args.out_dir}: {result.describe()}")
    for note in result.notes:
        print(f"export: note: {note}")
    for entry in result.gguf:
        print(f"export: {args.out_dir / entry['file']} (GGUF {entry['type']}, llama.cpp {entry['architecture']})")
    if args.push_to_hub:
        try:
            url = push_to_hub(args.out_dir, repo_id, args.hub_private_repo or None)
        except HubError as err:
            print(f"export: error: {err}", file=sys.stderr)
            return 2
        print(f"export: uploaded to {url}")
    return 0
