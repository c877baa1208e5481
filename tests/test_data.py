"""Tests of the data layer (train/data/). No network: every corpus is the local stdlib or files in tmp_path."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
import xxhash
from transformers import AutoTokenizer

from train.data import (
    DataArguments,
    DataError,
    TokenBatches,
    eval_batches,
    is_validation,
    prepare_data,
    sources,
    token_cache,
)
from train.data.token_cache import PreparedData
from train.data.tokenizer import EOS_TOKEN

EXCLUDED = {"test", "tests", "idle_test", "site-packages"}


def prepare(cache: Path, vocab_size: int = 300, **kwargs) -> PreparedData:
    return prepare_data(DataArguments(cache_dir=str(cache), **kwargs), vocab_size, contextlib.nullcontext)


def documents(prepared: PreparedData, split: str) -> list[str]:
    """The documents of a split, recovered by decoding the token stream between eos tokens."""
    ids = np.asarray(getattr(prepared, split)).tolist()
    eos = prepared.tokenizer.eos_token_id
    assert not ids or ids[-1] == eos, "every document, the last one included, must end with eos"
    docs, current = [], []
    for i in ids:
        if i == eos:
            docs.append(prepared.tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    return docs


def forbid_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(token_cache, "train_bpe_tokenizer", fail)
    monkeypatch.setattr(token_cache, "tokenize_to_file", fail)


def write_docs(folder: Path, n: int, start: int = 0) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i in range(start, start + n):
        text = f"# document {i}\ndef f{i}(x):\n    return x * {i} + {i % 7}\n"
        (folder / f"doc{i:03d}.txt").write_text(text)
        docs[f"doc{i:03d}.txt"] = text
    return docs


# ---------------------------------------------------------------------------------------------------------------------
# The stdlib corpus, prepared once for the module (the whole of it: a few seconds).


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedData, float]:
    cache = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    prepared = prepare(cache, vocab_size=512)
    return cache, prepared, time.perf_counter() - start


def test_stdlib_files_exclude_tests_and_third_party() -> None:
    files = sources.stdlib_files()
    assert files == sorted(files)
    assert {"os.py", "json/__init__.py", "asyncio/tasks.py"} <= set(files)
    for rel in files:
        parts = rel.split("/")
        assert not EXCLUDED & set(parts[:-1]), rel
        assert rel.endswith(".py") and not parts[-1].startswith("test_"), rel
    # Checked against the file system, so the exclusion is tested wherever this Python ships its tests.
    root = sources.stdlib_root()
    on_disk_tests = [p for p in root.glob("*/test*/*.py") if p.parent.name in {"test", "tests"}]
    assert not {p.relative_to(root).as_posix() for p in on_disk_tests} & set(files)


def test_stdlib_is_split_by_file(stdlib_cache: tuple[Path, PreparedData, float]) -> None:
    _, prepared, _ = stdlib_cache
    root = sources.stdlib_root()
    texts = {rel: (root / rel).read_bytes().decode("utf-8") for rel in sources.stdlib_files()}
    # Lists, not sets: some stdlib files are identical (or empty, and empty files are not documents).
    expected_val = [text for rel, text in texts.items() if text and is_validation(rel, 5.0)]
    expected_train = [text for rel, text in texts.items() if text and not is_validation(rel, 5.0)]
    assert documents(prepared, "val") == expected_val
    assert prepared.info["train_documents"] == len(expected_train)
    assert prepared.info["val_documents"] == len(expected_val)
    assert 0.02 < len(expected_val) / len(texts) < 0.09  # about validation_split_percentage


def test_stdlib_fingerprint_is_stable(stdlib_cache: tuple[Path, PreparedData, float]) -> None:
    _, prepared, _ = stdlib_cache
    args = DataArguments()
    first = sources._StdlibSource(args).fingerprint()
    assert first == sources._StdlibSource(args).fingerprint() == prepared.info["fingerprint"]
    assert len(first) == 64


def test_stdlib_second_run_uses_the_cache(
    stdlib_cache: tuple[Path, PreparedData, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, first, first_seconds = stdlib_cache
    assert first.info["cache_hit"] is False
    forbid_building(monkeypatch)
    start = time.perf_counter()
    second = prepare(cache, vocab_size=512)
    seconds = time.perf_counter() - start
    print(f"stdlib vocab 512: first prepare_data {first_seconds:.1f} s, cached {seconds:.2f} s, {first.info}")
    assert second.info["cache_hit"] is True
    assert isinstance(second.train, np.memmap) and second.train.dtype == np.uint16
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert json.loads(json.dumps(second.info))["train_tokens"] == len(second.train)
    assert seconds < 5


def test_stdlib_vocab_size_is_part_of_the_cache_key(
    stdlib_cache: tuple[Path, PreparedData, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, first, _ = stdlib_cache
    forbid_building(monkeypatch)
    with pytest.raises(AssertionError, match="cache should have been used"):
        prepare(cache, vocab_size=600)


def test_trained_tokenizer_round_trips_and_saves(stdlib_cache: tuple[Path, PreparedData, float], tmp_path) -> None:
    _, prepared, _ = stdlib_cache
    tok = prepared.tokenizer
    assert tok.is_fast and len(tok) == 512
    assert tok.eos_token == tok.bos_token == tok.pad_token == tok.unk_token == EOS_TOKEN
    text = "def naïve(x):\n\treturn 'π ≈ 3.14 🐍'  \r\n\n  # ünïcödé\x00 <|endoftext|>"
    assert tok.decode(tok(text)["input_ids"]) == text
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.eos_token_id == tok.eos_token_id


def test_stdlib_tokens_decode_to_the_training_files(stdlib_cache: tuple[Path, PreparedData, float]) -> None:
    _, prepared, _ = stdlib_cache
    train_docs = documents(prepared, "train")
    assert len(train_docs) == prepared.info["train_documents"]
    assert (sources.stdlib_root() / "os.py").read_text(encoding="utf-8") in train_docs + documents(prepared, "val")


# ---------------------------------------------------------------------------------------------------------------------
# Local files


def test_txt_folder_one_document_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = write_docs(tmp_path / "corpus", 40)
    prepared = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"), validation_split_percentage=20)
    assert prepared.info["source"] == "local" and prepared.info["cache_hit"] is False
    train, val = documents(prepared, "train"), documents(prepared, "val")
    assert sorted(train + val) == sorted(docs.values())
    assert set(val) == {text for rel, text in docs.items() if is_validation(rel, 20)}

    forbid_building(monkeypatch)
    again = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"), validation_split_percentage=20)
    assert again.info["cache_hit"] is True and again.info["cache_path"] == prepared.info["cache_path"]


def test_adding_a_file_moves_no_other_document(tmp_path: Path) -> None:
    write_docs(tmp_path / "corpus", 40)
    before = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"), validation_split_percentage=20)
    (tmp_path / "corpus" / "aaa_new.txt").write_text("a brand new document\n")
    after = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"), validation_split_percentage=20)
    assert after.info["fingerprint"] != before.info["fingerprint"]
    assert set(documents(before, "val")) <= set(documents(after, "val"))
    assert set(documents(before, "train")) <= set(documents(after, "train"))


def test_single_txt_file_is_split_into_paragraph_documents(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i}.\n" + f"line of paragraph {i}\n" * (1 + i % 5) for i in range(300)]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(paragraphs))
    prepared = prepare(tmp_path / "cache", dataset=str(path))
    train, val = documents(prepared, "train"), documents(prepared, "val")
    assert train and val
    assert "".join(train + val).count("Paragraph") == 300
    for doc in train + val:  # documents are whole paragraphs
        assert doc.startswith("Paragraph ")
    # The file's text is exactly the documents of both splits merged back in paragraph order.
    merged = sorted(train + val, key=lambda d: int(d.split()[1].rstrip(".")))
    assert "".join(merged) == path.read_text()


def test_jsonl_and_json_sources_read_the_text_column(tmp_path: Path) -> None:
    rows = [{"content": f"row {i}: " + "x = 1\n" * (i % 4 + 1), "id": i} for i in range(60)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "data.json").write_text(json.dumps(rows))
    for name in ("data.jsonl", "data.json"):
        prepared = prepare(tmp_path / "cache", dataset=str(tmp_path / name), text_column="content")
        assert sorted(documents(prepared, "train") + documents(prepared, "val")) == sorted(r["content"] for r in rows)
        by_hash = sum(is_validation(f"{name}#{i}", 5.0) for i in range(60))
        # With too few rows for the hash to pick any, the first one is held out instead.
        assert prepared.info["val_documents"] == (by_hash or 1)


def test_parquet_folder_source(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    texts = [f"sample {i} " * (i % 3 + 1) for i in range(50)]
    datasets.Dataset.from_dict({"text": texts[:25]}).to_parquet(str(folder / "a.parquet"))
    datasets.Dataset.from_dict({"text": texts[25:] + [None]}).to_parquet(str(folder / "b.parquet"))
    (folder / "README.md").write_text("ignored: not a data file")
    prepared = prepare(tmp_path / "cache", dataset=str(folder), validation_split_percentage=10)
    assert sorted(documents(prepared, "train") + documents(prepared, "val")) == sorted(texts)
    assert prepared.info["files"] == 2


def test_corpus_text_that_looks_like_eos_is_not_a_separator(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "corpus", 10)
    (tmp_path / "corpus" / "doc000.txt").write_text("before <|endoftext|> after\n")
    prepared = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"), validation_split_percentage=20)
    eos = prepared.tokenizer.eos_token_id
    n_eos = int((np.asarray(prepared.train) == eos).sum() + (np.asarray(prepared.val) == eos).sum())
    assert n_eos == len(docs)
    assert "before <|endoftext|> after\n" in documents(prepared, "train") + documents(prepared, "val")


def test_max_train_bytes_caps_training_text(tmp_path: Path) -> None:
    write_docs(tmp_path / "corpus", 40)
    corpus = str(tmp_path / "corpus")
    prepared = prepare(tmp_path / "cache", dataset=corpus, max_train_bytes=500, validation_split_percentage=20)
    assert prepared.info["val_documents"] > 0
    assert prepared.info["train_bytes"] == 500
    assert sum(len(d.encode()) for d in documents(prepared, "train")) == 500


def test_loaded_tokenizer_is_used_and_keyed(tmp_path: Path, stdlib_cache: tuple[Path, PreparedData, float]) -> None:
    _, stdlib, _ = stdlib_cache
    stdlib.tokenizer.save_pretrained(tmp_path / "tok")
    write_docs(tmp_path / "corpus", 20)
    prepared = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"), tokenizer=str(tmp_path / "tok"))
    assert prepared.info["tokenizer_trained"] is False and prepared.info["vocab_size"] == 512
    text = documents(prepared, "train")[0]
    assert (
        np.asarray(prepared.train[: len(stdlib.tokenizer(text)["input_ids"])]).tolist()
        == (stdlib.tokenizer(text)["input_ids"])
    )


def test_interrupted_or_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    write_docs(tmp_path / "corpus", 20)
    first = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"))
    entry = Path(first.info["cache_path"])
    expected = np.asarray(first.train).copy()
    del first
    # A build killed with SIGKILL leaves its staging directory behind, named after a now dead process.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    staging = entry.parent / f"{token_cache.staging_prefix(entry)}{socket.gethostname()}-{dead.stdout.strip()}-x1"
    staging.mkdir()
    (staging / "train.bin").write_bytes(b"half")
    with open(entry / "train.bin", "r+b") as f:
        f.truncate(10)
    again = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"))
    assert again.info["cache_hit"] is False
    np.testing.assert_array_equal(again.train, expected)
    assert not staging.exists()
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []


def test_entry_published_first_by_a_concurrent_build_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_docs(tmp_path / "corpus", 20)
    real_replace = os.replace

    def racing_replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == tmp_path / "cache":  # publishing the entry: another process got there first
            shutil.copytree(src, dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)
    prepared = prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"))
    assert len(documents(prepared, "train")) + len(documents(prepared, "val")) == 20
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------------------------------
# Token-cache integrity: every load checks the entry; one that fails is rebuilt with one warning line, or refused.


def corpus_entry(tmp_path: Path) -> tuple[Path, np.ndarray, int]:
    """A freshly built entry of a small corpus: (its directory, its train tokens, its vocabulary size)."""
    write_docs(tmp_path / "corpus", 20)
    first = reload(tmp_path)
    return Path(first.info["cache_path"]), np.asarray(first.train).copy(), first.info["vocab_size"]


def reload(tmp_path: Path) -> PreparedData:
    return prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"))


def overwrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes in place, keeping its size: what a bad disk, a stray dd or a bug in another tool does."""
    assert len(data) == path.stat().st_size
    with open(path, "r+b") as f:
        f.write(data)


def random_bytes(n: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def strip_checksums(entry: Path) -> None:
    """Make `entry` what the code before checksums wrote: the same meta.json without the "checksums" key."""
    meta = json.loads((entry / "meta.json").read_text())
    del meta["checksums"]
    (entry / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def test_each_token_file_records_its_checksum(tmp_path: Path) -> None:
    entry, _, _ = corpus_entry(tmp_path)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["checksums"] == {
        "algorithm": "xxh3_128",
        "train.bin": xxhash.xxh3_128((entry / "train.bin").read_bytes()).hexdigest(),
        "val.bin": xxhash.xxh3_128((entry / "val.bin").read_bytes()).hexdigest(),
    }


def test_a_zeroed_train_bin_is_noticed_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry, train, _ = corpus_entry(tmp_path)
    overwrite(entry / "train.bin", bytes((entry / "train.bin").stat().st_size))
    again = reload(tmp_path)
    assert again.info["cache_hit"] is False
    np.testing.assert_array_equal(again.train, train)
    assert warnings_of(caplog) == [
        f"token cache entry {entry}: train.bin does not match the checksum recorded when it was built; rebuilding it"
    ]


def test_random_bytes_in_train_bin_are_rebuilt_not_fed_to_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry, train, vocab_size = corpus_entry(tmp_path)
    overwrite(entry / "train.bin", random_bytes((entry / "train.bin").stat().st_size))
    again = reload(tmp_path)
    np.testing.assert_array_equal(again.train, train)
    assert int(np.asarray(again.train).max()) < len(again.tokenizer)
    (warning,) = warnings_of(caplog)
    assert re.fullmatch(
        f"token cache entry {re.escape(str(entry))}: train.bin does not match the checksum recorded when it was built "
        rf"and train.bin holds token id \d+ \(the first out-of-range one at position \d+\) but the vocabulary has "
        f"{vocab_size} tokens; rebuilding it",
        warning,
    )


def test_an_entry_without_checksums_is_checked_once_and_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, train, _ = corpus_entry(tmp_path)
    recorded = json.loads((entry / "meta.json").read_text())["checksums"]
    strip_checksums(entry)
    forbid_building(monkeypatch)
    again = reload(tmp_path)
    assert again.info["cache_hit"] is True and again.info["checksums"] == recorded
    np.testing.assert_array_equal(again.train, train)
    assert json.loads((entry / "meta.json").read_text())["checksums"] == recorded
    assert warnings_of(caplog) == [
        f"token cache entry {entry} was written without checksums; its token ids and document ends check out, so "
        "their checksums are now recorded in its meta.json"
    ]
    caplog.clear()
    reload(tmp_path)  # from now on it is checked like any other entry, silently
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("zeros", r"train.bin holds \d+ end-of-document tokens but meta.json records \d+ documents"),
        ("random", r"train.bin holds token id \d+ \(the first out-of-range one at position \d+\) but the vocabulary"),
    ],
    ids=["zeros", "random"],
)
def test_a_damaged_entry_without_checksums_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    entry, train, _ = corpus_entry(tmp_path)
    strip_checksums(entry)
    size = (entry / "train.bin").stat().st_size
    overwrite(entry / "train.bin", bytes(size) if damage == "zeros" else random_bytes(size))
    again = reload(tmp_path)
    assert again.info["cache_hit"] is False and "checksums" in again.info
    np.testing.assert_array_equal(again.train, train)
    (warning,) = warnings_of(caplog)
    assert re.fullmatch(f"token cache entry {re.escape(str(entry))}: {reason}.*; rebuilding it", warning)


def test_a_damaged_tokenizer_in_the_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry, train, _ = corpus_entry(tmp_path)
    (entry / "tokenizer" / "tokenizer.json").write_text('{"not": "a tokenizer"')
    again = reload(tmp_path)
    np.testing.assert_array_equal(again.train, train)
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"token cache entry {entry}: its tokenizer cannot be loaded (")
    assert warning.endswith("); rebuilding it")


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ("[1, 2]", "it is incomplete (an interrupted build?) or its files do not match meta.json"),
        ("no vocab_size", "it is incomplete (an interrupted build?) or its files do not match meta.json"),
        ("vocab_size 7", "its tokenizer has "),
    ],
    ids=["not an object", "a key missing", "a wrong vocab_size"],
)
def test_a_damaged_meta_json_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, meta: str, reason: str
) -> None:
    entry, train, _ = corpus_entry(tmp_path)
    recorded = json.loads((entry / "meta.json").read_text())
    if meta == "no vocab_size":
        del recorded["vocab_size"]
    elif meta == "vocab_size 7":
        recorded["vocab_size"] = 7
    (entry / "meta.json").write_text(meta if meta.startswith("[") else json.dumps(recorded))
    again = reload(tmp_path)
    np.testing.assert_array_equal(again.train, train)
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"token cache entry {entry}: {reason}") and warning.endswith("; rebuilding it")


def test_other_ranks_refuse_a_corrupt_entry_instead_of_removing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, _, _ = corpus_entry(tmp_path)
    overwrite(entry / "train.bin", bytes((entry / "train.bin").stat().st_size))
    monkeypatch.setenv("RANK", "1")  # what torchrun/accelerate launch set; no process group in this test
    with pytest.raises(DataError) as err:
        reload(tmp_path)
    assert str(err.value) == (
        f"token cache entry {entry}: train.bin does not match the checksum recorded when it was built, although the "
        "main process checked it moments ago; something is changing it, or this node has its own copy: delete the "
        "entry and rerun"
    )
    assert (entry / "train.bin").exists()  # other ranks may have it memory-mapped


def test_a_corrupt_entry_that_cannot_be_removed_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, _, _ = corpus_entry(tmp_path)
    overwrite(entry / "train.bin", bytes((entry / "train.bin").stat().st_size))
    real_rmtree = shutil.rmtree

    def read_only_rmtree(path: str | Path, *args, **kwargs) -> None:
        if Path(path) == entry:
            raise PermissionError(13, "Permission denied", str(entry / "train.bin"))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", read_only_rmtree)
    with pytest.raises(DataError) as err:
        reload(tmp_path)
    assert str(err.value).startswith(f"token cache entry {entry}: train.bin does not match the checksum")
    assert str(err.value).endswith(
        "and it cannot be removed to rebuild it (PermissionError: [Errno 13] Permission denied: "
        f"'{entry / 'train.bin'}'); delete it by hand or pass another --cache_dir"
    )


def test_scan_tokens_reads_in_chunks_and_finds_the_first_bad_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(token_cache, "SCAN_TOKENS", 7)  # many chunks, the last one short
    tokens = np.array([5, 0, 3, 0, 9, 1, 0, 2, 400, 7, 0, 500, 0, 4, 0, 0, 1, 0], dtype=np.uint16)
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    scan = token_cache.scan_tokens(path, np.dtype(np.uint16), vocab_size=300, eos_id=0)
    assert scan == token_cache.TokenScan(
        checksum=xxhash.xxh3_128(tokens.tobytes()).hexdigest(), max_id=500, first_invalid=8, eos_count=8, last=0
    )
    (tmp_path / "empty.bin").write_bytes(b"")
    empty = token_cache.scan_tokens(tmp_path / "empty.bin", np.dtype(np.uint16), vocab_size=300)
    assert (empty.max_id, empty.first_invalid, empty.last) == (-1, None, None)
    assert empty.checksum == xxhash.xxh3_128(b"").hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Hub datasets, with datasets' hub functions replaced by local in-memory splits (no network here)


def fake_hub(monkeypatch: pytest.MonkeyPatch, splits: dict[str, list[str]]) -> list[tuple]:
    tables = {
        name: datasets.Dataset.from_dict({"text": texts, "n": list(range(len(texts)))})
        for name, texts in splits.items()
    }
    calls: list[tuple] = []

    def split_names(name: str, config: str | None = None) -> list[str]:
        return list(tables)

    def load_dataset(name: str, config: str | None = None, *, split: str, streaming: bool) -> datasets.Dataset:
        calls.append((name, config, split, streaming))
        return tables[split].to_iterable_dataset() if streaming else tables[split]

    monkeypatch.setattr(datasets, "get_dataset_split_names", split_names)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(sources._HubSource, "_revision", lambda self: "rev1")
    return calls


HUB_TRAIN = [f"train text {i}: " + "abc " * (i % 9) for i in range(80)]
HUB_VAL = [f"validation text {i}" for i in range(10)]


def test_hub_dataset_uses_its_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_hub(monkeypatch, {"train": HUB_TRAIN, "validation": HUB_VAL, "test": ["unused"]})
    prepared = prepare(tmp_path / "cache", dataset="owner/corpus", dataset_config_name="small")
    assert documents(prepared, "train") == HUB_TRAIN and documents(prepared, "val") == HUB_VAL
    assert calls == [("owner/corpus", "small", "train", False), ("owner/corpus", "small", "validation", False)]
    assert prepared.info["source"] == "hub" and prepared.info["hub_validation_split"] is True
    assert Path(prepared.info["cache_path"]).name.startswith("owner--corpus-")
    unvalidated = prepare(tmp_path / "cache", dataset="owner/corpus", validation_split_percentage=0)
    assert documents(unvalidated, "train") == HUB_TRAIN and len(unvalidated.val) == 0


def test_hub_dataset_without_validation_is_split_by_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, {"train": HUB_TRAIN})
    prepared = prepare(tmp_path / "cache", dataset="corpus", validation_split_percentage=10)
    expected_val = [t for i, t in enumerate(HUB_TRAIN) if is_validation(str(i), 10)]
    assert documents(prepared, "val") == expected_val and expected_val
    assert documents(prepared, "train") == [t for t in HUB_TRAIN if t not in expected_val]


def test_hub_streaming_takes_max_train_bytes_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_hub(monkeypatch, {"train": HUB_TRAIN, "validation": HUB_VAL})
    prepared = prepare(tmp_path / "cache", dataset="corpus", streaming=True, max_train_bytes=700)
    assert prepared.info["train_bytes"] == 700
    assert "".join(documents(prepared, "train")) == "".join(HUB_TRAIN).encode()[:700].decode()
    assert prepared.info["val_bytes"] == 35  # the validation split is capped at 5% of max_train_bytes
    assert all(streaming for *_, streaming in calls)

    forbid_building(monkeypatch)
    again = prepare(tmp_path / "cache", dataset="corpus", streaming=True, max_train_bytes=700)
    assert again.info["cache_hit"] is True
    # upstream changed: the cache must not match
    monkeypatch.setattr(sources._HubSource, "_revision", lambda self: "rev2")
    with pytest.raises(AssertionError, match="cache should have been used"):
        prepare(tmp_path / "cache", dataset="corpus", streaming=True, max_train_bytes=700)


def test_hub_errors_are_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, {"test": ["only a test split"]})
    with pytest.raises(DataError, match="hub dataset 'corpus' has no 'train' split \\(it has: test\\)"):
        prepare(tmp_path / "cache", dataset="corpus")
    fake_hub(monkeypatch, {"train": HUB_TRAIN})
    with pytest.raises(DataError, match="hub dataset 'corpus' split 'train' has no column 'body'.*: text, n"):
        prepare(tmp_path / "cache", dataset="corpus", text_column="body")
    with pytest.raises(DataError, match="column 'n' of hub dataset 'corpus' split 'train' holds"):
        prepare(tmp_path / "cache", dataset="corpus", text_column="n", streaming=True, max_train_bytes=100)


# ---------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (
            None,
            {"dataset": "missing/dir/data.txt"},
            "dataset path 'missing/dir/data.txt' does not exist; pass 'stdlib'",
        ),
        ("data.csv", {}, "unsupported extension '.csv'; use one of .txt, .jsonl, .json, .parquet"),
        ("data.jsonl", {"text_column": "body"}, "has no column 'body'; pass --text_column, one of: text"),
        ("numbers.jsonl", {}, "column 'text' of 'numbers.jsonl' holds"),
        ("empty_dir", {}, "holds no .txt/.jsonl/.json/.parquet files"),
        ("data.jsonl", {"streaming": True}, "--streaming applies only to hub datasets"),
        (None, {"validation_split_percentage": 100}, "validation_split_percentage must be in [0, 100)"),
        (None, {"tokenizer": "/nonexistent/tok"}, "tokenizer path '/nonexistent/tok' does not exist"),
    ],
)
def test_bad_inputs_raise_one_line_data_errors(tmp_path: Path, make: str | None, kwargs: dict, message: str) -> None:
    if make == "empty_dir":
        (tmp_path / make).mkdir()
    elif make == "numbers.jsonl":
        (tmp_path / make).write_text('{"text": 1}\n{"text": 2}\n')
    elif make is not None:
        (tmp_path / make).write_text('{"text": "hello"}\n')
    if make is not None:
        kwargs = {"dataset": str(tmp_path / make), **kwargs}
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "cache", **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_hub_dataset_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="could not load hub dataset 'normgpt-no-such-owner/no-such-dataset'") as err:
        prepare(tmp_path / "cache", dataset="normgpt-no-such-owner/no-such-dataset")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="needs --max_train_bytes"):
        prepare(tmp_path / "cache", dataset="normgpt-no-such-owner/no-such-dataset", streaming=True)


# Files that cannot be read: one line naming the file and what is wrong with it, where datasets says only
# "DatasetGenerationError: An error occurred while generating the dataset".

RANDOM_BYTES = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "dataset file '{path}' is empty; add text to it or remove it"),
        (
            "random.txt",
            RANDOM_BYTES,
            f"dataset file '{{path}}' is binary, not text (a NUL byte at offset {RANDOM_BYTES.index(0)})",
        ),
        (
            "notes.txt",
            "first line\nsecond line\nthird café\n".encode("latin-1"),
            "dataset file '{path}' is not UTF-8 text: byte 0xe9 at offset 32 (line 3) cannot be decoded; convert it "
            "to UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ),
        (
            "windows.txt",
            "hello\r\n".encode("utf-16"),
            "dataset file '{path}' is UTF-16 text; convert it to UTF-8 (e.g. iconv -f utf-16 -t utf-8)",
        ),
        (
            "rows.jsonl",
            b'{"text": "a"}\n{"text": "b"}\n{"text": oops}\n{"text": "d"}\n',
            "dataset file '{path}' line 3 is not valid JSON: Expecting value (column 10)",
        ),
        ("empty.jsonl", b"", "dataset file '{path}' is empty; add text to it or remove it"),
        (
            "rows.json",
            b'[{"text": "a"},\n {"text": }]',
            "dataset file '{path}' is not valid JSON: Expecting value at line 2 column 11",
        ),
    ],
    ids=["empty", "binary", "latin-1", "utf-16", "bad jsonl line", "empty jsonl", "bad json"],
)
def test_unreadable_files_are_named_with_what_is_wrong(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "cache", dataset=str(path))
    assert str(err.value) == message.format(path=path)


def test_an_unreadable_file_in_a_folder_is_named(tmp_path: Path) -> None:
    write_docs(tmp_path / "corpus", 5)
    (tmp_path / "corpus" / "old.txt").write_bytes("naïve\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"^dataset file '{re.escape(str(tmp_path / 'corpus' / 'old.txt'))}' is not"):
        prepare(tmp_path / "cache", dataset=str(tmp_path / "corpus"))


def test_encoding_problems_are_located_across_read_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    # "é" straddles the first 1 MiB read; the bad byte 0xff comes after it, on line 2.
    path.write_bytes(b"a" * (2**20 - 1) + "é".encode() + b"\nx\xff")
    assert sources._encoding_problem(path) == (
        f"dataset file '{path}' is not UTF-8 text: byte 0xff at offset {2**20 + 3} (line 2) cannot be decoded; "
        "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )
    path.write_bytes(b"abc" + "é".encode()[:1])
    assert sources._encoding_problem(path) == (
        f"dataset file '{path}' is not UTF-8 text: it ends inside a multi-byte character"
    )
    path.write_bytes("fine ünïcödé\n".encode())
    assert sources._encoding_problem(path) is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("missing", "tokenizer path '{path}' does not exist; pass a folder saved with save_pretrained or a hub name"),
        ("file", "tokenizer path '{path}' is a file; pass the folder that holds it (saved with save_pretrained)"),
        (
            "empty folder",
            "tokenizer folder '{path}' holds no tokenizer.json or tokenizer_config.json; pass a folder saved with "
            "save_pretrained or a hub name",
        ),
        ("corrupt", "could not load the tokenizer in folder '{path}': "),
    ],
    ids=["missing", "file", "empty folder", "corrupt"],
)
def test_bad_tokenizer_paths_say_what_is_wrong(tmp_path: Path, make: str, message: str) -> None:
    path = tmp_path / "tok"
    if make == "file":
        path.write_text("{}")
    elif make == "empty folder":
        path.mkdir()
    elif make == "corrupt":
        path.mkdir()
        (path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "cache", tokenizer=str(path))
    assert str(err.value).startswith(message.format(path=path))
    assert "\n" not in str(err.value) and "Repo id" not in str(err.value)


def test_unknown_hub_tokenizer_names_the_hub_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "cache", tokenizer="normgpt-no-such-owner/no-such-tokenizer")
    assert str(err.value).startswith(
        "could not load tokenizer 'normgpt-no-such-owner/no-such-tokenizer' from the hub: "
    )
    assert "\n" not in str(err.value)


def test_too_little_data_for_a_batch_names_split_and_counts() -> None:
    with pytest.raises(DataError) as err:
        TokenBatches(np.arange(1000), block_size=64, batch_size=8, seed=0, world_size=2)
    assert str(err.value).startswith("the train split has 1000 tokens but one step needs 1024")
    assert "lower block_size" in str(err.value)
    with pytest.raises(DataError, match="the validation split has 10 tokens but evaluation needs at least 32"):
        eval_batches(np.arange(10), block_size=16, batch_size=4, max_batches=2, world_size=2)


def test_data_arguments_become_cli_flags() -> None:
    from train.config import ArgumentParser

    (args,) = ArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--dataset", "x.txt", "--max_train_bytes", "1000", "--streaming", "--tokenizer", "gpt2", "--block_size", "64"]
    )
    assert args == DataArguments(dataset="x.txt", max_train_bytes=1000, streaming=True, tokenizer="gpt2", block_size=64)
    (default,) = ArgumentParser(DataArguments).parse_args_into_dataclasses([])
    assert default == DataArguments()


# ---------------------------------------------------------------------------------------------------------------------
# Batches


def take(batches: TokenBatches, n: int) -> list[torch.Tensor]:
    return [batches.next_batch() for _ in range(n)]


def test_token_batches_are_deterministic_windows() -> None:
    tokens = np.arange(10_000, dtype=np.uint16)
    a, b = TokenBatches(tokens, 16, 4, seed=1), TokenBatches(tokens, 16, 4, seed=1)
    batches = take(a, 20)
    for x, y in zip(batches, take(b, 20), strict=True):
        assert torch.equal(x, y)
    other = take(TokenBatches(tokens, 16, 4, seed=2), 20)
    assert not all(torch.equal(x, y) for x, y in zip(batches, other, strict=True))
    first = batches[0]
    assert first.shape == (4, 16) and first.dtype == torch.int64
    assert torch.all(first[:, 0] % 16 == 0)  # windows start on block boundaries
    assert torch.equal(first, first[:, :1] + torch.arange(16))  # and are contiguous


def test_ranks_read_disjoint_windows_and_cover_each_at_most_once_per_epoch() -> None:
    tokens = np.arange(16 * 50, dtype=np.int64)  # 50 windows; 2 ranks x batch 4 -> 6 steps, 48 windows per epoch
    ranks = [TokenBatches(tokens, 16, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == 6
    seen = [[int(w) // 16 for batch in take(it, 6) for w in batch[:, 0]] for it in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1])) == 48
    next_epoch = [int(w) // 16 for w in ranks[0].next_batch()[:, 0]]
    assert ranks[0].epoch == 1 and next_epoch != seen[0][:4]


def test_token_batches_resume_exactly_from_state_dict() -> None:
    tokens = np.arange(16 * 30, dtype=np.uint32)  # 30 windows
    for world_size in (1, 2):
        expected = [take(TokenBatches(tokens, 16, 3, 5, r, world_size), 25) for r in range(world_size)]
        for stop in (0, 4, 5, 7, 13):  # 5 and 13 are epoch boundaries for world_size 2; 25 spans several epochs
            interrupted = [TokenBatches(tokens, 16, 3, 5, r, world_size) for r in range(world_size)]
            for it in interrupted:
                take(it, stop)
            # accelerate pickles the main process's state and every rank loads it (the seed comes from the state).
            state = pickle.loads(pickle.dumps(interrupted[0].state_dict()))
            for rank in range(world_size):
                resumed = TokenBatches(tokens, 16, 3, seed=999, rank=rank, world_size=world_size)
                resumed.load_state_dict(state)
                for x, y in zip(take(resumed, 25 - stop), expected[rank][stop:], strict=True):
                    assert torch.equal(x, y)


def test_state_is_the_same_on_every_rank_and_rejects_other_data() -> None:
    tokens = np.arange(16 * 30)
    ranks = [TokenBatches(tokens, 16, 3, seed=0, rank=r, world_size=2) for r in range(2)]
    for it in ranks:
        take(it, 3)
    assert ranks[0].state_dict() == ranks[1].state_dict()
    with pytest.raises(DataError, match="checkpoint has block_size=16 but this run has 8"):
        TokenBatches(tokens, 8, 3, seed=0).load_state_dict(ranks[0].state_dict())


def test_eval_batches_are_fixed_evenly_spaced_and_sharded() -> None:
    tokens = np.arange(16 * 100, dtype=np.uint16)
    single = list(eval_batches(tokens, 16, 4, max_batches=5))
    assert len(single) == 5 and all(b.shape == (4, 16) for b in single)
    starts = [int(s) // 16 for b in single for s in b[:, 0]]
    assert starts == [i * 100 // 20 for i in range(20)]  # evenly spaced over the whole split
    assert all(torch.equal(x, y) for x, y in zip(single, eval_batches(tokens, 16, 4, max_batches=5), strict=True))

    shards = [list(eval_batches(tokens, 16, 4, max_batches=8, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    windows = [{int(s) // 16 for b in shard for s in b[:, 0]} for shard in shards]
    assert not windows[0] & windows[1] and len(windows[0] | windows[1]) == 32

    small = list(eval_batches(np.arange(16 * 3), 16, 4, max_batches=5))
    assert [b.shape for b in small] == [(3, 16)]  # fewer windows than a batch: one smaller batch
