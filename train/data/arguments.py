"""The data layer's one error type, `DataError`, and the small rules every data module applies to its inputs
(`DataArguments`, the `--dataset`/`--tokenizer`/... flags, defined with the other run flags in train/arguments.py)."""

from __future__ import annotations

import os
from pathlib import Path

from train.arguments import DataArguments
from train.cli import one_line  # noqa: F401  (the data modules quote library errors with it)


class DataError(ValueError):
    """A bad data input. The message is one line that names the problem and the valid choices."""


def looks_like_path(name: str) -> bool:
    """Whether `name` is spelled like a file path, which a hub name ('name' or 'owner/name') never is."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def cache_root(args: DataArguments) -> Path:
    root = args.cache_dir or os.environ.get("NORMGPT_CACHE") or "~/.cache/normgpt"
    return Path(root).expanduser()
