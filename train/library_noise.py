"""Messages of the libraries normgpt calls that are known and harmless, hidden where normgpt calls the library, so that
what a user sees needs their attention. Each filter says why its message is harmless, beside the filter.

`NORMGPT_VERBOSE=1` in the environment hides nothing: every library message is shown as the library prints it.
"""

from __future__ import annotations

import logging
import os
import re

VERBOSE_ENV = "NORMGPT_VERBOSE"


def verbose() -> bool:
    """Whether the user asked to see every library message (NORMGPT_VERBOSE set to anything but 0/false/no)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def hide_log_messages(logger: str, pattern: str) -> None:
    """Drop the records of the Python logger named `logger` whose message matches the regular expression `pattern`
    (from its start), for the rest of the process, unless NORMGPT_VERBOSE is set. A logger's filters see only the
    records it emits itself, not its children's, so `logger` is the emitting module's logger
    (`transformers.tokenization_utils_base`), never a parent. A message reworded by a later release shows again
    rather than hiding something else."""
    if verbose():
        return
    target = logging.getLogger(logger)
    if not any(isinstance(f, _DropMessages) and f.pattern.pattern == pattern for f in target.filters):
        target.addFilter(_DropMessages(pattern))


def quiet_training() -> None:
    """The trainer's filters, set once at its setup (every process)."""
    # accelerate's save_state writes the model with safetensors, which cannot hold two names for one tensor, so it
    # drops the tied output head (lm_head.weight is the embedding matrix) and says "check that you don't receive any
    # warning while reloading". On resume the head is tied again to the embedding that was saved; the resume tests
    # check the losses step for step. Only the tied head is hidden: any other shared tensor still warns.
    hide_log_messages(
        "accelerate.utils.other", r"(\[RANK \d+\] )?Removed shared tensor \{'(\w+\.)*lm_head\.weight'\} while saving"
    )
    if not verbose():
        from transformers.utils import logging as transformers_logging

        # transformers' "Writing model shards" bar while the final model is saved: the trainer's own "model:" line
        # says what was written and verified.
        transformers_logging.disable_progress_bar()
