"""Whether a run may continue a checkpoint: the settings that would break the resume or silently not apply must be
the ones the checkpoint was trained with.

Compared: the fields whose metadata gives them the role `resume` or `optimization` (train/arguments.py): the
architecture (every model field but the runtime options `rms_impl` and `loss_impl`, which pick kernels, not the
numerics), `block_size`, the per-device batch, the optimizer and schedule hyperparameters, and the seed; then the
data (dataset fingerprint, tokenizer and split, through the token cache's key) and the global batch (a different
process count with the same global batch is fine). Everything else (max_steps, logging, evaluation, saving, trackers,
compile, gradient checkpointing) may change. A longer `--max_steps` re-spreads the cosine decay over the new horizon
from the resume step on: the learning rate at the resume step jumps from the old schedule's value to the new one's.

A new run started from another run's checkpoint (`--init_from`) needs less: the same architecture and tokenizer
(`check_init_config`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from train.arguments import OPTIMIZATION, RESUME, ConfigError, DataArguments, TrainingArguments, fields_with
from train.atomic_io import read_json
from train.config import ModelArguments, build_model_config, model_field
from train.run_directory import DATA_INFO, RUN_CONFIG, read_run_config

COMPARED_MODEL = fields_with(RESUME, sections=(ModelArguments,))
COMPARED_DATA = fields_with(RESUME, OPTIMIZATION, sections=(DataArguments,))
COMPARED_TRAINING = fields_with(RESUME, OPTIMIZATION, sections=(TrainingArguments,))


def _resolved_model(section: dict[str, Any]) -> dict[str, Any]:
    """The resume-relevant model fields as the model saw them: a legacy run_config.yaml wrote null for every
    default, which the model config resolves."""
    model = ModelArguments(**{k: v for k, v in section.items() if k in COMPARED_MODEL and k != "vocab_size"})
    config = build_model_config(model)
    out = {k: model_field(config, k) for k in COMPARED_MODEL if k != "vocab_size"}
    return {**out, "vocab_size": ModelArguments(vocab_size=section.get("vocab_size")).bpe_vocab_size}


def _global_batch(training: dict[str, Any], processes: int) -> int:
    return training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] * processes


def _saved(checkpoint: Path, state: dict[str, Any]) -> tuple[dict, dict | None, int]:
    """(sections, data cache key, processes) the checkpoint was trained with; a checkpoint of normgpt < 0.2 holds
    neither, so the run directory's run_config.yaml and data_info.json stand in."""
    run_dir = checkpoint.parent
    sections = state.get("run_config")
    if sections is None:
        sections = read_run_config(run_dir / RUN_CONFIG)
    key = (state.get("data") or {}).get("cache_key")
    if key is None and (run_dir / DATA_INFO).is_file():
        key = read_json(run_dir / DATA_INFO).get("cache_key")
    processes = state.get("num_processes") or state.get("batches", {}).get("world_size", 1)
    return sections, key, int(processes)


def model_differences(old: dict, new: dict) -> list[str]:
    """'field old -> new' for every model field (the architecture) that differs between two run configs."""
    old_model, new_model = _resolved_model(old["model"]), _resolved_model(new["model"])
    return [f"{k} {old_model.get(k)!r} -> {v!r}" for k, v in new_model.items() if old_model.get(k) != v]


def differences(
    old: dict, new: dict, old_key: dict | None, new_key: dict, old_processes: int, new_processes: int
) -> list[str]:
    """'field old -> new' for every setting that must match and does not."""

    def changed(section: str, names: tuple[str, ...], arguments: type) -> list[str]:
        # A field the checkpoint's run_config lacks came after it: that run had the field's default behaviour
        defaults = {f.name: f.default for f in dataclasses.fields(arguments) if f.default is not dataclasses.MISSING}
        was = {k: old[section].get(k, defaults.get(k)) for k in names}
        return [f"{k} {was[k]!r} -> {new[section][k]!r}" for k in names if was[k] != new[section][k]]

    diffs = model_differences(old, new)
    diffs += changed("data", COMPARED_DATA, DataArguments)
    if old_key is not None and old_key != new_key:
        keys = sorted(k for k in set(old_key) | set(new_key) if old_key.get(k) != new_key.get(k))
        diffs.append(f"data ({', '.join(keys)} of the token cache key) differs")
    diffs += changed("training", COMPARED_TRAINING, TrainingArguments)
    old_batch, new_batch = _global_batch(old["training"], old_processes), _global_batch(new["training"], new_processes)
    if old_batch != new_batch:
        diffs.append(f"global batch (sequences per step over all processes) {old_batch} -> {new_batch}")
    return diffs


def check_resume_config(
    checkpoint: Path, state: dict[str, Any], sections: dict, data_key: dict, processes: int
) -> None:
    """Raise ConfigError (one line listing every difference) unless this run may continue `checkpoint`."""
    try:
        old, old_key, old_processes = _saved(Path(checkpoint), state)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot tell which settings '{checkpoint}' was trained with: {err}") from None
    diffs = differences(old, sections, old_key, data_key, old_processes, processes)
    if diffs:
        raise ConfigError(
            f"cannot resume from '{checkpoint}' with different settings: {'; '.join(diffs)}; resume with the "
            "checkpoint's settings, or start a new run in another --output_dir"
        )


def check_init_config(checkpoint: Path, state: dict[str, Any], sections: dict, tokenizer_sha256: str) -> None:
    """Raise ConfigError (one line) unless a new run may start from `checkpoint`'s weights: the same architecture
    (every model field) and the same tokenizer, without which the weights mean nothing. Everything else may differ."""
    try:
        old, old_key, _ = _saved(Path(checkpoint), state)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot tell which settings '{checkpoint}' was trained with: {err}") from None
    diffs = model_differences(old, sections)
    # A checkpoint from before the identity was kept names it only when its tokenizer was loaded, in the cache key.
    old_tokenizer = (state.get("data") or {}).get("tokenizer_sha256") or ((old_key or {}).get("tokenizer") or {}).get(
        "sha256"
    )
    if old_tokenizer is None:
        diffs.append("the tokenizer (the checkpoint does not record which it was trained with)")
    elif old_tokenizer != tokenizer_sha256:
        diffs.append("the tokenizer (pass --tokenizer with the one the checkpoint was trained with)")
    if diffs:
        raise ConfigError(
            f"cannot start from '{checkpoint}': this run differs in {'; '.join(diffs)}; --init_from needs the "
            "checkpoint's model fields and tokenizer"
        )
