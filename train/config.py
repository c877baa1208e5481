"""Typed run configuration: dataclass defaults < YAML preset (`--config`) < command-line flags.

Parsing is transformers' `HfArgumentParser` (argparse over dataclasses): every field is a `--flag` with the same name
as in Hugging Face (`TrainingArguments` names for training, `PretrainedConfig` names for the model). A YAML preset has
three sections, `model`, `data` and `training`, with the same keys; `run_config.yaml` in every output directory is
the fully resolved config in that format, so `--config RUN/run_config.yaml` reproduces a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from model.configuration_normgpt import HIDDEN_ACTS, NORM_PLACEMENTS, RMS_IMPLS, NormGPTConfig
from model.norms import NORMS
from train.data import DataArguments
from train.run_directory import write_run_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
REPORT_TO = ("none", "wandb", "tensorboard", "all")


class ConfigError(ValueError):
    """A bad flag, config file, key or value. The message is one line that names the problem and the valid choices."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class ModelArguments:
    """Model fields, named as in `NormGPTConfig`. `None` keeps the config class's default."""

    norm_type: str | None = field(
        default=None, metadata=_help("normalization layer", aliases=["--norm"], choices=list(NORMS))
    )
    norm_placement: str | None = field(
        default=None, metadata=_help("where the norms sit in a block", choices=list(NORM_PLACEMENTS))
    )
    qk_norm: bool | None = field(default=None, metadata=_help("RMSNorm on each head's queries and keys"))
    z_loss: float | None = field(default=None, metadata=_help("coefficient of the z-loss on log Z (0: off)"))
    prms_fraction: float | None = field(default=None, metadata=_help("share of features pRMSNorm's RMS reads"))
    dyt_alpha_init: float | None = field(default=None, metadata=_help("initial alpha of DyT"))
    rms_impl: str | None = field(default=None, metadata=_help("RMSNorm kernel", choices=list(RMS_IMPLS)))
    rms_norm_eps: float | None = field(default=None, metadata=_help("epsilon of every norm layer"))
    vocab_size: int | None = field(
        default=None, metadata=_help("vocabulary size (of the BPE trained on the data; ignored with --tokenizer)")
    )
    hidden_size: int | None = field(default=None, metadata=_help("width of the residual stream"))
    intermediate_size: int | None = field(default=None, metadata=_help("MLP width (default: from hidden_size)"))
    num_hidden_layers: int | None = field(default=None, metadata=_help("number of transformer blocks"))
    num_attention_heads: int | None = field(default=None, metadata=_help("query heads"))
    num_key_value_heads: int | None = field(default=None, metadata=_help("key/value heads (grouped-query attention)"))
    max_position_embeddings: int | None = field(default=None, metadata=_help("longest trained sequence"))
    rope_theta: float | None = field(default=None, metadata=_help("RoPE base"))
    hidden_act: str | None = field(
        default=None, metadata=_help("silu: SwiGLU MLP; gelu: GELU MLP", choices=list(HIDDEN_ACTS))
    )
    tie_word_embeddings: bool | None = field(default=None, metadata=_help("share input and output embeddings"))
    initializer_range: float | None = field(default=None, metadata=_help("std of the normal init"))

    def config_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TrainingArguments:
    """Training fields, named as in `transformers.TrainingArguments` where it has them."""

    output_dir: str | None = field(
        default=None, metadata=_help("run directory (default: runs/<preset>-<norm>-<date>-<time>)")
    )
    overwrite_output_dir: bool = field(default=False, metadata=_help("replace a run already in output_dir"))
    max_steps: int = field(default=300, metadata=_help("optimizer steps"))
    per_device_train_batch_size: int = field(default=16, metadata=_help("sequences per device per micro-batch"))
    per_device_eval_batch_size: int | None = field(default=None, metadata=_help("default: the train batch size"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    learning_rate: float = field(default=3e-3, metadata=_help("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("cosine decay floor, as a fraction of learning_rate"))
    warmup_steps: int = field(default=30, metadata=_help("linear warm-up steps"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW decay of matrices (never norms/biases/embeddings)"))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2"))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    max_grad_norm: float = field(default=1.0, metadata=_help("clip the global grad norm to this (0: no clipping)"))
    seed: int = field(default=0, metadata=_help("seed of the initialization and the data order"))
    logging_steps: int = field(default=10, metadata=_help("write a metrics row every N steps (>= 1)"))
    eval_steps: int = field(default=100, metadata=_help("evaluate every N steps (0: only at the end)"))
    max_eval_batches: int = field(default=20, metadata=_help("validation batches per evaluation"))
    save_steps: int = field(default=100, metadata=_help("checkpoint every N steps (0: never)"))
    save_total_limit: int | None = field(default=2, metadata=_help("keep only the newest N checkpoints"))
    resume_from_checkpoint: str | None = field(
        default=None, metadata=_help("checkpoint directory, or 'latest' for the newest one in output_dir")
    )
    max_nonfinite_steps: int = field(
        default=10,
        metadata=_help("skip steps with a non-finite gradient; stop the run as diverged after this many in a row"),
    )
    stability_metrics: bool = field(
        default=True, metadata=_help("per-block grad/update/residual/attention-logit probes on logging steps")
    )
    torch_compile: bool = field(default=False, metadata=_help("compile the model with torch.compile"))
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute each block's activations in the backward pass: less memory, slower")
    )
    report_to: str = field(default="none", metadata=_help("experiment tracker", choices=list(REPORT_TO)))
    run_name: str | None = field(default=None, metadata=_help("tracker run name (default: output_dir's name)"))
    sample_max_new_tokens: int = field(default=64, metadata=_help("tokens sampled from the final model (0: none)"))
    push_to_hub: bool = field(default=False, metadata=_help("upload the final model directory to the Hugging Face Hub"))
    hub_model_id: str | None = field(default=None, metadata=_help("Hub repo for --push_to_hub, e.g. user/normgpt-tiny"))
    hub_private_repo: bool | None = field(default=None, metadata=_help("create the Hub repo private"))

    def __post_init__(self) -> None:
        positive = (
            "max_steps",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_eval_batches",
            "logging_steps",
            "max_nonfinite_steps",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        non_negative = ("warmup_steps", "weight_decay", "max_grad_norm", "logging_steps", "eval_steps", "save_steps")
        for name in (*non_negative, "sample_max_new_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.adam_epsilon > 0:
            raise ConfigError(f"adam_epsilon must be > 0, got {self.adam_epsilon}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.per_device_eval_batch_size is not None and self.per_device_eval_batch_size <= 0:
            raise ConfigError(f"per_device_eval_batch_size must be > 0, got {self.per_device_eval_batch_size}")
        if self.save_total_limit is not None and self.save_total_limit <= 0:
            raise ConfigError(f"save_total_limit must be > 0, got {self.save_total_limit}")
        if self.report_to not in REPORT_TO:
            raise ConfigError(f"unknown report_to {self.report_to!r}; valid: {', '.join(REPORT_TO)}")
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size


SECTIONS: dict[str, type] = {"model": ModelArguments, "data": DataArguments, "training": TrainingArguments}


@dataclass
class RunConfig:
    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    config_file: str

    def to_yaml_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def model_config(self, **overrides: Any) -> NormGPTConfig:
        """The HF config of the model these arguments describe; bad combinations become ConfigError."""
        try:
            return NormGPTConfig(**{**self.model.config_kwargs(), **overrides})
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def resolved(self, config: NormGPTConfig, output_dir: Path, cache_dir: Path) -> dict[str, dict[str, Any]]:
        """Sections with every default replaced by the value this run used, so `--config run_config.yaml`
        reproduces the run even after normgpt's defaults change. `vocab_size` stays the BPE size that was asked for
        (the model's is rounded up to a multiple of 64)."""
        sections = self.to_yaml_dict()
        for name, value in sections["model"].items():
            if value is None and name != "vocab_size":
                sections["model"][name] = model_field(config, name)
        if sections["model"]["vocab_size"] is None:
            sections["model"]["vocab_size"] = DEFAULT_VOCAB_SIZE if self.data.tokenizer is None else config.vocab_size
        sections["training"]["output_dir"] = str(output_dir)
        sections["data"]["cache_dir"] = str(cache_dir)
        return sections


# The optimizer's and the learning-rate schedule's hyperparameters (a resume must keep them; a model card shows them).
OPTIMIZATION_FIELDS = (
    "learning_rate",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
)
DEFAULT_VOCAB_SIZE = 4096  # of the BPE trained on the data when neither the preset nor the CLI sets one


def model_field(config: NormGPTConfig, name: str) -> Any:
    """A ModelArguments field's value in a built model config (RoPE's base lives in `rope_parameters` in 5.x)."""
    if name == "rope_theta" and getattr(config, "rope_parameters", None):
        return config.rope_parameters.get("rope_theta", getattr(config, "rope_theta", None))
    return getattr(config, name)


class _Parser(HfArgumentParser):
    """argparse prints usage and exits from deep inside; we want one line and the caller deciding the exit."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> _Parser:
    parser = _Parser(list(SECTIONS.values()), allow_abbrev=False, description="Train a NormGPT model.")
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
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{what} '{path}' is not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} '{path}' must be a mapping with keys {', '.join(keys)}")
    return raw


def _flatten_yaml(path: Path) -> dict[str, Any]:
    presets = ", ".join(sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
    raw = read_yaml_mapping(path, "config file", list(SECTIONS), f"; presets in configs/: {presets}")
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"config file '{path}': unknown section '{section}'; valid: {', '.join(SECTIONS)}")
        valid = [f.name for f in dataclasses.fields(SECTIONS[section])]
        for key, value in (values or {}).items():
            if key not in valid:
                raise ConfigError(
                    f"config file '{path}': unknown key '{key}' in section '{section}'; valid: {', '.join(valid)}"
                )
            flat[key] = value
    return flat


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
            raise ConfigError(f"{section}.{name} must be {wanted}, got {value!r}")


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """CLI > YAML > dataclass defaults. Raises ConfigError (one line) on any bad input."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=str(DEFAULT_CONFIG))
    config_file = Path(pre.parse_known_args(argv)[0].config)
    # YAML values become parser defaults, so anything on the command line still wins; string values go through
    # the same type conversion as flags (argparse converts string defaults), so YAML and CLI are validated alike.
    parser.set_defaults(**_flatten_yaml(config_file))
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
    run = RunConfig(model_args, data_args, train_args, str(config_file))
    run.model_config()  # validate the model fields together (heads divide width, ...) before any work starts
    return run


def save_run_config(run: RunConfig, path: Path) -> None:
    write_run_config(path, run.to_yaml_dict())
