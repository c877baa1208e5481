"""The training entry point end to end, on CPU: a short run learns and writes every output; resume after kill -9
repeats the uninterrupted run's losses step for step; 2-process DDP over gloo; wandb offline."""

import json
import math
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from trainer_runs import refused, train_here

from train.config import REPO_ROOT
from train.run_directory import MetricsLog

TRAIN = str(REPO_ROOT / "train" / "train.py")


def read_metrics(path: Path) -> list[dict]:
    return MetricsLog(path).rows()


# Real text, made from a fixed set of standard-library modules, so the tests need no download.
CORPUS_MODULES = [
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "csv.py", "dataclasses.py", "difflib.py",
    "enum.py", "fractions.py", "functools.py", "gettext.py", "heapq.py", "inspect.py", "ipaddress.py",
    "json/decoder.py", "json/encoder.py", "logging/__init__.py", "pathlib.py", "pprint.py", "shlex.py",
    "statistics.py", "string.py", "textwrap.py", "tokenize.py", "typing.py", "uuid.py", "zipfile.py",
]  # fmt: skip


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_MODULES:
        src = root / name
        if src.exists():
            (out / (name.replace("/", "_") + ".txt")).write_text(src.read_text(encoding="utf-8"))
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def tiny_args(corpus: Path, cache_dir: Path, output_dir: Path, **overrides) -> list[str]:
    args = {
        "dataset": corpus,
        "cache_dir": cache_dir,
        "output_dir": output_dir,
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "block_size": 64,
        "max_position_embeddings": 64,
        "per_device_train_batch_size": 8,
        "max_steps": 40,
        "warmup_steps": 5,
        "learning_rate": 3e-3,
        "logging_steps": 5,
        "eval_steps": 20,
        "max_eval_batches": 4,
        "save_steps": 20,
        "sample_max_new_tokens": 8,
        **overrides,
    }
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def run_train(args: list[str], launcher: list[str] | None = None, env: dict | None = None, timeout: int = 600):
    cmd = [*(launcher or [sys.executable]), TRAIN, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_short_run_learns_and_writes_every_output(corpus, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(tiny_args(corpus, cache_dir, out, save_total_limit=1))
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    for row in train_rows:
        assert set(row) >= {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_sec", "elapsed"}
        assert row["tokens"] == row["step"] * 8 * 64
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.5, [r["loss"] for r in train_rows]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 20, 40]  # step 0: the loss at initialization
    assert val[2]["val_loss"] < val[1]["val_loss"] < val[0]["val_loss"]
    # warm-up then cosine decay
    lrs = [r["lr"] for r in train_rows]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] < lrs[1]

    for name in ("loss_curve.png", "run_config.yaml", "data_info.json", "sample.txt", "config.json", "summary.json"):
        assert (out / name).is_file(), name
    for name in ("model.safetensors", "tokenizer.json", "README.md", "LICENSE", "export.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-40"]  # save_total_limit=1
    # rms + SwiGLU in pre-norm is exactly Llama: the run directory holds the verified stock export, no remote code
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not list(out.glob("*.py"))
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    assert "done: 40 steps" in proc.stdout and "model: LlamaForCausalLM" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert summary["final_val_loss"] == val[2]["val_loss"] and summary["init_val_loss"] == val[0]["val_loss"]
    assert "pre placement" in summary["model"]["norm_numerics"]
    # stability probes on every logging row, one value per block
    assert all(len(r["grad_norm_blocks"]) == len(r["resid_rms"]) == len(r["attn_logit_max"]) == 2 for r in train_rows)
    # mean drift: the stream after each block, the input of each of its norms; the summary keeps the largest
    assert all(len(r["resid_mean_drift"]) == 2 and len(r["norm_input_mean_drift"]) == 4 for r in train_rows)
    for key, name in (
        ("max_resid_mean_drift", "resid_mean_drift"),
        ("max_norm_input_mean_drift", "norm_input_mean_drift"),
    ):
        assert summary[key] == max(v for r in train_rows for v in r[name]) and 0 < summary[key] < 1

    # run_config.yaml holds the value every field resolved to (no null standing for "the default of the day"), and
    # reproduces the run's config when given back as --config.
    import yaml

    from train.config import parse_args

    recorded = yaml.safe_load((out / "run_config.yaml").read_text())
    assert all(v is not None for v in recorded["model"].values()), recorded["model"]
    assert recorded["model"]["intermediate_size"] == 192 and recorded["model"]["rope_theta"] == 10000.0
    given = parse_args(tiny_args(corpus, cache_dir, out, save_total_limit=1))
    again = parse_args(["--config", str(out / "run_config.yaml")])
    assert again.model_config().to_dict() == given.model_config().to_dict()
    assert again.data.block_size == given.data.block_size
    # ... and never aims at the run it records: a replay goes to a new directory (tests/test_faults.py has the rest)
    assert again.training.output_dir is None and again.not_replayed == ("output_dir",)
    given.training.output_dir = None
    assert again.training == given.training

    # Mixed precision is autocast only: the saved model keeps float32 master weights.
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}

    # The run directory is a Hugging Face model + tokenizer that loads with no flags.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("def main(", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] == ids.shape[1] + 10
    assert isinstance(tok.decode(gen[0]), str)

    # A second run on the same data reuses the token cache.
    info = json.loads((out / "data_info.json").read_text())
    assert info["fingerprint"]


def test_a_variant_without_a_stock_class_keeps_the_remote_code_format(corpus, cache_dir, tmp_path):
    out = tmp_path / "post"
    printed = train_here(
        tiny_args(corpus, cache_dir, out, max_steps=4, eval_steps=0, save_steps=0, norm_placement="post")
    )
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "normgpt" and "rms_impl" not in config  # a runtime choice, never saved
    for name in ("modeling_normgpt.py", "configuration_normgpt.py", "norms.py", "rmsnorm_triton.py"):
        assert (out / name).is_file(), name
    assert json.loads((out / "export.json").read_text())["reason"].startswith("norm_placement=post")
    assert "model: normgpt remote code" in printed and "trust_remote_code=True)" in printed
    note = json.loads((out / "summary.json").read_text())["export"]["note"]
    assert note.startswith("no stock export: norm_placement=post")


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def test_resume_after_kill_repeats_the_same_losses(corpus, cache_dir, tmp_path):
    common = dict(max_steps=30, logging_steps=1, save_steps=6, eval_steps=0, sample_max_new_tokens=0)
    full = tmp_path / "full"
    run_train(tiny_args(corpus, cache_dir, full, **common))
    expected = {r["step"]: r["loss"] for r in read_metrics(full / "metrics.jsonl") if "loss" in r}

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *tiny_args(corpus, cache_dir, killed, **common)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Kill -9 a few steps after a checkpoint, so the killed run logged steps the resumed run must redo.
        def past_checkpoint() -> bool:
            if not (killed / "checkpoint-12").is_dir() or not (killed / "metrics.jsonl").exists():
                return False
            return any(r.get("step", 0) >= 14 for r in read_metrics(killed / "metrics.jsonl"))

        _wait_for(past_checkpoint, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    logged = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert max(logged) < 30, "the run finished before it could be killed"

    run_train(tiny_args(corpus, cache_dir, killed, resume_from_checkpoint="latest", **common))
    got = {r["step"]: r["loss"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r}
    assert list(got) == list(range(1, 31))  # each step logged once: rows past the checkpoint were dropped
    assert got == expected
    assert (killed / "model.safetensors").is_file()


def test_resume_from_a_missing_checkpoint_is_one_line(corpus, cache_dir, tmp_path):
    assert refused(tiny_args(corpus, cache_dir, tmp_path / "r", resume_from_checkpoint="latest")) == (
        f"--resume_from_checkpoint latest: no complete checkpoint-<step> directory in '{tmp_path / 'r'}'; a run "
        "that stopped before its first checkpoint cannot resume: start it again with --overwrite_output_dir"
    )


def test_trackers_wandb_offline_and_tensorboard_with_per_block_curves(corpus, cache_dir, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "trackers"
    args = tiny_args(corpus, cache_dir, out, max_steps=4, logging_steps=2, eval_steps=0, save_steps=0, report_to="all")
    run_train(args, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), sorted(p.name for p in runs[0].iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "grad_norm", "resid_rms/0", "resid_rms/1", "attn_logit_max/1", "val_loss"} <= tags, tags
    assert [e.step for e in events.Scalars("loss")] == [2, 4]


def test_torch_compile_run_keeps_its_stability_probes(corpus, cache_dir, tmp_path):
    """Hooks added to a compiled model's submodules never fire; the trainer must still log every probe."""
    out = tmp_path / "compiled"
    args = tiny_args(corpus, cache_dir, out, max_steps=4, logging_steps=2, eval_steps=0, save_steps=0)
    run_train([*args, "--torch_compile"])
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(len(r["attn_logit_max"]) == len(r["resid_rms"]) == 2 for r in rows)
    from safetensors.torch import load_file

    keys = set(load_file(out / "model.safetensors"))
    assert "model.layers.1.self_attn.q_proj.weight" in keys  # no `_orig_mod.` prefix from the compile wrapper


def test_training_without_a_validation_split(corpus, cache_dir, tmp_path):
    out = tmp_path / "noval"
    args = tiny_args(corpus, cache_dir, out, max_steps=4, eval_steps=2, save_steps=0, sample_max_new_tokens=0)
    printed = train_here([*args, "--validation_split_percentage", "0"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_val_loss"] is None
    assert not [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert "no validation split" in printed


def test_gradient_accumulation_counts_every_micro_batch(corpus, cache_dir, tmp_path):
    out = tmp_path / "ga"
    args = tiny_args(corpus, cache_dir, out, max_steps=4, logging_steps=2, eval_steps=0, save_steps=0)
    train_here([*args, "--gradient_accumulation_steps", "3", "--sample_max_new_tokens", "0"])
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["tokens"] for r in rows] == [2 * 3 * 8 * 64, 4 * 3 * 8 * 64]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["tokens_per_step"], summary["tokens"]) == (3 * 8 * 64, 4 * 3 * 8 * 64)
    assert all(math.isfinite(r["loss"]) for r in rows)
