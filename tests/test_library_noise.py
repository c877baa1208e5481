"""train/library_noise.py: a known, harmless library message is hidden where normgpt calls the library, anything
else from the same logger still shows, and NORMGPT_VERBOSE=1 hides nothing."""

import logging

import pytest
import torch
from accelerate import PartialState
from accelerate.utils.other import clean_state_dict_for_safetensors

from train import library_noise


class Recorder(logging.Handler):
    """The records a logger passed on (its own filters run before its handlers)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def recorded():
    """Attach a Recorder to a logger for the test; the filters the test adds are removed after it."""
    attached = []

    def attach(name: str) -> Recorder:
        logger = logging.getLogger(name)
        attached.append((logger, list(logger.filters), Recorder()))
        logger.addHandler(attached[-1][2])
        return attached[-1][2]

    yield attach
    for logger, filters, handler in attached:
        logger.removeHandler(handler)
        logger.filters[:] = filters


def shared_save_warnings(recorder: Recorder, shared_name: str) -> list[str]:
    """Run accelerate's own pre-save cleaning on a state dict in which `shared_name` is the embedding matrix (as the
    tied output head is), and return what its logger let through."""
    PartialState(cpu=True)  # accelerate's logger needs its state
    embedding = torch.zeros(4, 2)
    clean_state_dict_for_safetensors({"model.embed_tokens.weight": embedding, shared_name: embedding})
    return [m for m in recorder.messages if "Removed shared tensor" in m]


def test_the_tied_head_warning_is_hidden_and_no_other(recorded, monkeypatch):
    monkeypatch.delenv(library_noise.VERBOSE_ENV, raising=False)
    recorder = recorded("accelerate.utils.other")
    library_noise.quiet_training()
    assert shared_save_warnings(recorder, "lm_head.weight") == []
    assert shared_save_warnings(recorder, "module.lm_head.weight") == []  # a wrapped model's name
    assert len(shared_save_warnings(recorder, "model.layers.0.mlp.up_proj.weight")) == 1  # not ours to excuse


def test_verbose_hides_nothing(recorded, monkeypatch):
    monkeypatch.setenv(library_noise.VERBOSE_ENV, "1")
    # A trainer run earlier in this test process set the filters for the rest of it, as it does in a run
    monkeypatch.setattr(logging.getLogger("accelerate.utils.other"), "filters", [])
    recorder = recorded("accelerate.utils.other")
    library_noise.quiet_training()
    assert len(shared_save_warnings(recorder, "lm_head.weight")) == 1
    recorder = recorded("normgpt.test")
    library_noise.hide_log_messages("normgpt.test", "noise")
    logging.getLogger("normgpt.test").warning("noise")
    assert recorder.messages == ["noise"]
    monkeypatch.setenv(library_noise.VERBOSE_ENV, "0")  # the same filter, not verbose: it takes effect
    library_noise.hide_log_messages("normgpt.test", "noise")
    logging.getLogger("normgpt.test").warning("noise, again")
    logging.getLogger("normgpt.test").warning("signal")
    assert recorder.messages == ["noise", "signal"]
