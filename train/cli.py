"""The command-line parser of the front door (train/commands.py) and of every tool besides the trainer (which has its
own in train/config.py)."""

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
