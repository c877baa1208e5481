"""The data layer's inputs and its one error type: `DataArguments` (the `--dataset`/`--tokenizer`/... flags),
`DataError`, and the small rules every data module applies to them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataArguments:
    dataset: str = field(
        default="stdlib",
        metadata={
            "help": "'stdlib' (the running Python's standard library sources, no download), a local "
            ".txt/.jsonl/.json/.parquet file or folder of them, or a hub dataset name"
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "config name of a hub dataset"})
    text_column: str = field(
        default="text", metadata={"help": "column holding the text (.jsonl/.json/.parquet files and hub datasets)"}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "hub datasets only: stream instead of downloading everything (needs --max_train_bytes)"},
    )
    max_train_bytes: int | None = field(
        default=None,
        metadata={"help": "cap on training text in UTF-8 bytes (default: all); also caps a hub validation split"},
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={
            "help": "share of documents held out for validation, chosen by a hash of each file/document so adding "
            "data never moves others (hub datasets with a 'validation' split use that instead)"
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "existing tokenizer (local path or hub name); default: train a byte-level BPE on the data"},
    )
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "token cache location (default: $NORMGPT_CACHE or ~/.cache/normgpt)"}
    )


class DataError(ValueError):
    """A bad data input. The message is one line that names the problem and the valid choices."""


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`, for quoting a library's exception inside a DataError."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(":. ")  # a trailing period would end our line


def looks_like_path(name: str) -> bool:
    """Whether `name` is spelled like a file path, which a hub name ('name' or 'owner/name') never is."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def cache_root(args: DataArguments) -> Path:
    root = args.cache_dir or os.environ.get("NORMGPT_CACHE") or "~/.cache/normgpt"
    return Path(root).expanduser()
