"""Where documents come from: the embedded Python-stdlib corpus, local files, or a hub dataset.

Each source has `kind`, `name` (for info and the cache directory name), `fingerprint()` (the content identity that
keys the token cache), `describe()` and `documents()`, which yields (is_validation, text) with the train/validation
split and max_train_bytes already applied. The split is decided by a hash of each document's key (file path, or file
and row), so adding data never moves other documents between the splits. Constructors only validate cheap things
(paths, extensions) so that every rank fails fast and alike; loading happens in fingerprint()/documents().
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from train.arguments import DataArguments
from train.data.arguments import DataError, cache_root, looks_like_path, one_line

logger = logging.getLogger(__name__)

EXTENSIONS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# A single .txt file is cut into about this many documents (whole paragraphs, within the byte bounds below) so that
# it can be split into train and validation by document like any other corpus.
_TXT_TARGET_DOCS = 200
_TXT_DOC_BYTES = (256, 64 * 2**10)
VALID_CHOICES = "pass 'stdlib', a .txt/.jsonl/.json/.parquet file or folder, or a hub dataset name"

# ---------------------------------------------------------------------------------------------------------------------
# Hashing and splitting


def unit_hash(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for `key` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_validation(key: str, percentage: float) -> bool:
    """Whether the document named `key` belongs to the validation split. Decided by the key alone, so adding or
    removing documents never moves any other document between the splits."""
    return unit_hash(key) * 100.0 < percentage


def update_hash(h: Any, *parts: bytes) -> None:
    """Feed `parts` to the hashlib object `h`. Length-prefixing keeps ("ab", "c") and ("a", "bc") apart."""
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
# The stdlib corpus


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
            update_hash(h, rel.encode("utf-8"), text.encode("utf-8"))
        return h.hexdigest()

    def documents(self) -> Iterator[tuple[bool, str]]:
        return _hash_split(self._load(), self.args.validation_split_percentage, self.args.max_train_bytes)

    def describe(self) -> dict[str, Any]:
        return {"stdlib_root": str(stdlib_root()), "python": ".".join(map(str, sys.version_info[:3]))}


# ---------------------------------------------------------------------------------------------------------------------
# Local files


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


def _encoding_problem(path: Path) -> str | None:
    """Why the file at `path` is not UTF-8 text (empty, binary, UTF-16, an undecodable byte), or None if it is."""
    if path.stat().st_size == 0:
        return f"dataset file '{path}' is empty; add text to it or remove it"
    with open(path, "rb") as f:
        head = f.read(8192)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return f"dataset file '{path}' is UTF-16 text; convert it to UTF-8 (e.g. iconv -f utf-16 -t utf-8)"
        if b"\0" in head:  # text in any 8-bit encoding has no NUL bytes; git and grep decide "binary" the same way
            return f"dataset file '{path}' is binary, not text (a NUL byte at offset {head.index(0)})"
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, line = 0, 1
        while chunk := f.read(2**20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                held = len(err.object) - len(chunk)  # the start of a multi-byte character held over from before
                at = offset - held + err.start
                line += chunk.count(b"\n", 0, max(0, err.start - held))
                return (
                    f"dataset file '{path}' is not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {at} "
                    f"(line {line}) cannot be decoded; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
            offset += len(chunk)
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return f"dataset file '{path}' is not UTF-8 text: it ends inside a multi-byte character"
    return None


def _json_lines_problem(path: Path) -> str | None:
    """The first line of a JSON Lines file that is not a JSON object, or None."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return f"dataset file '{path}' line {number} is not valid JSON: {err.msg} (column {err.colno})"
            if not isinstance(row, dict):
                return f"dataset file '{path}' line {number} is a JSON {type(row).__name__}, not an object"
    return None


def _json_problem(path: Path) -> str | None:
    """Why a .json/.jsonl file cannot be read as rows: a .json holds a list of objects or JSON Lines."""
    if path.suffix.lower() == ".jsonl":
        return _json_lines_problem(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # more than one value: JSON Lines under a .json name
            return _json_lines_problem(path)
        return f"dataset file '{path}' is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
    if not isinstance(document, list):
        return f"dataset file '{path}' holds a JSON {type(document).__name__}; it must be a list of objects"
    for i, row in enumerate(document):
        if not isinstance(row, dict):
            return f"dataset file '{path}' item {i} is a JSON {type(row).__name__}, not an object"
    return None


def _file_problem(path: Path) -> str | None:
    kind = EXTENSIONS[path.suffix.lower()]
    if kind == "parquet":
        return None  # a binary format: datasets' own message is as precise as anything said here
    return _encoding_problem(path) or (_json_problem(path) if kind == "json" else None)


def _root_cause(err: BaseException) -> BaseException:
    while (inner := err.__cause__ or err.__context__) is not None:
        err = inner
    return err


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets without progress bars (one per file is noise, thousands for a folder of shards, and converting local
    files is quick anyway) or error logs (a failure becomes one DataError line that says more)."""
    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


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
        update_hash(
            h, b"single" if self.path.is_file() else b"folder", self.args.text_column.encode() if tabular else b""
        )
        for f in self.files:
            update_hash(h, self._rel(f).encode("utf-8"), _file_sha256(f))
        return h.hexdigest()

    def _load(self, builder: str, files: list[Path], **kwargs: Any) -> dict[Path, Any]:
        """Load `files` with one datasets builder call, one split per file, so every row is known to come from its
        file: documents are keyed by (file, row) and adding a file never moves the rows of the others."""
        if not files:
            return {}
        cache = cache_root(self.args) / "datasets"
        try:
            with _quiet_datasets():
                loaded = datasets.load_dataset(
                    builder,
                    data_files={f"file{i}": [str(f)] for i, f in enumerate(files)},
                    cache_dir=str(cache),
                    **kwargs,
                )
        except Exception as err:  # datasets raises many unrelated types; all of them mean the files are unreadable
            raise DataError(self._unreadable(builder, files, err)) from err
        return {files[i]: loaded[f"file{i}"] for i in range(len(files))}

    def _unreadable(self, builder: str, files: list[Path], err: Exception) -> str:
        """The one-line reason `files` could not be loaded. datasets only says that generation failed, with
        positions inside its own read chunks, so the files are examined again to name the bad one and where."""
        for f in files:
            if problem := _file_problem(f):
                return problem
        return f"could not read {builder} files under '{self.path}': {one_line(_root_cause(err))}"

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


# ---------------------------------------------------------------------------------------------------------------------
# Hub datasets


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
                hint = f"; no local path '{a.dataset}' exists either ({VALID_CHOICES})"
                raise DataError(f"could not load {self._where()}: {one_line(err)}{hint}") from err
            self._splits = (train, val)
        return self._splits

    def fingerprint(self) -> str:
        train, val = self._load()
        h = hashlib.sha256()
        update_hash(h, self.args.dataset.encode(), (self.args.dataset_config_name or "").encode())
        update_hash(h, self.args.text_column.encode())
        if self.args.streaming:
            # A stream has no content fingerprint without reading it, so pin the repository revision instead.
            update_hash(h, b"streaming", self._revision().encode())
        else:
            # datasets' own fingerprint of the prepared Arrow data (it changes when the downloaded files do).
            update_hash(h, train._fingerprint.encode(), (val._fingerprint if val is not None else "").encode())
        return h.hexdigest()

    def _revision(self) -> str:
        try:
            from huggingface_hub import HfApi

            return HfApi().dataset_info(self.args.dataset).sha or "unknown"
        except Exception as err:  # without a revision the cache still works, it just cannot see upstream changes
            logger.warning("could not look up the revision of %s (%s)", self._where(), one_line(err))
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


Source = _StdlibSource | _LocalSource | _HubSource


def resolve_source(args: DataArguments) -> Source:
    if args.dataset == "stdlib":
        return _StdlibSource(args)
    path = Path(args.dataset).expanduser()
    if path.exists():
        return _LocalSource(args, path)
    # Anything that is spelled like a file path cannot be a hub name (those are 'name' or 'owner/name').
    if path.suffix.lower() in EXTENSIONS or looks_like_path(args.dataset):
        raise DataError(f"dataset path '{args.dataset}' does not exist; {VALID_CHOICES}")
    return _HubSource(args)
