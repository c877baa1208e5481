"""Typed run configuration: dataclass defaults < YAML preset (`--config`) < command-line flags.

Parsing is transformers' `HfArgumentParser` (argparse over dataclasses): every field is a `--flag` with the same name
as in Hugging Face (`TrainingArguments` names for training, `PretrainedConfig` names for the model). A YAML preset has
three sections, `model`, `data` and `training`, with the same keys; `run_config.yaml` in every output directory is
the fully resolved config in that format, so `--config RUN/run_config.yaml` reproduces a run: in a new directory,
because a file's destination fields (output_dir, overwrite_output_dir, resume_from_checkpoint, the Hub upload: the
`destination` role of train/arguments.py) are never taken from it, only from the command line.

The `model` section is not declared here: `ModelArguments` is derived from `NormGPTConfig`'s own fields, with the help
text of the config's docstring, so a model field is declared once, in model/configuration_normgpt.py. The data and
training sections, and the roles of their fields, are train/arguments.py's. `RunConfig.model_config` is the one place
the model's config is built from a run's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from model.configuration_normgpt import HIDDEN_ACTS, NORM_PLACEMENTS, NormGPTConfig
from model.modeling_normgpt import LOSS_IMPLS
from model.norms import NORMS, RMS_IMPLS
from train.arguments import (
    DESTINATION,
    REPO_ROOT,
    RESUME,
    ConfigError,
    DataArguments,
    TrainingArguments,
    fields_with,
    flag,
    shown,
)
from train.atomic_io import ParseError, read_yaml
from train.run_directory import write_run_config

DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
DEFAULT_VOCAB_SIZE = 4096  # of the BPE trained on the data when neither the preset nor the CLI sets one

# ---------------------------------------------------------------------------------------------------------------------
# The model section, derived from the model's config

# NormGPTConfig fields that are no flag: RoPE's dict (its base is `--rope_theta`), the inference switch, and the
# token ids, which come from the tokenizer.
NOT_FLAGS = frozenset({"rope_parameters", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id"})
# What argparse offers besides the config's own check. The norms are a live view of the registry: a norm registered
# at runtime is a valid --norm.
FLAG_EXTRAS: dict[str, dict[str, Any]] = {
    "norm_type": {"aliases": ["--norm"], "choices": NORMS.keys()},
    "norm_placement": {"choices": NORM_PLACEMENTS},
    "hidden_act": {"choices": HIDDEN_ACTS},
}
# Flags of the model section that are not config fields: RoPE's base, which the config keeps inside
# `rope_parameters`, and two runtime options of the machine (never saved with the model, never compared on resume):
# the RMSNorm kernel and how the loss is computed.
ROPE_THETA = (
    "rope_theta",
    float | None,
    field(default=None, metadata=flag("RoPE base (rope_parameters' rope_theta)", RESUME)),
)
RMS_IMPL = (
    "rms_impl",
    str | None,
    field(
        default=None,
        metadata=flag(
            "RMSNorm kernel: auto (the fused Triton kernel for CUDA tensors when Triton is installed, PyTorch "
            "otherwise), triton (always; an error where it cannot run) or torch; speed only, never saved",
            choices=RMS_IMPLS,
        ),
    ),
)
LOSS_IMPL = (
    "loss_impl",
    str | None,
    field(
        default=None,
        metadata=flag(
            "how the training loss is computed: chunked (the default: cross-entropy of the output layer a chunk of "
            "positions at a time, never materialising the logits of the whole batch) or full (the logits first, "
            "then the loss); the same loss to rounding, speed and memory only, never saved",
            choices=LOSS_IMPLS,
        ),
    ),
)
RUNTIME_OPTIONS = (RMS_IMPL[0], LOSS_IMPL[0])


def config_docs(doc: str) -> dict[str, str]:
    """`name: text` of a docstring's Args section (continuation lines indented deeper), '%' escaped for argparse."""
    docs: dict[str, str] = {}
    name = None
    for line in doc.split("Args:", 1)[1].splitlines():
        entry = re.match(r"^ {8}(\w+): (.*)$", line)
        if entry:
            name, docs[entry[1]] = entry[1], entry[2]
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
    return {key: text.replace("%", "%%") for key, text in docs.items()}


def model_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """One field per NormGPTConfig field that is a flag, in the config's order (None: the config's default), with the
    config docstring's text as its help, plus ROPE_THETA and the RUNTIME_OPTIONS. Every one but the runtime options
    is resume-relevant."""
    docs, types_ = config_docs(NormGPTConfig.__doc__), NormGPTConfig.__annotations__  # its own fields, real types
    fields = []
    for name, kind in types_.items():
        if name == "rope_parameters":
            fields.append(ROPE_THETA)
        if name not in NOT_FLAGS:
            optional = kind if type(None) in typing.get_args(kind) else kind | None
            metadata = flag(docs[name], RESUME, **FLAG_EXTRAS.get(name, {}))
            fields.append((name, optional, field(default=None, metadata=metadata)))
        if name == "rms_norm_eps":
            fields += [RMS_IMPL, LOSS_IMPL]
    return fields


class ModelFields:
    """What the model section does with its fields (which `model_fields` derives from NormGPTConfig)."""

    rms_impl: str | None
    loss_impl: str | None
    vocab_size: int | None

    def __post_init__(self) -> None:
        if self.rms_impl is None:  # a run_config.yaml written before the kernel choice was resolved
            self.rms_impl = RMS_IMPLS[0]
        if self.loss_impl is None:  # ... or before the loss could be chunked
            self.loss_impl = "chunked"

    @property
    def bpe_vocab_size(self) -> int:
        """The vocabulary of the BPE trained on the data (part of the token cache's key); the model's own is the
        tokenizer's, rounded up to a multiple of 64 (`RunConfig.model_config`)."""
        return self.vocab_size or DEFAULT_VOCAB_SIZE

    def config_kwargs(self) -> dict[str, Any]:
        """The NormGPTConfig keyword arguments these fields set (RoPE's base as the library's legacy `rope_theta`;
        the runtime options are no config fields)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in RUNTIME_OPTIONS}


ModelArguments = dataclasses.make_dataclass(
    "ModelArguments",
    model_fields(),
    bases=(ModelFields,),
    namespace={"__module__": __name__, "__doc__": "Model fields, named as in `NormGPTConfig`; `None` is its default."},
)
SECTIONS: dict[str, type] = {"model": ModelArguments, "data": DataArguments, "training": TrainingArguments}


def model_field(config: NormGPTConfig, name: str) -> Any:
    """A ModelArguments field's value in a built model config (RoPE's base lives in `rope_parameters` in 5.x)."""
    if name == "rope_theta" and getattr(config, "rope_parameters", None):
        return config.rope_parameters.get("rope_theta", getattr(config, "rope_theta", None))
    return getattr(config, name)


def build_model_config(model: Any, **overrides: Any) -> NormGPTConfig:
    """The HF config of the model that ModelArguments `model` describe; bad combinations become ConfigError."""
    try:
        return NormGPTConfig(**{**model.config_kwargs(), **overrides})
    except ValueError as err:
        raise ConfigError(str(err)) from None


@dataclass
class RunConfig:
    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    config_file: str
    not_replayed: tuple[str, ...] = ()  # destination fields the config file set, which were not taken from it

    def to_yaml_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def model_config(self, tokenizer: Any = None) -> NormGPTConfig:
        """The model's config: from the model fields, and with a tokenizer its vocabulary (rounded up to a multiple
        of 64, which keeps the output matmul efficient) and its special ids. Bad combinations become ConfigError."""
        if tokenizer is None:
            return build_model_config(self.model)
        return build_model_config(
            self.model,
            vocab_size=64 * math.ceil(len(tokenizer) / 64),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    def resolved(self, config: NormGPTConfig, output_dir: Path, cache_dir: Path) -> dict[str, dict[str, Any]]:
        """Sections with every default replaced by the value this run used, so `--config run_config.yaml`
        reproduces the run even after normgpt's defaults change. `vocab_size` stays the BPE size that was asked for
        (the model's is rounded up to a multiple of 64); with `--tokenizer` it is the model's, the tokenizer's size."""
        sections = self.to_yaml_dict()
        for name, value in sections["model"].items():
            if value is None and name != "vocab_size":
                sections["model"][name] = model_field(config, name)
        if self.data.tokenizer is not None:  # the model's vocabulary is the tokenizer's, whatever --vocab_size said
            sections["model"]["vocab_size"] = config.vocab_size
        elif sections["model"]["vocab_size"] is None:
            sections["model"]["vocab_size"] = self.model.bpe_vocab_size
        sections["training"]["output_dir"] = str(output_dir)
        sections["data"]["cache_dir"] = str(cache_dir)
        return sections


class ArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over normgpt's argument dataclasses: it leaves out their roles (metadata that is no
    argparse keyword), and a bad flag is one ConfigError line, where argparse prints usage and exits from deep
    inside."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field) -> None:
        # A field's roles (train/arguments.py) are normgpt's metadata, not an argparse keyword.
        field = copy.copy(field)
        field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k != "roles"})
        HfArgumentParser._parse_dataclass_field(parser, field)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(list(SECTIONS.values()), allow_abbrev=False, description="Train a NormGPT model.")
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help=f"YAML preset with model/data/training sections (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})",
    )
    return parser


def read_yaml_mapping(path: Path, what: str, keys: Sequence[str], missing_hint: str = "") -> dict[str, Any]:
    """A YAML file that must hold a mapping; every way it can be wrong is a one-line ConfigError naming `what`."""
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a directory; pass a YAML file{missing_hint}")
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist{missing_hint}")
    try:
        raw = read_yaml(path) or {}
    except ParseError as err:
        raise ConfigError(f"{what} '{path}' {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} '{path}' must be a mapping with keys {', '.join(keys)}")
    return raw


DESTINATION_FIELDS = fields_with(DESTINATION)


def _flatten_yaml(path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(field: value of the file's three sections, the destination fields it set to something else than their
    default, which are left out: where a run goes comes from the command line only)."""
    presets = ", ".join(sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
    raw = read_yaml_mapping(path, "config file", list(SECTIONS), f"; presets in configs/: {presets}")
    flat: dict[str, Any] = {}
    left_out: list[str] = []
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"config file '{path}': unknown section '{section}'; valid: {', '.join(SECTIONS)}")
        if not isinstance(values or {}, dict):
            raise ConfigError(f"config file '{path}': section '{section}' must be a mapping of field: value")
        defaults = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}
        for key, value in (values or {}).items():
            if key not in defaults:
                raise ConfigError(
                    f"config file '{path}': unknown key {shown(key)} in section '{section}'; valid: "
                    f"{', '.join(defaults)}"
                )
            if key in DESTINATION_FIELDS:
                left_out += [key] if value != defaults[key] else []
                continue
            flat[key] = value
    return flat, tuple(left_out)


def _check_types(section: str, args: Any) -> None:
    """YAML values skip argparse's conversion unless they are strings: check them against the field types."""
    hints = typing.get_type_hints(type(args))
    for name, hint in hints.items():
        value = getattr(args, name)
        if value is None:
            continue
        kinds = tuple(t for t in typing.get_args(hint) if t is not type(None)) or (hint,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            setattr(args, name, float(value))
        elif not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{section}.{name} must be {wanted}, got {shown(value)}")


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """CLI > YAML > dataclass defaults. Raises ConfigError (one line) on any bad input."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=str(DEFAULT_CONFIG))
    config_file = Path(pre.parse_known_args(argv)[0].config)
    # YAML values become parser defaults, so anything on the command line still wins; string values go through
    # the same type conversion as flags (argparse converts string defaults), so YAML and CLI are validated alike.
    from_file, not_replayed = _flatten_yaml(config_file)
    parser.set_defaults(**from_file)
    try:
        # -> the three dataclasses, a namespace holding --config, and the strings no flag claimed
        model_args, data_args, train_args, _, leftover = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if leftover:
        raise ConfigError(f"unrecognized arguments: {' '.join(leftover)} (see --help)")
    for section, args in (("model", model_args), ("data", data_args), ("training", train_args)):
        _check_types(section, args)
    if data_args.block_size < 2:
        raise ConfigError(
            f"block_size must be >= 2 (a sequence needs at least one input and one target token), got "
            f"{data_args.block_size}"
        )
    run = RunConfig(model_args, data_args, train_args, str(config_file), not_replayed)
    config = run.model_config()  # the model fields checked together (heads divide width, ...) before any work starts
    if data_args.block_size > config.max_position_embeddings:
        raise ConfigError(
            f"block_size ({data_args.block_size}) exceeds max_position_embeddings ({config.max_position_embeddings})"
        )
    return run


def save_run_config(run: RunConfig, path: Path) -> None:
    write_run_config(path, run.to_yaml_dict())
