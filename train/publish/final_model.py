"""The final-model step: what a finished run leaves as its model. Saved, exported to the format a user should get,
published into the run directory's root, then its card and, if asked, the upload.

The run directory's root holds the model `AutoModelForCausalLM.from_pretrained(run_dir)` loads with no flags: the
verified stock-architecture export where one computes the same function (train/publish/export.py), otherwise
normgpt's remote-code format (`trust_remote_code=True`), verified too. A stock export that fails, for any reason, is
an ExportError: the run keeps its remote-code model, stays completed, and its summary says "no stock export:
<reason>". Checkpoints stay in `checkpoint-<step>/` and are never part of the model.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator

from train.atomic_io import FILE_MODE, fresh_dir, remove_path
from train.publish.export import (
    ExportResult,
    copy_tokenizer,
    export_model_dir,
    read_export_info,
    write_export_info,
)
from train.publish.hub import HubError, push_to_hub
from train.publish.model_card import write_model_card
from train.publish.stock import ExportError
from train.run_directory import (
    CARD,
    EXPORT_INFO,
    EXPORT_STAGING,
    FINAL_STAGING,
    LICENSE,
    LOSS_CURVE,
    SCRATCH_DIRS,
    TOKENIZER_FILES,
    model_files,
)


def save_final_model(model, accelerator: Accelerator, tokenizer, output_dir: Path) -> ExportResult | None:
    """Save the trained model (all processes must call this: it gathers FSDP shards), export it, and publish the
    result into `output_dir`; the run directory never holds a half-written model. Returns the export's result on
    the main process, None elsewhere."""
    staging = output_dir / FINAL_STAGING
    # A compiled model's keys carry the wrapper's `_orig_mod.`.
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in accelerator.get_state_dict(model).items()}
    result = None
    if accelerator.is_main_process:
        fresh_dir(staging)  # never written through a link planted at its name
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        result = publish(staging, output_dir, unwrapped.config.max_position_embeddings)
    accelerator.wait_for_everyone()
    return result


def export_or_keep(staging: Path, export_dir: Path, max_length: int) -> ExportResult:
    """The export of the model saved in `staging` into `export_dir`: stock where a stock class computes it, else
    (or where the stock export fails) verified remote code. Where even that fails its check, the saved model itself,
    unverified, so that a run that trained to the end still leaves its model."""
    try:
        return export_model_dir(staging, export_dir, fallback=True)
    except ExportError as err:
        error = str(err)
    print(f"export: warning: {error}; the run directory keeps the saved model, unverified", file=sys.stderr)
    fresh_dir(export_dir)
    for item in staging.iterdir():
        if item.name not in TOKENIZER_FILES:
            os.replace(item, export_dir / item.name)
    copy_tokenizer(staging, export_dir, max_length)
    result = ExportResult("remote_code", "NormGPTForCausalLM", f"the export failed: {error}", verification={})
    result.files = sorted(p.name for p in export_dir.iterdir()) + [EXPORT_INFO]
    write_export_info(export_dir, result)
    return result


def publish(staging: Path, output_dir: Path, max_length: int) -> ExportResult:
    """Export the normgpt model saved in `staging` and move the export's files into `output_dir`, replacing the
    ones of the same name. Of the files an earlier final model of this run wrote (the `files` its export.json lists,
    say when an extended run's model changed format), those the new export does not replace are removed; nothing else
    is (the card, LICENSE and loss curve are rewritten after)."""
    export_dir = output_dir / EXPORT_STAGING
    remove_path(export_dir)
    earlier = _exported_files(output_dir)
    result = export_or_keep(staging, export_dir, max_length)
    for name in earlier - {p.name for p in export_dir.iterdir()}:
        (output_dir / name).unlink(missing_ok=True)
    for item in export_dir.iterdir():
        os.chmod(item, FILE_MODE)  # transformers writes the weights readable by their owner only
        os.replace(item, output_dir / item.name)
    export_dir.rmdir()
    shutil.rmtree(staging)
    return result


def _exported_files(output_dir: Path) -> set[str]:
    """The model files the run's previous final model wrote, as its export.json lists them (none for a first one)."""
    try:
        earlier = read_export_info(output_dir)
    except ExportError:
        return set()
    names = set(earlier.files) if earlier is not None else set()
    return {name for name in names if name in model_files(output_dir) and name not in (CARD, LICENSE, LOSS_CURVE)}


def clean_stale(output_dir: Path) -> None:
    """Remove what a run killed while saving or exporting its final model left behind (a link there is removed, its
    target never touched)."""
    for pattern in SCRATCH_DIRS:
        for path in output_dir.glob(pattern):
            remove_path(path)


def card_and_upload(output_dir: Path, export: ExportResult, repo_id: str | None, private: bool | None) -> bool:
    """Write the model card, say what the run directory holds and how to load it, and upload it when `repo_id` is
    given. Returns False when the upload failed (the run itself is complete)."""
    write_model_card(output_dir, model_id=repo_id)
    flags = "" if export.stock else ", trust_remote_code=True"
    print(f"model: {export.describe()}\n  load it with AutoModelForCausalLM.from_pretrained('{output_dir}'{flags})")
    if repo_id is None:
        return True
    try:
        url = push_to_hub(output_dir, repo_id, private=private)
    except HubError as err:
        retry = f"normgpt push {output_dir} --hub_model_id {repo_id}"
        print(f"train.py: error: {err}; the run is complete: retry with {retry}", file=sys.stderr)
        return False
    print(f"uploaded the model (never its checkpoints) to {url}")
    return True
