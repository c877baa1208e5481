"""Training numerics do not drift: a short fixed-seed run logs the losses, gradient norms and validation losses
recorded at commit a551a15 (tests/data/README.md says how), step for step.

The tolerance, 1e-5 relative, is far below anything a code change to the model, the optimizer, the schedule or the
data order would produce (those move the loss in the third decimal within a few steps), and above the float32
rounding differences between CPUs with different vector units over 12 steps.
"""

import contextlib
import json
from pathlib import Path

import pytest
from synthetic_corpus import write_corpus
from trainer_runs import command, run

from train.atomic_io import read_jsonl

DATA = Path(__file__).parent / "data"
RTOL = 1e-5


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("synthetic"))


def numbers(rows: list[dict]) -> dict[tuple[int, str], float]:
    keys = ("loss", "grad_norm", "val_loss")
    return {(r["step"], k): r[k] for r in rows for k in keys if k in r}


def assert_same_numbers(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    bad = {k: (got[k], v) for k, v in expected.items() if abs(got[k] - v) > RTOL * abs(v)}
    assert not bad, f"{len(bad)} values moved by more than {RTOL:g} relative: {sorted(bad.items())[:6]}"


@pytest.mark.parametrize(
    "extra, reference",
    [
        ({"save_total_limit": 2}, DATA / "legacy_run" / "metrics.jsonl"),
        (
            {"save_steps": 0, "norm": "layer", "norm_placement": "post", "qk_norm": "true"},
            DATA / "legacy_post_metrics.jsonl",
        ),
    ],
    ids=["rms-pre", "layer-post-qk"],
)
def test_fixed_seed_run_repeats_the_recorded_numbers(synthetic, tmp_path, extra, reference):
    out = tmp_path / "run"
    run(command(synthetic, tmp_path / "cache", out, sample_max_new_tokens=8, **extra))
    expected, _ = read_jsonl(reference)
    got, problems = read_jsonl(out / "metrics.jsonl")
    assert not problems
    assert_same_numbers(numbers(got), numbers(expected))


def test_the_synthetic_corpus_still_makes_the_recorded_cache_key(synthetic, tmp_path):
    """The data split may reorganise the code, never the cache key: existing token caches stay valid."""
    from train.data import DataArguments, prepare_data

    info = json.loads((DATA / "legacy_run" / "data_info.json").read_text())
    args = DataArguments(dataset=str(synthetic), block_size=32, cache_dir=str(tmp_path / "cache"))
    data = prepare_data(args, 320, contextlib.nullcontext)
    assert data.info["cache_key"] == info["cache_key"]
    # the entry is named <folder>-<key>: the folder differs (a tmp dir), the key must not
    assert Path(data.info["cache_path"]).name.rsplit("-", 1)[1] == Path(info["cache_path"]).name.rsplit("-", 1)[1]
    assert (len(data.train), len(data.val)) == (info["train_tokens"], info["val_tokens"])


def test_a_run_directory_written_before_the_restructure_resumes_with_the_same_numbers(synthetic, tmp_path):
    """tests/data/legacy_run was written at a551a15, with accelerate's pickled custom state: it still resumes
    (loading that state with the weights-only unpickler) and repeats its own steps 7-12."""
    import shutil

    out = tmp_path / "legacy"
    shutil.copytree(DATA / "legacy_run", out)
    run(command(synthetic, tmp_path / "cache", out, resume_from_checkpoint=str(out / "checkpoint-6")))
    expected, _ = read_jsonl(DATA / "legacy_run" / "metrics.jsonl")
    got, problems = read_jsonl(out / "metrics.jsonl")
    assert not problems
    assert_same_numbers(numbers(got), numbers(expected))
