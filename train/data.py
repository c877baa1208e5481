"""The data layer: text corpus -> tokenizer + cached, memory-mapped token streams -> training and evaluation batches.

`prepare_data` resolves the source (the embedded Python-stdlib corpus, local files, or a hub dataset), fingerprints
it, and looks for `cache_dir/<name>-<key>/`. On a miss it writes the split documents to a spool file, trains (or
loads) the tokenizer, tokenizes both splits into raw `.bin` token arrays and publishes the directory with one atomic
rename. Every rank then memory-maps the same files. `TokenBatches` and `eval_batches` turn a token array into
`[batch, block_size]` LongTensors, deterministically and resumably, sharded over ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
# Bump when document splitting/chunking or the cache layout changes, so old caches are never reused by mistake.
CACHE_VERSION = 1
# Identifies how the default tokenizer is trained; part of the cache key, bump when the recipe changes.
BPE_RECIPE = "bytelevel-bpe-v1"
# The BPE trainer keeps every distinct pre-token in memory, so huge corpora train it on a hashed sample of this size
# (all of the text is still tokenized). The whole stdlib (~12 MB) is far below it.
BPE_MAX_TRAIN_BYTES = 512 * 2**20
EXTENSIONS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# A single .txt file is cut into about this many documents (whole paragraphs, within the byte bounds below) so that
# it can be split into train and validation by document like any other corpus.
_TXT_TARGET_DOCS = 200
_TXT_DOC_BYTES = (256, 64 * 2**10)
# Texts handed to one `encode_batch` call: large enough for the Rust side to parallelize, small enough for memory.
_ENCODE_BATCH_BYTES = 4 * 2**20
_VALID_CHOICES = "pass 'stdlib', a .txt/.jsonl/.json/.parquet file or folder, or a hub dataset name"


@dataclass
class DataArguments:
    dataset: str = field(
        default="stdlib",
        metadata={
            "help": "'stdlib' (the running Python's standard library sources, no download), a local "
            ".txt/.jsonl/.json/.parquet file or folder of them, or a hub dataset name"
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "config name of a hub dataset"})
    text_column: str = field(
        default="text", metadata={"help": "column holding the text (.jsonl/.json/.parquet files and hub datasets)"}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "hub datasets only: stream instead of downloading everything (needs --max_train_bytes)"},
    )
    max_train_bytes: int | None = field(
        default=None,
        metadata={"help": "cap on training text in UTF-8 bytes (default: all); also caps a hub validation split"},
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={
            "help": "share of documents held out for validation, chosen by a hash of each file/document so adding "
            "data never moves others (hub datasets with a 'validation' split use that instead)"
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "existing tokenizer (local path or hub name); default: train a byte-level BPE on the data"},
    )
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "token cache location (default: $NORMGPT_CACHE or ~/.cache/normgpt)"}
    )


class DataError(ValueError):
    """A bad data input. The message is one line that names the problem and the valid choices."""


@dataclass
class PreparedData:
    train: np.ndarray  # 1-D memory-mapped token ids, every document followed by eos
    val: np.ndarray  # same for the validation split (empty when validation_split_percentage is 0)
    tokenizer: PreTrainedTokenizerBase  # a PreTrainedTokenizerFast unless --tokenizer names a slow-only one
    info: dict[str, Any]  # JSON-serializable description of the data and where it is cached


# ---------------------------------------------------------------------------------------------------------------------
# Splitting and hashing


def _unit_hash(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for `key` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_validation(key: str, percentage: float) -> bool:
    """Whether the document named `key` belongs to the validation split. Decided by the key alone, so adding or
    removing documents never moves any other document between the splits."""
    return _unit_hash(key) * 100.0 < percentage


def _update(h: Any, *parts: bytes) -> None:
    # Length-prefixing keeps ("ab", "c") and ("a", "bc") from hashing the same.
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _hash_split(
    documents: Iterable[tuple[str, str]], percentage: float, max_train_bytes: int | None
) -> Iterator[tuple[bool, str]]:
    """(is_validation, text) for keyed documents; stops once the training text reaches `max_train_bytes`, so the
    validation share stays about `percentage` of what was read."""
    train_bytes = 0
    for key, text in documents:
        if not text:
            continue
        if is_validation(key, percentage):
            yield True, text
            continue
        if max_train_bytes is not None:
            text = _truncate_utf8(text, max_train_bytes - train_bytes)
            if not text:  # the last few bytes of the cap cannot hold this document's first character
                return
        train_bytes += len(text.encode("utf-8"))
        yield False, text
        if max_train_bytes is not None and train_bytes >= max_train_bytes:
            return


def _capped(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    total = 0
    for text in texts:
        if not text:
            continue
        if max_bytes is not None:
            if total >= max_bytes:
                return
            text = _truncate_utf8(text, max_bytes - total)
            if not text:
                return
        total += len(text.encode("utf-8"))
        yield text


# ---------------------------------------------------------------------------------------------------------------------
# Sources. Each has `kind`, `name` (for info and the cache directory name), `fingerprint()` and `documents()`, which
# yields (is_validation, text) with the split and max_train_bytes already applied. Constructors only validate cheap
# things (paths, extensions) so that every rank fails fast and alike; loading happens in fingerprint()/documents().


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources() -> list[tuple[str, str]]:
    """(relative path, text) of the stdlib's .py files, tests and third-party packages excluded, sorted by path."""
    root = stdlib_root()
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of site-packages, which can be far larger than the stdlib itself.
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        for filename in filenames:
            if not filename.endswith(".py") or filename.startswith("test_"):
                continue
            path = Path(dirpath) / filename
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            found.append((path.relative_to(root).as_posix(), text))
    found.sort()
    return found


def stdlib_files() -> list[str]:
    """Sorted relative paths of the files that make up the 'stdlib' corpus."""
    return [rel for rel, _ in _stdlib_sources()]


class _StdlibSource:
    kind = "stdlib"

    def __init__(self, args: DataArguments) -> None:
        self.args = args
        self.name = "stdlib"
        self._files: list[tuple[str, str]] | None = None

    def _load(self) -> list[tuple[str, str]]:
        if self._files is None:
            self._files = _stdlib_sources()
            if not self._files:
                raise DataError(f"found no readable .py files under the stdlib at '{stdlib_root()}'")
        return self._files

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel, text in self._load():
            _update(h, rel.encode("utf-8"), text.encode("utf-8"))
        return h.hexdigest()

    def documents(self) -> Iterator[tuple[bool, str]]:
        return _hash_split(self._load(), self.args.validation_split_percentage, self.args.max_train_bytes)

    def describe(self) -> dict[str, Any]:
        return {"stdlib_root": str(stdlib_root()), "python": ".".join(map(str, sys.version_info[:3]))}


def _chunk_lines(lines: Iterable[str], total_bytes: int) -> Iterator[str]:
    """Group the lines of one big text file into documents of whole paragraphs; a paragraph that runs on far past
    the target size is cut at a line boundary instead."""
    low, high = _TXT_DOC_BYTES
    target = min(high, max(low, total_bytes // _TXT_TARGET_DOCS))
    parts: list[str] = []
    size = 0
    for line in lines:
        parts.append(line)
        size += len(line)
        if size >= target and (not line.strip() or size >= 4 * target):
            yield "".join(parts)
            parts, size = [], 0
    if parts:
        yield "".join(parts)


def _texts_of(ds: Any, column: str, where: str) -> Iterator[str]:
    """The `column` of a datasets.Dataset/IterableDataset as strings (missing values as ''), read in batches."""
    features = ds.features
    columns = list(features) if features is not None else None
    if columns is not None:
        if column not in columns:
            raise DataError(f"{where} has no column '{column}'; pass --text_column, one of: {', '.join(columns)}")
        feature = features[column]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise DataError(f"column '{column}' of {where} holds {feature}, not text; pass --text_column")
    for batch in ds.iter(batch_size=1000):
        if column not in batch:
            raise DataError(f"{where} has no column '{column}'; pass --text_column, one of: {', '.join(batch)}")
        for value in batch[column]:
            if value is not None and not isinstance(value, str):
                raise DataError(f"column '{column}' of {where} holds {type(value).__name__}, not text")
            yield value or ""


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.digest()


class _LocalSource:
    kind = "local"

    def __init__(self, args: DataArguments, path: Path) -> None:
        self.args = args
        self.path = path
        if path.is_file():
            if path.suffix.lower() not in EXTENSIONS:
                raise DataError(
                    f"dataset file '{path}' has an unsupported extension '{path.suffix}'; "
                    f"use one of {', '.join(EXTENSIONS)}"
                )
            self.root = path.parent
            self.files = [path]
        else:
            self.root = path
            self.files = sorted(
                (
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in EXTENSIONS
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                ),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not self.files:
                raise DataError(f"dataset folder '{path}' holds no {'/'.join(EXTENSIONS)} files")
        self.name = path.name or "data"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        # Only tabular files read a column, so only they make the text column part of the identity.
        tabular = any(EXTENSIONS[f.suffix.lower()] != "text" for f in self.files)
        _update(h, b"single" if self.path.is_file() else b"folder", self.args.text_column.encode() if tabular else b"")
        for f in self.files:
            _update(h, self._rel(f).encode("utf-8"), _file_sha256(f))
        return h.hexdigest()

    def _load(self, builder: str, files: list[Path], **kwargs: Any) -> dict[str, Any]:
        """Load `files` with one datasets builder call, one split per file, so every row is known to come from its
        file: documents are keyed by (file, row) and adding a file never moves the rows of the others."""
        if not files:
            return {}
        cache = _cache_root(self.args) / "datasets"
        # One progress bar per file is noise (and thousands of them for a folder of shards); converting local files
        # is quick anyway.
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            loaded = datasets.load_dataset(
                builder, data_files={f"file{i}": [str(f)] for i, f in enumerate(files)}, cache_dir=str(cache), **kwargs
            )
        except Exception as err:  # datasets raises many unrelated types; all of them mean the files are unreadable
            raise DataError(f"could not read {builder} files under '{self.path}': {_one_line(err)}") from err
        finally:
            if bars:
                datasets.enable_progress_bars()
        return {files[i]: loaded[f"file{i}"] for i in range(len(files))}

    def _keyed_documents(self) -> Iterator[tuple[str, str]]:
        by_kind: dict[str, list[Path]] = {"text": [], "json": [], "parquet": []}
        for f in self.files:
            by_kind[EXTENSIONS[f.suffix.lower()]].append(f)
        if self.path.is_file() and by_kind["text"]:
            # One .txt file: rows are lines (line breaks kept), regrouped into paragraph-aligned documents.
            loaded = self._load("text", by_kind["text"], sample_by="line", keep_linebreaks=True)
        else:
            loaded = self._load("text", by_kind["text"], sample_by="document")
        loaded.update(self._load("json", by_kind["json"]))
        loaded.update(self._load("parquet", by_kind["parquet"]))
        for f in self.files:
            rel = self._rel(f)
            ds = loaded[f]
            if EXTENSIONS[f.suffix.lower()] == "text":
                if self.path.is_file():
                    chunks = _chunk_lines(_texts_of(ds, "text", f"'{rel}'"), f.stat().st_size)
                    yield from ((f"{rel}#{i}", text) for i, text in enumerate(chunks))
                else:
                    yield from ((rel, text) for text in _texts_of(ds, "text", f"'{rel}'"))
            else:
                texts = _texts_of(ds, self.args.text_column, f"'{rel}'")
                yield from ((f"{rel}#{i}", text) for i, text in enumerate(texts))

    def documents(self) -> Iterator[tuple[bool, str]]:
        return _hash_split(self._keyed_documents(), self.args.validation_split_percentage, self.args.max_train_bytes)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "files": len(self.files)}


class _HubSource:
    kind = "hub"

    def __init__(self, args: DataArguments) -> None:
        self.args = args
        self.name = args.dataset.replace("/", "--")
        self._splits: tuple[Any, Any] | None = None

    def _where(self) -> str:
        config = f" (config '{self.args.dataset_config_name}')" if self.args.dataset_config_name else ""
        return f"hub dataset '{self.args.dataset}'{config}"

    def _load(self) -> tuple[Any, Any]:
        """(train, validation or None) as Dataset or IterableDataset."""
        if self._splits is None:
            a = self.args
            try:
                names = datasets.get_dataset_split_names(a.dataset, a.dataset_config_name)
                if "train" not in names:
                    raise DataError(f"{self._where()} has no 'train' split (it has: {', '.join(names)})")
                train = datasets.load_dataset(a.dataset, a.dataset_config_name, split="train", streaming=a.streaming)
                val = None
                if "validation" in names:
                    val = datasets.load_dataset(
                        a.dataset, a.dataset_config_name, split="validation", streaming=a.streaming
                    )
            except DataError:
                raise
            except Exception as err:  # network, auth, missing config...: all surface as one line
                hint = f"; no local path '{a.dataset}' exists either ({_VALID_CHOICES})"
                raise DataError(f"could not load {self._where()}: {_one_line(err)}{hint}") from err
            self._splits = (train, val)
        return self._splits

    def fingerprint(self) -> str:
        train, val = self._load()
        h = hashlib.sha256()
        _update(h, self.args.dataset.encode(), (self.args.dataset_config_name or "").encode())
        _update(h, self.args.text_column.encode())
        if self.args.streaming:
            # A stream has no content fingerprint without reading it, so pin the repository revision instead.
            _update(h, b"streaming", self._revision().encode())
        else:
            # datasets' own fingerprint of the prepared Arrow data (it changes when the downloaded files do).
            _update(h, train._fingerprint.encode(), (val._fingerprint if val is not None else "").encode())
        return h.hexdigest()

    def _revision(self) -> str:
        try:
            from huggingface_hub import HfApi

            return HfApi().dataset_info(self.args.dataset).sha or "unknown"
        except Exception as err:  # without a revision the cache still works, it just cannot see upstream changes
            logger.warning("could not look up the revision of %s (%s)", self._where(), _one_line(err))
            return "unknown"

    def documents(self) -> Iterator[tuple[bool, str]]:
        train, val = self._load()
        a = self.args
        where = self._where()
        train_texts = _texts_of(train, a.text_column, f"{where} split 'train'")
        if val is None:
            keyed = ((str(i), text) for i, text in enumerate(train_texts))
            yield from _hash_split(keyed, a.validation_split_percentage, a.max_train_bytes)
            return
        yield from ((False, text) for text in _capped(train_texts, a.max_train_bytes))
        if a.validation_split_percentage == 0:
            return  # 0 means no validation data, whichever way it would be obtained
        val_cap = None
        if a.max_train_bytes is not None:
            val_cap = max(1, int(a.max_train_bytes * a.validation_split_percentage / 100))
        val_texts = _texts_of(val, a.text_column, f"{where} split 'validation'")
        yield from ((True, text) for text in _capped(val_texts, val_cap))

    def describe(self) -> dict[str, Any]:
        train, val = self._load()
        return {"hub_config": self.args.dataset_config_name, "hub_validation_split": val is not None}


_Source = _StdlibSource | _LocalSource | _HubSource


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _resolve_source(args: DataArguments) -> _Source:
    if args.dataset == "stdlib":
        return _StdlibSource(args)
    path = Path(args.dataset).expanduser()
    if path.exists():
        return _LocalSource(args, path)
    # Anything that is spelled like a file path cannot be a hub name (those are 'name' or 'owner/name').
    looks_like_path = (
        path.suffix.lower() in EXTENSIONS
        or args.dataset.startswith((".", "/", "~"))
        or args.dataset.count("/") > 1
        or (os.sep != "/" and os.sep in args.dataset)
    )
    if looks_like_path:
        raise DataError(f"dataset path '{args.dataset}' does not exist; {_VALID_CHOICES}")
    return _HubSource(args)


# ---------------------------------------------------------------------------------------------------------------------
# Spooling: the split documents are written to disk once, so that training the tokenizer and tokenizing can each read
# them again without holding the corpus in memory or streaming it from the hub twice.


class _Spool:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "documents.spool"
        self._file = open(self.path, "wb")  # the caller fills the spool in a loop, then close()s it
        self.offsets = array("Q", [0])
        self.is_val = bytearray()

    def add(self, text: str, is_val: bool) -> None:
        data = text.encode("utf-8")
        self._file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))
        self.is_val.append(is_val)

    def close(self) -> None:
        self._file.close()

    def stats(self, val: bool) -> tuple[int, int]:
        """(documents, bytes) of one split."""
        in_split = np.frombuffer(self.is_val, dtype=np.uint8) == val
        sizes = np.diff(np.frombuffer(self.offsets, dtype=np.uint64))
        return int(in_split.sum()), int(sizes[in_split].sum())

    def batches(self, val: bool, keep: Callable[[int], bool] | None = None) -> Iterator[list[str]]:
        """Texts of one split, in order, grouped into batches of about _ENCODE_BATCH_BYTES."""
        if self.offsets[-1] == 0:
            return
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            batch: list[str] = []
            size = 0
            for i, flag in enumerate(self.is_val):
                if flag != val or (keep is not None and not keep(i)):
                    continue
                start, end = self.offsets[i], self.offsets[i + 1]
                batch.append(data[start:end].decode("utf-8"))
                size += end - start
                if size >= _ENCODE_BATCH_BYTES:
                    yield batch
                    batch, size = [], 0
            if batch:
                yield batch


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizers


def train_bpe_tokenizer(batches: Iterable[list[str]], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style): every byte is in the base alphabet, so any text round-trips exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(batches, trainer)
    # One special token serves as eos, bos, pad and unk (as in GPT-2): the model needs ids for all of them, and
    # a byte-level vocabulary never produces unk anyway.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def _load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # missing files, no network, bad repo id...: one line for the user
        raise DataError(f"could not load tokenizer '{name}': {_one_line(err)}; pass a local path or hub name") from err
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer '{name}' has no eos_token, which is needed to separate documents")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    h = hashlib.sha256()
    if tokenizer.is_fast:
        _update(h, tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    else:
        _update(h, json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    _update(h, str(tokenizer.eos_token_id).encode())
    return h.hexdigest()


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _tokenize_to_file(
    tokenizer: PreTrainedTokenizerBase, batches: Iterable[list[str]], path: Path, dtype: np.dtype
) -> int:
    """Write every document's ids followed by eos to `path`; returns the number of tokens written."""
    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer if tokenizer.is_fast else None
    if backend is not None:
        # Corpus text that happens to contain e.g. "<|endoftext|>" must be tokenized as text, not as the separator.
        saved = backend.encode_special_tokens
        backend.encode_special_tokens = True
    total = 0
    try:
        with open(path, "wb") as f:
            for batch in batches:
                if backend is not None:
                    encoded = [e.ids for e in backend.encode_batch(batch, add_special_tokens=False)]
                else:
                    encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
                ids: list[int] = []
                for doc in encoded:
                    ids.extend(doc)
                    ids.append(eos)
                np.asarray(ids, dtype=dtype).tofile(f)
                total += len(ids)
    finally:
        if backend is not None:
            backend.encode_special_tokens = saved
    return total


# ---------------------------------------------------------------------------------------------------------------------
# The cache


def _cache_root(args: DataArguments) -> Path:
    root = args.cache_dir or os.environ.get("NORMGPT_CACHE") or "~/.cache/normgpt"
    return Path(root).expanduser()


def _read_meta(directory: Path) -> dict[str, Any] | None:
    """The entry's meta.json if the entry is complete and consistent, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            if (directory / f"{split}.bin").stat().st_size != meta[f"{split}_tokens"] * itemsize:
                return None
        if meta["tokenizer_trained"] and not (directory / "tokenizer").is_dir():
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _staging_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _remove_dead_staging(final: Path) -> None:
    """Delete staging directories that killed builds of this entry on this host left behind."""
    host = socket.gethostname()
    for stale in final.parent.glob(_staging_prefix(final) + "*"):
        try:
            stale_host, pid, _ = stale.name[len(_staging_prefix(final)) :].rsplit("-", 2)
            if stale_host != host:
                continue  # another machine's build (shared file system): its pid means nothing here
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _memmap(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.empty(0, dtype=dtype)  # mmap refuses empty files
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _build(
    source: _Source,
    args: DataArguments,
    vocab_size: int,
    loaded: PreTrainedTokenizerBase | None,
    base_meta: dict[str, Any],
    final: Path,
) -> None:
    """Build the cache entry in a staging directory next to `final`, then publish it with one atomic rename."""
    _remove_dead_staging(final)
    staging = Path(
        tempfile.mkdtemp(prefix=f"{_staging_prefix(final)}{socket.gethostname()}-{os.getpid()}-", dir=final.parent)
    )
    try:
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        spool = _Spool(staging)
        try:
            for is_val, text in source.documents():
                spool.add(text, is_val)
        finally:
            spool.close()
        train_docs, train_bytes = spool.stats(val=False)
        val_docs, val_bytes = spool.stats(val=True)
        if train_docs == 0:
            raise DataError(f"dataset '{args.dataset}' yielded no training text")
        if val_docs == 0 and args.validation_split_percentage > 0:
            if train_docs < 2:
                raise DataError(
                    f"dataset '{args.dataset}' has a single document, which cannot be split into train and "
                    "validation; add data or pass --validation_split_percentage 0"
                )
            # Too few documents for the hash to pick any: hold out the first one so evaluation still has data.
            spool.is_val[0] = True
            train_docs, train_bytes = spool.stats(val=False)
            val_docs, val_bytes = spool.stats(val=True)
        seconds["read"] = time.perf_counter() - t0
        logger.info("read %d train / %d val documents (%d / %d bytes)", train_docs, val_docs, train_bytes, val_bytes)

        t0 = time.perf_counter()
        if loaded is None:
            keep = None
            if train_bytes > BPE_MAX_TRAIN_BYTES:
                fraction = BPE_MAX_TRAIN_BYTES / train_bytes

                def keep(i: int) -> bool:  # a deterministic, hashed sample of the training documents
                    return _unit_hash(f"bpe#{i}") < fraction

            tokenizer = train_bpe_tokenizer(spool.batches(val=False, keep=keep), vocab_size)
            tokenizer.save_pretrained(staging / "tokenizer")
            seconds["train_tokenizer"] = time.perf_counter() - t0
            logger.info("trained a %d-token BPE in %.1f s", len(tokenizer), seconds["train_tokenizer"])
        else:
            tokenizer = loaded

        t0 = time.perf_counter()
        dtype = _token_dtype(len(tokenizer))
        train_tokens = _tokenize_to_file(tokenizer, spool.batches(val=False), staging / "train.bin", dtype)
        val_tokens = _tokenize_to_file(tokenizer, spool.batches(val=True), staging / "val.bin", dtype)
        seconds["tokenize"] = time.perf_counter() - t0
        logger.info("tokenized %d train / %d val tokens in %.1f s", train_tokens, val_tokens, seconds["tokenize"])
        spool.path.unlink()

        meta = {
            **base_meta,
            "train_documents": train_docs,
            "val_documents": val_docs,
            "train_bytes": train_bytes,
            "val_bytes": val_bytes,
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "vocab_size": len(tokenizer),
            "dtype": dtype.name,
            "build_seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(staging, final)
        except OSError:
            # `final` exists and is not empty: a concurrent build of the same key (another node, or an unrelated
            # run) published first. Its content is equivalent, so use it and drop ours.
            if _read_meta(final) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _validate(args: DataArguments, vocab_size: int) -> None:
    if not 0 <= args.validation_split_percentage < 100:
        raise DataError(f"validation_split_percentage must be in [0, 100), got {args.validation_split_percentage}")
    if args.block_size <= 0:
        raise DataError(f"block_size must be > 0, got {args.block_size}")
    if args.max_train_bytes is not None and args.max_train_bytes <= 0:
        raise DataError(f"max_train_bytes must be > 0 or unset, got {args.max_train_bytes}")
    if args.tokenizer is None and not 256 + 1 <= vocab_size <= 2**32:
        raise DataError(f"vocab_size must be in [257, 2**32] for a byte-level BPE (256 bytes + eos), got {vocab_size}")


def prepare_data(
    args: DataArguments, vocab_size: int, main_process_first: Callable[[], AbstractContextManager[Any]]
) -> PreparedData:
    """Tokenizer and memory-mapped train/val token arrays for `args`, built once and cached.

    `main_process_first` (e.g. `accelerator.main_process_first`) lets the main process build the cache while the
    other ranks wait; they then find the finished entry. `vocab_size` is used only when training a BPE.
    """
    _validate(args, vocab_size)
    source = _resolve_source(args)
    if args.streaming and source.kind != "hub":
        raise DataError(f"--streaming applies only to hub datasets, not '{args.dataset}'")
    if args.streaming and args.max_train_bytes is None:
        raise DataError("--streaming needs --max_train_bytes, the amount of text to take from the stream")

    with main_process_first():
        loaded = _load_tokenizer(args.tokenizer) if args.tokenizer is not None else None
        fingerprint = source.fingerprint()
        if loaded is None:
            tokenizer_id: dict[str, Any] = {
                "recipe": BPE_RECIPE,
                "vocab_size": vocab_size,
                "bpe_max_train_bytes": BPE_MAX_TRAIN_BYTES,
            }
        else:
            tokenizer_id = {"sha256": _tokenizer_identity(loaded)}
        key_fields = {
            "cache_version": CACHE_VERSION,
            "dataset_fingerprint": fingerprint,
            "tokenizer": tokenizer_id,
            # float(): a YAML config may give 5 where the CLI gives 5.0, and both must find the same entry.
            "validation_split_percentage": float(args.validation_split_percentage),
            "max_train_bytes": args.max_train_bytes,
        }
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
        root = _cache_root(args)
        final = root / f"{source.name}-{key}"
        meta = _read_meta(final)
        cache_hit = meta is not None
        if meta is None:
            if final.exists():
                logger.warning("cache entry %s is incomplete or corrupt; rebuilding it", final)
                shutil.rmtree(final)
            root.mkdir(parents=True, exist_ok=True)
            base_meta = {
                "dataset": args.dataset,
                "source": source.kind,
                **source.describe(),
                "fingerprint": fingerprint,
                "validation_split_percentage": args.validation_split_percentage,
                "max_train_bytes": args.max_train_bytes,
                "text_column": args.text_column,
                "tokenizer_source": f"trained:{BPE_RECIPE}" if loaded is None else args.tokenizer,
                "tokenizer_trained": loaded is None,
                "cache_key": key_fields,
            }
            _build(source, args, vocab_size, loaded, base_meta, final)
            meta = _read_meta(final)
            if meta is None:
                raise DataError(f"cache entry {final} is unreadable right after building it")

    tokenizer = loaded
    if tokenizer is None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(final / "tokenizer"))
    dtype = np.dtype(meta["dtype"])
    return PreparedData(
        train=_memmap(final / "train.bin", dtype, meta["train_tokens"]),
        val=_memmap(final / "val.bin", dtype, meta["val_tokens"]),
        tokenizer=tokenizer,
        info={**meta, "cache_path": str(final), "cache_hit": cache_hit},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Batches


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise DataError(f"{name} must be > 0, got {value}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, {world_size}), got {rank}")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> torch.Tensor:
    index = starts[:, None] + np.arange(block_size)
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


class TokenBatches:
    """Deterministic, resumable iterator of [batch_size, block_size] LongTensor batches from a 1-D token array.

    The stream is cut into non-overlapping windows of block_size tokens. Every epoch walks a permutation of the
    windows seeded by (seed, epoch) in slots of batch_size windows; rank r takes slots r, r + world_size, ..., so the
    ranks read disjoint windows and each window is used at most once per epoch (the last few that do not fill a
    slot for every rank are skipped that epoch, differently each epoch). All ranks advance in lockstep, so the state
    does not depend on the rank: accelerate saves it from the main process only and every rank loads it.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
    ) -> None:
        _check_positive(block_size=block_size, batch_size=batch_size)
        _check_rank(rank, world_size)
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_windows = len(tokens) // block_size
        self.steps_per_epoch = self.num_windows // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            needed = block_size * batch_size * world_size
            raise DataError(
                f"the {split} split has {len(tokens)} tokens but one step needs {needed} (block_size {block_size} x "
                f"batch size {batch_size} x {world_size} process(es)); lower block_size or the batch size, or use "
                "more data"
            )
        self.epoch = 0
        self.step = 0  # batches this rank has taken in the current epoch
        self._permutation_epoch = -1
        self._permutation = np.empty(0, dtype=np.int64)

    def _order(self) -> np.ndarray:
        if self._permutation_epoch != self.epoch:
            self._permutation = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_windows)
            self._permutation_epoch = self.epoch
        return self._permutation

    def next_batch(self) -> torch.Tensor:
        """The next [batch_size, block_size] int64 batch of input ids (labels are the same ids, shifted by the
        model)."""
        if self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
        slot = self.step * self.world_size + self.rank
        windows = self._order()[slot * self.batch_size : (slot + 1) * self.batch_size]
        self.step += 1
        return _windows(self.tokens, windows * self.block_size, self.block_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        # `position` counts slots taken by all ranks together, which stays meaningful if the world size changes.
        return {
            "epoch": self.epoch,
            "position": self.step * self.world_size,
            "seed": self.seed,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "num_windows": self.num_windows,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where the saved iterator was (same data, block and batch size required; the saved seed
        wins over the constructor's so the order continues unchanged). With a different world size, resume at the
        first slot no rank has taken yet."""
        for name in ("block_size", "batch_size", "num_windows"):
            if state[name] != getattr(self, name):
                raise DataError(
                    f"cannot resume the batch order: the checkpoint has {name}={state[name]} but this run has "
                    f"{getattr(self, name)}; resume with the same data, block_size and batch size"
                )
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self.step = math.ceil(state["position"] / self.world_size)
        self._permutation_epoch = -1


def eval_batches(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    max_batches: int,
    rank: int = 0,
    world_size: int = 1,
    split: str = "validation",
) -> Iterator[torch.Tensor]:
    """A fixed set of evenly spaced windows, at most max_batches * batch_size of them in total over all ranks.

    Rank r gets windows r, r + world_size, ... of the set. Every rank gets the same number of windows, in full
    batches unless there are fewer than one batch's worth, so a loss averaged over batches weighs windows equally.
    The set depends only on the arguments, so val_loss is comparable across steps and runs.
    """
    _check_positive(block_size=block_size, batch_size=batch_size, max_batches=max_batches)
    _check_rank(rank, world_size)
    num_windows = len(tokens) // block_size
    per_rank = min(num_windows, max_batches * batch_size) // world_size
    if per_rank == 0:
        raise DataError(
            f"the {split} split has {len(tokens)} tokens but evaluation needs at least {block_size * world_size} "
            f"(one window of block_size {block_size} per process); lower block_size or use more data"
        )
    if per_rank >= batch_size:
        per_rank -= per_rank % batch_size  # only full batches, so batch-averaged losses weigh windows equally
    total = per_rank * world_size
    starts = (np.arange(total, dtype=np.int64) * num_windows // total)[rank::world_size] * block_size

    def generate() -> Iterator[torch.Tensor]:
        for i in range(0, len(starts), batch_size):
            yield _windows(tokens, starts[i : i + batch_size], block_size)

    return generate()
