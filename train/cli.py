"""The command-line parser of the front door (train/commands.py) and of every tool besides the trainer (which has its
own in train/config.py), and the one-line form of a library's exception that their errors quote. Imports nothing
heavy: a tool's bad command line is answered before torch loads."""

from __future__ import annotations

import argparse
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr and exit code 2, without the usage block.

    `name` is the prefix of the tool's error lines (`export: error: ...`), the same its other errors use."""

    def __init__(self, *args: Any, name: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.name = name

    def error(self, message: str):
        self.exit(2, f"{self.name}: error: {message} (see --help)\n")


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`, for quoting a library's exception inside one of normgpt's one-line errors."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(":. ")  # a trailing period would end our line
