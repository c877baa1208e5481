"""normgpt's license, written as LICENSE beside every model it publishes and named in its card and GGUF files.

The text is package data (apache-2.0.txt beside this file, listed in pyproject.toml's package-data), read from the
installed package.
"""

from __future__ import annotations

from importlib import resources

SPDX_ID = "apache-2.0"  # the Hub's `license:` identifier and GGUF's general.license
TEXT_FILE = "apache-2.0.txt"  # the Apache License 2.0, verbatim


def license_text() -> str:
    return resources.files(__package__).joinpath(TEXT_FILE).read_text(encoding="utf-8")
