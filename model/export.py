"""Export a trained normgpt model as the stock transformers class that computes the same function, verified.

normgpt's parameter names are Llama's, so for every variant a stock architecture represents exactly, the export is a
rename of the state dict and a new config.json. The directory then loads with plain
`AutoModelForCausalLM.from_pretrained(dir)` (no trust_remote_code, normgpt not installed), and vLLM, TGI, SGLang and
llama.cpp's converter know its architecture. With pre-norm placement (the only one stock classes have):

    norm_type                   SwiGLU MLP (silu)          GELU MLP (gelu)
    rms                         LlamaForCausalLM           ArceeForCausalLM
    rms + qk_norm               Qwen3ForCausalLM           -
    layer                       StableLmForCausalLM        Starcoder2ForCausalLM
    layer_nobias                StableLmForCausalLM (*)    Starcoder2ForCausalLM (*)
    layer_noaffine, eps=1e-5    OlmoForCausalLM            Starcoder2ForCausalLM (*)
    layer_noaffine, other eps   StableLmForCausalLM (*)    Starcoder2ForCausalLM (*)

(*) the stock LayerNorm has a gain and a bias where normgpt's has none: they are stored as ones and zeros, which
computes the same value (x * 1 + 0 is exact). OLMo's non-parametric LayerNorm hard-codes eps=1e-5.

Every other variant (post/peri placement, prms, dyt, none, qk_norm beside LayerNorm or a GELU MLP) keeps normgpt's
remote-code format (loaded with trust_remote_code=True), and the export says in one line which feature no stock class
has. Every export is verified before it is published: the written directory is loaded back and must give float32
logits within 1e-4 of the normgpt model on fixed token sequences (unpadded and left-padded) and the same greedy tokens;
otherwise nothing is written and the export fails. The result is recorded in export.json beside the model.

    python -m model.export RUN_DIR OUT_DIR [--gguf f32,q8_0] [--push_to_hub [--hub_model_id ID]]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.configuration_normgpt import SIZE_FIELDS
from train.cli import OneLineParser
from train.run_directory import SUMMARY, read_json, write_json

EXPORT_INFO = "export.json"
TOLERANCE = 1e-4  # max |logit difference| in float32 that an export may show
OLMO_EPS = 1e-5  # OlmoLayerNorm's eps is a constant, not a config field
# What the tokenizer files may carry from the machine that saved them: load arguments, not tokenizer settings.
LOAD_TIME_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash", "cache_dir", "trust_remote_code")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class ExportError(ValueError):
    """An export that cannot be written or failed its check; the message is one line."""


# ---------------------------------------------------------------------------------------------------------------------
# Which stock class computes what a config computes


@dataclass(frozen=True)
class StockTarget:
    """A stock transformers class and how a normgpt config becomes its config and state dict."""

    architecture: str
    model_type: str
    eps_field: str | None  # the config field of the norm eps; None: the class hard-codes OLMO_EPS
    fixed: dict[str, Any] = field(default_factory=dict)  # fields that switch off what normgpt does not have
    renames: tuple[tuple[str, str], ...] = ()  # parameter-name parts that differ from normgpt's (Llama's) names
    head_dim: bool = True  # the config takes head_dim (the others derive hidden_size // num_attention_heads)
    rope_extra: dict[str, Any] = field(default_factory=dict)


LLAMA = StockTarget("LlamaForCausalLM", "llama", "rms_norm_eps", {"attention_bias": False, "mlp_bias": False})
ARCEE = StockTarget("ArceeForCausalLM", "arcee", "rms_norm_eps", {"attention_bias": False, "mlp_bias": False})
QWEN3 = StockTarget("Qwen3ForCausalLM", "qwen3", "rms_norm_eps", {"attention_bias": False, "use_sliding_window": False})
STABLELM = StockTarget(
    "StableLmForCausalLM",
    "stablelm",
    "layer_norm_eps",
    {"use_qkv_bias": False, "qk_layernorm": False, "use_parallel_residual": False},
    head_dim=False,
    rope_extra={"partial_rotary_factor": 1.0},  # its default, 0.25, rotates only a quarter of each head
)
STARCODER2 = StockTarget(
    "Starcoder2ForCausalLM",
    "starcoder2",
    "norm_epsilon",
    {"use_bias": False, "sliding_window": None},
    renames=((".mlp.up_proj.", ".mlp.c_fc."), (".mlp.down_proj.", ".mlp.c_proj.")),
    head_dim=False,
)
OLMO = StockTarget("OlmoForCausalLM", "olmo", None, {"attention_bias": False, "clip_qkv": None}, head_dim=False)
STOCK_TARGETS = (LLAMA, ARCEE, QWEN3, STABLELM, STARCODER2, OLMO)

NO_STOCK_PLACEMENT = {
    "post": "norm_placement=post (norm(h + f(h)), no final norm): no stock class normalizes the residual stream itself",
    "peri": "norm_placement=peri: only Gemma 2/3 have sandwich norms, and they store the gain as 1 + w, multiply it "
    "in float32 (normgpt: in the input dtype) and scale the embeddings by sqrt(hidden_size)",
}
NO_STOCK_NORM = {
    "prms": "norm_type=prms (the RMS of the first prms_fraction of the features): no stock class has a partial RMSNorm",
    "dyt": "norm_type=dyt (Dynamic Tanh): no stock class has a DyT layer",
    "none": "norm_type=none (no normalization): every stock class normalizes its blocks",
}


def stock_target(config: Any) -> StockTarget | str:
    """The stock class that computes exactly what a NormGPTConfig computes, or the one-line reason there is none."""
    if config.norm_placement != "pre":
        return NO_STOCK_PLACEMENT.get(config.norm_placement, f"norm_placement={config.norm_placement}")
    if config.norm_type in NO_STOCK_NORM:
        return NO_STOCK_NORM[config.norm_type]
    swiglu = config.hidden_act == "silu"
    if config.qk_norm:
        if config.norm_type == "rms" and swiglu:
            return QWEN3
        return (
            f"qk_norm with norm_type={config.norm_type} and hidden_act={config.hidden_act}: the one stock class with a "
            "per-head RMSNorm on queries and keys before RoPE (Qwen3) has RMSNorm blocks and a SwiGLU MLP"
        )
    if config.norm_type == "rms":
        return LLAMA if swiglu else ARCEE
    if not swiglu:
        return STARCODER2
    if config.norm_type == "layer_noaffine" and config.rms_norm_eps == OLMO_EPS:
        return OLMO
    return STABLELM


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE in the transformers `rope_parameters` format, from either config generation (`rope_theta` field)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return {"rope_type": "default", **params}
    return {"rope_type": "default", "rope_theta": float(config.rope_theta)}


def stock_config(config: Any, target: StockTarget):
    """The stock class's config for the same model: every size, id and eps carried over, everything else off."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            *SIZE_FIELDS,
            "hidden_act",
            "initializer_range",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    kwargs["rope_parameters"] = {**rope_parameters(config), **target.rope_extra}
    if target.eps_field is not None:
        kwargs[target.eps_field] = config.rms_norm_eps
    if target.head_dim:
        kwargs["head_dim"] = config.hidden_size // config.num_attention_heads
    return AutoConfig.for_model(target.model_type, **kwargs, **target.fixed)


def stock_state_dict(reference: nn.Module, stock: nn.Module, target: StockTarget) -> tuple[dict, list[str]]:
    """normgpt's state dict under the stock class's names, and notes on what had to be added. A stock LayerNorm
    parameter that normgpt's norm does not have gets its identity value (gain 1, bias 0)."""
    state = {}
    for name, tensor in reference.state_dict().items():
        for old, new in target.renames:
            name = name.replace(old, new)
        state[name] = tensor
    expected = stock.state_dict()
    filled: set[str] = set()
    for name in sorted(expected.keys() - state.keys()):
        module_name, _, kind = name.rpartition(".")
        if isinstance(stock.get_submodule(module_name), nn.LayerNorm) and kind in ("weight", "bias"):
            state[name] = (torch.ones_like if kind == "weight" else torch.zeros_like)(expected[name])
            filled.add(kind)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        where = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise ExportError(f"the state dict does not map onto {target.architecture}: {where}")
    notes = [
        f"LayerNorm {'gains' if kind == 'weight' else 'biases'} stored as {'ones' if kind == 'weight' else 'zeros'} "
        f"(the trained norm has none; the value computed is the same)"
        for kind in sorted(filled, reverse=True)
    ]
    return state, notes


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
    reason: str | None  # remote_code only: the one feature no stock class has
    verification: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # the normgpt config the model was trained with
    gguf: list[dict[str, Any]] = field(default_factory=list)  # files written by model/gguf_export.py
    transformers_version: str = ""

    @property
    def stock(self) -> bool:
        return self.format == "stock"

    def describe(self) -> str:
        """One line for a terminal or a log."""
        check = f"max |Δlogit| {self.verification['max_abs_logit_diff']:.2g}, greedy tokens identical"
        if self.stock:
            return f"{self.architecture} (stock transformers class, no trust_remote_code); verified: {check}"
        return f"normgpt remote code (trust_remote_code=True): no stock class: {self.reason}; verified: {check}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_export_info(directory: Path) -> ExportResult | None:
    """The export.json of a model directory, or None where there is none (a run written before exports existed)."""
    path = Path(directory) / EXPORT_INFO
    if not path.is_file():
        return None
    data = read_json(path)
    names = {f.name for f in dataclasses.fields(ExportResult)}
    return ExportResult(**{k: v for k, v in data.items() if k in names})


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

    config_path = src / "config.json"
    if not config_path.is_file():
        raise ExportError(f"'{src}' holds no model (no config.json)")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "normgpt":
        raise ExportError(f"'{src}' is not a normgpt model (model_type={model_type!r})")
    model = NormGPTForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model.config.rms_impl = "auto"  # the kernel is a speed choice of the machine, not part of the model
    return model


def write_stock(reference: nn.Module, target: StockTarget, out: Path) -> ExportResult:
    from transformers import AutoModelForCausalLM

    config = stock_config(reference.config, target)
    stock = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state, notes = stock_state_dict(reference, stock, target)
    stock.load_state_dict(state, strict=True)
    stock.generation_config = reference.generation_config
    stock.save_pretrained(out)
    del stock, state  # one copy of the weights fewer while the written one is checked
    # Checked as a user gets it: loaded back from the files just written.
    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    if type(written).__name__ != target.architecture:
        raise ExportError(f"the export loads as {type(written).__name__}, not {target.architecture}")
    verification = verify(reference, written)
    check(verification, target.architecture)
    return ExportResult("stock", target.architecture, None, verification, notes)


def write_remote_code(reference: nn.Module, reason: str, out: Path) -> ExportResult:
    from model import NormGPTForCausalLM

    reference.save_pretrained(out)  # config, weights and this normgpt's modeling source (auto_map)
    written = NormGPTForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    verification = verify(reference, written)
    check(verification, "remote-code")
    return ExportResult("remote_code", "NormGPTForCausalLM", reason, verification)


def export_model_dir(src: Path, dst: Path) -> ExportResult:
    """Write the model saved in `src` (a normgpt `save_pretrained` directory, with its tokenizer) to `dst` in the
    format a user should get: the stock transformers class that computes the same function where one exists
    (`stock_target`), normgpt's remote-code format otherwise. Either way the written model is loaded back and
    checked against `src` (`verify`: float32 logits within TOLERANCE, identical greedy tokens).

    `dst` must not exist or be an empty directory. It is written completely or not at all: everything goes to a
    hidden sibling first, renamed into place once checked. It then holds config.json, generation_config.json,
    model.safetensors, the tokenizer files (cleaned: `copy_tokenizer`), the modeling *.py files for remote code, and
    export.json (this result). Raises ExportError (one line) on a bad `src`, an occupied `dst` or a failed check.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ExportError(f"'{dst}' already exists and is not empty; pass a new directory")
    with quiet_transformers():
        reference = load_normgpt(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        with quiet_transformers():
            result = write_model(reference, src, staging)
        if dst.exists():
            dst.rmdir()  # empty, checked above
        os.replace(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def write_model(reference: nn.Module, src: Path, out: Path) -> ExportResult:
    """The export of `reference` (loaded from `src`) into the empty directory `out`, checked, with export.json."""
    from transformers import __version__ as transformers_version

    target = stock_target(reference.config)
    if isinstance(target, StockTarget):
        result = write_stock(reference, target, out)
    else:
        result = write_remote_code(reference, target, out)
    source = reference.config.to_diff_dict()
    for key in ("architectures", "auto_map", "transformers_version"):
        source.pop(key, None)
    result.source = {"model_type": "normgpt", **source}
    result.transformers_version = transformers_version
    if not copy_tokenizer(src, out, reference.config.max_position_embeddings):
        result.notes.append("no tokenizer files in the source directory: the export has none")
    write_export_info(out, result)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The command: a run directory -> a complete, publishable model directory


def copy_stock_export(run_dir: Path, out: Path) -> ExportResult:
    """A run whose root already holds a verified stock export (the trainer writes one): copy its model files."""
    from train.hub import model_files

    result = read_export_info(run_dir)
    if result is None:
        raise ExportError(f"'{run_dir}' holds neither a normgpt model nor a normgpt export (no {EXPORT_INFO})")
    out.mkdir()
    for name in model_files(run_dir):
        shutil.copy2(run_dir / name, out / name)
    result.gguf = [entry for entry in result.gguf if (out / entry["file"]).is_file()]
    write_export_info(out, result)
    return result


def export_run(
    run_dir: Path, out_dir: Path, gguf_types: tuple[str, ...] = (), model_id: str | None = None
) -> ExportResult:
    """Everything the export command writes to `out_dir`, all or nothing: the model (`export_model_dir`, or a copy
    of the stock export a run already holds), its model card and LICENSE when `run_dir` holds a run (the card's code
    loads `model_id`, default `out_dir`), and one GGUF file per type in `gguf_types`. Raises ExportError /
    GGUFError (one line) before anything is published."""
    from model.gguf_export import write_gguf
    from train.model_card import write_model_card

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.json").is_file():
        raise ExportError(f"'{run_dir}' holds no model (no config.json); a run writes it when training completes")
    if out_dir.exists():
        raise ExportError(f"'{out_dir}' already exists; pass a new directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model_dir = staging / "model"
        if json.loads((run_dir / "config.json").read_text()).get("model_type") == "normgpt":
            result = export_model_dir(run_dir, model_dir)
        else:
            result = copy_stock_export(run_dir, model_dir)
        for qtype in gguf_types:
            result.gguf.append(write_gguf(model_dir, model_dir / f"{out_dir.name}-{qtype}.gguf", qtype, out_dir.name))
        write_export_info(model_dir, result)
        if (run_dir / SUMMARY).is_file():
            write_model_card(run_dir, model_dir, model_id or str(out_dir))
        os.replace(model_dir, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def parse_gguf_types(value: str) -> tuple[str, ...]:
    from model.gguf_export import QUANT_TYPES

    types = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    bad = [t for t in types if t not in QUANT_TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(f"unknown type {', '.join(bad) or value!r}; valid: {', '.join(QUANT_TYPES)}")
    return types


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        name="export",
        prog="python -m model.export",
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

    from model.gguf_export import GGUFError
    from train.hub import HubError, push_to_hub, resolve_repo_id

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


if __name__ == "__main__":
    sys.exit(main())
