"""What a finished run leaves as its model: saved, exported to the format a user should get, then its card and, if
asked, the upload.

The run directory's root holds the model `AutoModelForCausalLM.from_pretrained(run_dir)` loads with no flags: the
verified stock-architecture export where one computes the same function (model/export.py), otherwise normgpt's
remote-code format (`trust_remote_code=True`). Checkpoints stay in `checkpoint-<step>/` and are never part of it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from model.export import TOKENIZER_FILES, ExportError, ExportResult, copy_tokenizer, export_model_dir
from train.data import PreparedData
from train.hub import model_files
from train.run_directory import FILE_MODE

STAGING = ".final.tmp"
EXPORT = ".export"


def save_final_model(model, accelerator: Accelerator, data: PreparedData, output_dir: Path) -> ExportResult | None:
    """Save the trained model (all processes must call this: it gathers FSDP shards), export it, and publish the
    result into `output_dir`; the run directory never holds a half-written model. Returns the export's result on
    the main process, None elsewhere or when the export failed (the normgpt model is published then, and the
    reason printed)."""
    staging = output_dir / STAGING
    # A compiled model's keys carry the wrapper's `_orig_mod.`.
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in accelerator.get_state_dict(model).items()}
    result = None
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        # The kernel a run trained with is a speed choice, not part of the model: saved models run anywhere.
        impl = unwrapped.config.rms_impl
        unwrapped.config.rms_impl = "auto"
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        unwrapped.config.rms_impl = impl
        data.tokenizer.save_pretrained(staging)
        result = publish(staging, output_dir, unwrapped.config.max_position_embeddings)
    accelerator.wait_for_everyone()
    return result


def publish(staging: Path, output_dir: Path, max_length: int) -> ExportResult | None:
    """Export the normgpt model saved in `staging` and move the export's files into `output_dir`, replacing the
    model files a previous save left there."""
    export_dir = output_dir / EXPORT
    shutil.rmtree(export_dir, ignore_errors=True)
    try:
        result = export_model_dir(staging, export_dir)
        source = export_dir
    except ExportError as err:
        print(f"export failed: {err}; the run directory keeps the normgpt (remote-code) model", file=sys.stderr)
        result, source = None, output_dir / (EXPORT + ".fallback")
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir()
        for item in staging.iterdir():
            if item.name not in TOKENIZER_FILES:
                os.replace(item, source / item.name)
        copy_tokenizer(staging, source, max_length)
    for name in model_files(output_dir):
        if name not in ("README.md", "LICENSE") and not name.endswith(".png"):
            (output_dir / name).unlink()
    for item in source.iterdir():
        os.chmod(item, FILE_MODE)  # transformers writes the weights readable by their owner only
        os.replace(item, output_dir / item.name)
    source.rmdir()
    shutil.rmtree(staging, ignore_errors=True)
    return result


def clean_stale(output_dir: Path) -> None:
    """Remove what a run killed while saving or exporting its final model left behind."""
    # export_model_dir stages in a hidden sibling of its destination: `.{name}.<random>.tmp`
    for pattern in (STAGING, EXPORT, f"{EXPORT}.fallback", f".{EXPORT}.*.tmp"):
        for path in output_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def sample_text(model, accelerator: Accelerator, data: PreparedData, max_new_tokens: int) -> str:
    """Greedy continuation of the first tokens of the validation split (of the training split without one): the
    quickest look at what the model learnt."""
    source = data.val if len(data.val) >= 16 else data.train
    model.eval()
    prompt = torch.as_tensor(source[:16].astype("int64"), device=accelerator.device)[None]
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=data.tokenizer.eos_token_id
        )
    model.train()
    return data.tokenizer.decode(out[0])
