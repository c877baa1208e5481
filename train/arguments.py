"""The run's flags besides the model's: the `data` and `training` sections of a run config, with the role each field
plays in its metadata.

Roles (a field may have several; `fields_with` lists them):
- optimization: a hyperparameter of the optimizer or the learning-rate schedule;
- resume: a resumed run must keep the value its checkpoint was trained with (optimization fields too; the model's
  fields are all resume-relevant, train/config.py);
- card: shown on the model card (optimization fields too);
- bookkeeping: where and how a run is kept, not what it computes: the runs of one sweep differ in it without it being
  something they compare;
- destination: which run directory (or Hub repo) a run writes, and how it treats what is there. Recorded in
  run_config.yaml, never taken from a `--config` file: replaying a run's config trains a new run, and never aims at
  the recorded one (train/config.py).

Light on purpose (dataclasses and nothing else): the sweep report reads the roles without importing torch. The model
section is derived from the model config itself, in train/config.py.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_TO = ("none", "wandb", "tensorboard", "all")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's

OPTIMIZATION = "optimization"
RESUME = "resume"
CARD = "card"
BOOKKEEPING = "bookkeeping"
DESTINATION = "destination"


class ConfigError(ValueError):
    """A bad flag, config file, key or value. The message is one line that names the problem and the valid choices."""


_SHOWN = reprlib.Repr()  # (keyword arguments only from Python 3.12 on)
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 60, 60


def shown(value: Any) -> str:
    """A value as an error line quotes it: its repr, cut short (a YAML value can be any size, a message cannot)."""
    return _SHOWN.repr(value)


def flag(text: str, *roles: str, **argparse: Any) -> dict[str, Any]:
    """A field's metadata: its help text, its roles, and what else argparse takes (`choices`, `aliases`)."""
    return {"help": text, "roles": frozenset(roles), **argparse}


@dataclass
class DataArguments:
    """Data fields: what the data layer (train/data/) reads, tokenizes and batches."""

    dataset: str = field(
        default="stdlib",
        metadata=flag(
            "'stdlib' (the running Python's standard library sources, no download), a local "
            ".txt/.jsonl/.json/.parquet file or folder of them, or a hub dataset name"
        ),
    )
    dataset_config_name: str | None = field(default=None, metadata=flag("config name of a hub dataset"))
    text_column: str = field(
        default="text", metadata=flag("column holding the text (.jsonl/.json/.parquet files and hub datasets)")
    )
    streaming: bool = field(
        default=False,
        metadata=flag("hub datasets only: stream instead of downloading everything (needs --max_train_bytes)"),
    )
    max_train_bytes: int | None = field(
        default=None,
        metadata=flag("cap on training text in UTF-8 bytes (default: all); also caps a hub validation split"),
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata=flag(
            "share of documents held out for validation, chosen by a hash of each file/document so adding "
            "data never moves others (hub datasets with a 'validation' split use that instead)"
        ),
    )
    tokenizer: str | None = field(
        default=None,
        metadata=flag("existing tokenizer (local path or hub name); default: train a byte-level BPE on the data"),
    )
    block_size: int = field(default=256, metadata=flag("tokens per training sequence", RESUME, CARD))
    cache_dir: str | None = field(
        default=None,
        metadata=flag("token cache location (default: $NORMGPT_CACHE or ~/.cache/normgpt)", BOOKKEEPING),
    )


@dataclass
class TrainingArguments:
    """Training fields, named as in `transformers.TrainingArguments` where it has them."""

    output_dir: str | None = field(
        default=None,
        metadata=flag(
            "run directory: a new or empty one (default: runs/<preset>-<norm>-<date>-<time>)", BOOKKEEPING, DESTINATION
        ),
    )
    overwrite_output_dir: bool = field(
        default=False, metadata=flag("replace the run already in output_dir", BOOKKEEPING, DESTINATION)
    )
    max_steps: int = field(default=300, metadata=flag("optimizer steps", CARD))
    per_device_train_batch_size: int = field(
        default=16, metadata=flag("sequences per device per micro-batch", RESUME, CARD)
    )
    per_device_eval_batch_size: int | None = field(default=None, metadata=flag("default: the train batch size"))
    gradient_accumulation_steps: int = field(default=1, metadata=flag("micro-batches per optimizer step", CARD))
    learning_rate: float = field(default=3e-3, metadata=flag("peak learning rate", OPTIMIZATION))
    min_lr_ratio: float = field(
        default=0.1, metadata=flag("cosine decay floor, as a fraction of learning_rate", OPTIMIZATION)
    )
    warmup_steps: int = field(default=30, metadata=flag("linear warm-up steps", OPTIMIZATION))
    weight_decay: float = field(
        default=0.1, metadata=flag("AdamW decay of matrices (never norms/biases/embeddings)", OPTIMIZATION)
    )
    adam_beta1: float = field(default=0.9, metadata=flag("AdamW beta1", OPTIMIZATION))
    adam_beta2: float = field(default=0.95, metadata=flag("AdamW beta2", OPTIMIZATION))
    adam_epsilon: float = field(default=1e-8, metadata=flag("AdamW epsilon", OPTIMIZATION))
    max_grad_norm: float = field(
        default=1.0, metadata=flag("clip the global grad norm to this (0: no clipping)", OPTIMIZATION)
    )
    seed: int = field(default=0, metadata=flag("seed of the initialization and the data order", RESUME, CARD))
    logging_steps: int = field(default=10, metadata=flag("write a metrics row every N steps (>= 1)"))
    eval_steps: int = field(default=100, metadata=flag("evaluate every N steps (0: only at the end)"))
    max_eval_batches: int = field(default=20, metadata=flag("validation batches per evaluation"))
    save_steps: int = field(default=100, metadata=flag("checkpoint every N steps (0: never)"))
    save_total_limit: int | None = field(default=2, metadata=flag("keep only the newest N checkpoints"))
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata=flag(
            "continue the run in output_dir: 'latest' (its newest checkpoint) or one of its checkpoint directories",
            BOOKKEEPING,
            DESTINATION,
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=flag(
            "start this new run from the weights of another run's checkpoint directory (same model fields and "
            "tokenizer); its step count, schedule and data order start anew",
            RESUME,
        ),
    )
    init_optimizer_state: bool = field(
        default=False, metadata=flag("with --init_from: also take the checkpoint's AdamW moments", RESUME)
    )
    max_nonfinite_steps: int = field(
        default=10,
        metadata=flag("skip steps with a non-finite gradient; stop the run as diverged after this many in a row"),
    )
    stability_metrics: bool = field(
        default=True, metadata=flag("per-block grad/update/residual/attention-logit probes on logging steps")
    )
    torch_compile: bool = field(default=False, metadata=flag("compile the model with torch.compile", CARD))
    torch_compile_mode: str | None = field(
        default=None,
        metadata=flag(
            "torch.compile mode (implies --torch_compile): default, reduce-overhead (CUDA graphs), max-autotune "
            "(also tries matmul configurations; minutes of compilation) or max-autotune-no-cudagraphs",
            choices=list(COMPILE_MODES),
        ),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=flag("recompute each block's activations in the backward pass: less memory, slower")
    )
    report_to: str = field(default="none", metadata=flag("experiment tracker", BOOKKEEPING, choices=list(REPORT_TO)))
    run_name: str | None = field(
        default=None, metadata=flag("tracker run name (default: output_dir's name)", BOOKKEEPING)
    )
    sample_max_new_tokens: int = field(default=64, metadata=flag("tokens sampled from the final model (0: none)"))
    push_to_hub: bool = field(
        default=False,
        metadata=flag("upload the final model directory to the Hugging Face Hub", BOOKKEEPING, DESTINATION),
    )
    hub_model_id: str | None = field(
        default=None, metadata=flag("Hub repo for --push_to_hub, e.g. user/normgpt-tiny", BOOKKEEPING, DESTINATION)
    )
    hub_private_repo: bool | None = field(
        default=None, metadata=flag("create the Hub repo private", BOOKKEEPING, DESTINATION)
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        self._check_counts()
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.adam_epsilon > 0:
            raise ConfigError(f"adam_epsilon must be > 0, got {self.adam_epsilon}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.report_to not in REPORT_TO:
            raise ConfigError(f"unknown report_to {self.report_to!r}; valid: {', '.join(REPORT_TO)}")
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.init_optimizer_state and self.init_from is None:
            raise ConfigError("init_optimizer_state needs --init_from, the checkpoint whose AdamW moments to take")
        if self.torch_compile_mode is not None:
            if self.torch_compile_mode not in COMPILE_MODES:
                raise ConfigError(
                    f"unknown torch_compile_mode {self.torch_compile_mode!r}; valid: {', '.join(COMPILE_MODES)}"
                )
            self.torch_compile = True  # a mode is asked of the compiler: as in transformers' TrainingArguments

    def _check_counts(self) -> None:
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
        non_negative = ("warmup_steps", "weight_decay", "max_grad_norm", "eval_steps", "save_steps")
        for name in (*non_negative, "sample_max_new_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("per_device_eval_batch_size", "save_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    def tokens_per_step(self, block_size: int, processes: int) -> int:
        """Training tokens of one optimizer step over every process."""
        return self.per_device_train_batch_size * block_size * self.gradient_accumulation_steps * processes


def roles(f: dataclasses.Field) -> frozenset[str]:
    return f.metadata.get("roles", frozenset())


def fields_with(*wanted: str, sections: tuple[type, ...] = (DataArguments, TrainingArguments)) -> tuple[str, ...]:
    """Names of the fields of `sections` that play any of the `wanted` roles, in field order."""
    return tuple(f.name for cls in sections for f in dataclasses.fields(cls) if roles(f) & set(wanted))
