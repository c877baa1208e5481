"""Export a trained normgpt model as the stock transformers class that computes the same function, verified.

Where a stock class computes what the model computes (train/publish/stock.py decides, from the norm's registry
entry), the directory loads with plain `AutoModelForCausalLM.from_pretrained(dir)` (no trust_remote_code, normgpt not
installed), and vLLM, TGI, SGLang and llama.cpp's converter know its architecture. Every other variant keeps
normgpt's remote-code format (loaded with trust_remote_code=True), and the export says in one line which feature no
stock class has. Every export is verified before it is published: the written directory is loaded back and must
give float32 logits within 1e-4 of the normgpt model on fixed token sequences (unpadded and left-padded) and the same
greedy tokens; otherwise nothing is written and the export fails with an ExportError, whatever went wrong. The result
is recorded in export.json beside the model (`ExportResult`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.norms import BUILTIN_NORMS
from train.atomic_io import read_json, staging_dir, write_json
from train.publish import stock
from train.publish.stock import ExportError, StockTarget
from train.run_directory import EXPORT_INFO, MODEL_CONFIG, TOKENIZER_FILES

TOLERANCE = 1e-4  # max |logit difference| in float32 that an export may show
# What the tokenizer files may carry from the machine that saved them: load arguments, not tokenizer settings.
LOAD_TIME_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash", "cache_dir", "trust_remote_code")


# ---------------------------------------------------------------------------------------------------------------------
# Verification


def left_padding(batch: int, length: int) -> torch.Tensor:
    """An attention mask [batch, length] whose row r starts with r/(2*batch) of its length as padding."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        mask[row, : row * length // (2 * batch)] = 0
    return mask


@torch.no_grad()
def verify(reference: nn.Module, candidate: nn.Module, sequences: int = 4, length: int = 64) -> dict[str, Any]:
    """Compare two models on fixed token sequences: the largest float32 logit difference over an unpadded and a
    left-padded batch, and whether greedy generation from left-padded prompts gives the same tokens."""
    config = reference.config
    length = min(length, config.max_position_embeddings)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = torch.randint(0, config.vocab_size - 1, (sequences, length), generator=torch.Generator().manual_seed(0))
    ids += (ids >= pad).long()  # never the pad id: a prompt ending in it would read as right padding
    expected = reference(ids).logits.float()
    if not torch.isfinite(expected).all():
        raise ExportError("the model's own logits are not finite (a diverged run?); nothing to export")
    diff = (expected - candidate(ids).logits.float()).abs().max().item()
    mask = left_padding(sequences, length)
    padded = reference(ids, attention_mask=mask).logits.float() - candidate(ids, attention_mask=mask).logits.float()
    diff = max(diff, padded[mask.bool()].abs().max().item())

    prompt = min(8, length - 1)
    new_tokens = max(1, min(16, config.max_position_embeddings - prompt))
    mask = left_padding(sequences, prompt)
    prompts = ids[:, :prompt].masked_fill(mask == 0, pad)
    generate = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, attention_mask=mask)
    greedy = [model.generate(prompts, **generate) for model in (reference, candidate)]
    return {
        "sequences": 2 * sequences,
        "sequence_length": length,
        "max_abs_logit_diff": diff,
        "tolerance": TOLERANCE,
        "greedy_prompts": sequences,
        "greedy_new_tokens": new_tokens,
        "greedy_identical": bool(torch.equal(greedy[0], greedy[1])),
    }


def check(verification: dict[str, Any], architecture: str) -> None:
    diff = verification["max_abs_logit_diff"]
    if not diff <= TOLERANCE:
        raise ExportError(f"{architecture} export failed its check: max |logit difference| {diff:.3g} > {TOLERANCE:g}")
    if not verification["greedy_identical"]:
        raise ExportError(f"{architecture} export failed its check: greedy tokens differ from the normgpt model's")


# ---------------------------------------------------------------------------------------------------------------------
# The export


@dataclass
class ExportResult:
    """What an export wrote (recorded as export.json beside the model; `read_export_info` reads it back)."""

    format: str  # "stock": a stock transformers class; "remote_code": normgpt's classes, trust_remote_code=True
    architecture: str  # config.json's architectures[0]
    reason: str | None  # remote_code only: why there is no stock export (the feature no stock class has, or the error)
    verification: dict[str, Any]  # empty: the model was not verified (the final-model step's last resort)
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # the normgpt config the model was trained with
    gguf: list[dict[str, Any]] = field(default_factory=list)  # files written by train/publish/gguf.py
    transformers_version: str = ""
    files: list[str] = field(default_factory=list)  # every file the export wrote (what a later one may replace)
    # Where the model was copied from, when this invocation copied an export instead of writing and checking one:
    # its `verification` is then the record of the export that wrote it, not a check made now.
    copied_from: str | None = None

    @property
    def stock(self) -> bool:
        return self.format == "stock"

    @property
    def verified(self) -> bool:
        return bool(self.verification)

    @property
    def note(self) -> str | None:
        """Why the model is not a stock class, in the words every record of it uses; None for a stock export."""
        return None if self.stock else f"no stock export: {self.reason}"

    def describe(self) -> str:
        """One line for a terminal or a log. "verified" only where the export that describes itself checked the model:
        a copy says whose check it carries."""
        if self.copied_from is not None:
            was = "verified" if self.verified else "not verified"
            check = f"copied from '{self.copied_from}', whose export.json says {was} when written (not checked again)"
        elif self.verified:
            check = f"verified: max |Δlogit| {self.verification['max_abs_logit_diff']:.2g}, greedy tokens identical"
        else:
            check = "not verified"
        if self.stock:
            return f"{self.architecture} (stock transformers class, no trust_remote_code); {check}"
        return f"normgpt remote code (trust_remote_code=True); {self.note}; {check}"

    def record(self) -> dict[str, Any]:
        """What summary.json keeps of it."""
        return {"format": self.format, "architecture": self.architecture, "verified": self.verified, "note": self.note}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_export_info(directory: Path) -> ExportResult | None:
    """The export.json of a model directory, or None where there is none (a run written before exports existed).
    Raises ExportError (one line) for one that cannot be read."""
    path = Path(directory) / EXPORT_INFO
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        names = {f.name for f in dataclasses.fields(ExportResult)}
        result = ExportResult(**{k: v for k, v in data.items() if k in names})
        if not isinstance(result.verification, dict) or not all(
            isinstance(x, list) for x in (result.gguf, result.files)
        ):
            raise TypeError("fields of the wrong type")
        return result
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ExportError(f"'{path}' cannot be read ({str(err).splitlines()[0][:120]})") from None


def write_export_info(directory: Path, result: ExportResult) -> None:
    write_json(Path(directory) / EXPORT_INFO, result.to_dict())


def copy_tokenizer(src: Path, dst: Path, model_max_length: int) -> list[str]:
    """Copy the tokenizer files, cleaned for publishing: no load arguments of the machine that saved them,
    `padding_side="left"`, which batched generation from a decoder needs, and the model's context length as
    `model_max_length`. Returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    config_path = dst / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config = {k: v for k, v in config.items() if k not in LOAD_TIME_KEYS}
        config["padding_side"] = "left"
        config["model_max_length"] = model_max_length
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return copied


@contextlib.contextmanager
def quiet_transformers():
    """Weight-loading progress bars and generation hints are noise around an export, which reports one line."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_normgpt(src: Path):
    """The normgpt model saved in `src`, in float32 on the CPU (where the check's numbers are reproducible)."""
    from model import NormGPTForCausalLM

    config_path = src / MODEL_CONFIG
    if not config_path.is_file():
        raise ExportError(f"'{src}' holds no model (no {MODEL_CONFIG})")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "normgpt":
        raise ExportError(f"'{src}' is not a normgpt model (model_type={model_type!r})")
    return NormGPTForCausalLM.from_pretrained(src, dtype=torch.float32).eval()


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


@contextlib.contextmanager
def failures_as_export_errors(what: str):
    """Whatever goes wrong while a model is written and checked (a norm whose parameters do not fit the stock layer
    it declared raises RuntimeError in `load_state_dict`, say) is an ExportError, in one line."""
    try:
        yield
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"{what} export failed: {one_line(err)}") from err


def write_stock(reference: nn.Module, target: StockTarget, out: Path) -> ExportResult:
    from transformers import AutoModelForCausalLM

    with failures_as_export_errors(target.architecture):
        model = AutoModelForCausalLM.from_config(stock.stock_config(reference.config, target), dtype=torch.float32)
        state, notes = stock.stock_state_dict(reference, model, target)
        model.load_state_dict(state, strict=True)
        model.generation_config = reference.generation_config
        model.save_pretrained(out)
        del model, state  # one copy of the weights fewer while the written one is checked
        # Checked as a user gets it: loaded back from the files just written.
        written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        if type(written).__name__ != target.architecture:
            raise ExportError(f"the export loads as {type(written).__name__}, not {target.architecture}")
        verification = verify(reference, written)
    check(verification, target.architecture)
    return ExportResult("stock", target.architecture, None, verification, notes)


def write_remote_code(reference: nn.Module, reason: str, out: Path) -> ExportResult:
    from model import NormGPTForCausalLM

    with failures_as_export_errors("remote-code"):
        reference.save_pretrained(out)  # config, weights and this normgpt's modeling source (auto_map)
        written = NormGPTForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        verification = verify(reference, written)
    check(verification, "remote-code")
    notes = []
    if reference.config.norm_type not in BUILTIN_NORMS:
        notes.append(
            f"norm_type={reference.config.norm_type} was registered at runtime (register_norm), not by normgpt: the "
            "model code saved beside the weights does not define it, so register it before loading the model"
        )
    return ExportResult("remote_code", "NormGPTForCausalLM", reason, verification, notes)


def export_model_dir(src: Path, dst: Path, fallback: bool = False) -> ExportResult:
    """Write the model saved in `src` (a normgpt `save_pretrained` directory, with its tokenizer) to `dst` in the
    format a user should get: the stock transformers class that computes the same function where one exists
    (`stock_target`), normgpt's remote-code format otherwise, and with `fallback` also where the stock export fails
    (its error is then the reason there is none). Either way the written model is loaded back and checked against
    `src` (`verify`: float32 logits within TOLERANCE, identical greedy tokens).

    `dst` must not exist or be an empty directory. It is written completely or not at all: everything goes to a
    hidden sibling first, renamed into place once checked. It then holds config.json, generation_config.json,
    model.safetensors, the tokenizer files (cleaned: `copy_tokenizer`), the modeling *.py files for remote code, and
    export.json (this result). Raises ExportError (one line) on a bad `src`, an occupied `dst`, a failed check or
    anything else that goes wrong on the way.
    """
    src, dst = Path(src), Path(dst)
    if dst.is_symlink() or (dst.exists() and (not dst.is_dir() or any(dst.iterdir()))):
        raise ExportError(f"'{dst}' already exists and is not empty; pass a new directory")
    with quiet_transformers(), failures_as_export_errors("the"):
        reference = load_normgpt(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(dst) as staging:
        written = staging / "model"
        written.mkdir()
        with quiet_transformers():
            result = write_model(reference, src, written, fallback)
        if dst.exists():
            dst.rmdir()  # empty, checked above
        try:
            os.replace(written, dst)
        except OSError:  # another writer made `dst` meanwhile
            raise ExportError(f"'{dst}' was written by another export meanwhile; nothing written here") from None
    return result


def write_model(reference: nn.Module, src: Path, out: Path, fallback: bool = False) -> ExportResult:
    """The export of `reference` (loaded from `src`) into the empty directory `out`, checked, with export.json."""
    from transformers import __version__ as transformers_version

    target = stock.stock_target(reference.config)
    if not isinstance(target, StockTarget):
        result = write_remote_code(reference, target, out)
    else:
        try:
            result = write_stock(reference, target, out)
        except ExportError as err:
            if not fallback:
                raise
            for entry in out.iterdir():  # what the failed stock export wrote
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            result = write_remote_code(reference, str(err), out)
    source = reference.config.to_diff_dict()
    for key in ("architectures", "auto_map", "transformers_version"):
        source.pop(key, None)
    result.source = {"model_type": "normgpt", **source}
    result.transformers_version = transformers_version
    if not copy_tokenizer(src, out, reference.config.max_position_embeddings):
        result.notes.append("no tokenizer files in the source directory: the export has none")
    result.files = sorted([p.name for p in out.iterdir()] + [EXPORT_INFO])
    write_export_info(out, result)
    return result
