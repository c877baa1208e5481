"""The fused RMSNorm's launch configurations travel with a run: each process's record (kernel_choices()) is in every
checkpoint and in summary.json, and a resumed run pins its checkpoint's record before its first step, so it computes
what the uninterrupted run would have (a configuration fixes the order of the kernels' sums). Through the Triton
interpreter on the CPU; on a GPU machine the suite's trainer runs stay on the CPU, where the kernels cannot run, and
scripts/gpu_checks.sh resumes a CUDA run exactly instead."""

import json
import re

import pytest
import torch
from synthetic_corpus import write_corpus
from trainer_runs import flags, refused, train_here

from model import rmsnorm_tuning as tuning
from model.rmsnorm_triton import triton_can_run
from train import checkpoints as ckpt
from train import trainer as trainer_module
from train.run_directory import Summary

pytestmark = pytest.mark.skipif(
    not triton_can_run(torch.empty(0)), reason="the trainer's kernels on the CPU need the Triton interpreter"
)


def other_forward_configuration(name: str, config: dict) -> dict:
    """A configuration of the same forward kernel's space other than `config`."""
    n, rows = map(int, re.search(r"\|N=(\d+)\|M<=(\d+)\|", name).groups())
    space = [c.as_dict() for c in tuning.forward_space(n, rows, 4)]  # float32 on the CPU
    return next(c for c in space if c != config)


def test_the_record_is_in_each_checkpoint_and_pinned_before_the_first_resumed_step(tmp_path, monkeypatch):
    """The record of each process is in every checkpoint and in summary.json; a resume pins it before its first
    step (a configuration the checkpoint names is the one used, whatever this process would have chosen), and a
    malformed record is refused in one line."""
    corpus, cache, out = write_corpus(tmp_path / "corpus"), tmp_path / "cache", tmp_path / "run"
    argv = flags(corpus, cache, out, rms_impl="triton", max_steps=2, save_steps=1, eval_steps=0, logging_steps=1)
    train_here(argv)
    state_file = out / "checkpoint-1" / ckpt.STATE
    records = json.loads(state_file.read_text())["kernels"]
    assert len(records) == 1  # one per process
    choices = records[0]["choices"]
    assert any(name.startswith("fwd|") for name in choices) and any(name.startswith("bwd|") for name in choices)
    assert Summary.read(out).kernels[0]["choices"].keys() == choices.keys()

    # Give the checkpoint another forward configuration than this process would take, then resume from it.
    name = next(n for n in choices if n.startswith("fwd|") and n.endswith(",None"))
    pinned = other_forward_configuration(name, choices[name]["config"])
    state = json.loads(state_file.read_text())
    state["kernels"][0]["choices"][name]["config"] = pinned
    state_file.write_text(json.dumps(state))
    ckpt.write_manifest(state_file.parent, 1)
    order = []
    pin, step = trainer_module.pin_kernel_choices, trainer_module.Trainer.train_step
    monkeypatch.setattr(trainer_module, "pin_kernel_choices", lambda record: order.append("pin") or pin(record))
    monkeypatch.setattr(
        trainer_module.Trainer, "train_step", lambda self, probing: order.append("step") or step(self, probing)
    )
    # The run completed at step 2; a checkpoint named explicitly before that is gone back to and trained from again
    train_here([*argv, "--resume_from_checkpoint", str(state_file.parent)])
    assert order == ["pin", "step"]
    assert Summary.read(out).kernels[0]["choices"][name] == {"config": pinned, "source": "pinned"}

    # A record that is no record: one line naming the file, exit 2 (trainer_runs.refused), nothing trained.
    state_file = out / "checkpoint-2" / ckpt.STATE
    state = json.loads(state_file.read_text())
    state["kernels"] = [{"namespace": "x", "choices": {"fwd|x": {"config": {"block_n": 3}}}}]
    state_file.write_text(json.dumps(state))
    ckpt.write_manifest(state_file.parent, 2)
    message = refused([*argv, "--resume_from_checkpoint", "latest", "--max_steps", "3"])
    assert message.startswith(f"'{state_file}': its kernel record is malformed: a kernel configuration has exactly")
