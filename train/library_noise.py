"""Messages of the libraries normgpt calls that are known and harmless, hidden where normgpt calls the library, so that
what a user sees needs their attention. Each caller names what it hides, and says why it is harmless, beside the call.

`NORMGPT_VERBOSE=1` in the environment hides nothing: every library message is shown as the library prints it.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "NORMGPT_VERBOSE"


def verbose() -> bool:
    """Whether the user asked to see every library message (NORMGPT_VERBOSE set to anything but 0/false/no)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def hide_log_messages(logger: str, *prefixes: str) -> None:
    """Drop the records of the Python logger named `logger` whose message starts with one of `prefixes`, for the rest
    of the process, unless NORMGPT_VERBOSE is set. A logger's filters see only the records it emits itself (not its
    children's), so `logger` is the emitting module's logger (`transformers.tokenization_utils_base`), never a
    parent; a message that changes its wording in a later release shows again rather than hiding something else."""
    if verbose():
        return
    target = logging.getLogger(logger)
    if not any(isinstance(f, _DropMessages) and f.prefixes == prefixes for f in target.filters):
        target.addFilter(_DropMessages(prefixes))
