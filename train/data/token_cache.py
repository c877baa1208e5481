"""The token cache: a source's documents, tokenized once into raw token files that every run memory-maps.

`prepare_data` fingerprints the source and looks for `cache_dir/<name>-<key>/`, which holds train.bin and val.bin
(every document's ids followed by eos, as uint16 or uint32), meta.json and, for a trained tokenizer, tokenizer/.
On a miss it writes the split documents to a spool file in a staging directory, trains (or loads) the tokenizer,
tokenizes both splits and publishes the directory with one atomic rename.

An entry is checked on every load: meta.json must match the file sizes, each token file must match the checksum
recorded when it was built, and every id must lie inside the tokenizer's vocabulary. An entry that fails is rebuilt,
with one warning line saying why. Entries written before checksums existed are checked structurally once (ids inside
the vocabulary, one eos per recorded document, eos last), and their checksums are then recorded in meta.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import socket
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from train.arguments import DataArguments
from train.atomic_io import write_json
from train.data.arguments import DataError, cache_root, one_line
from train.data.sources import Source, resolve_source
from train.data.tokenizer import (
    BPE_MAX_TRAIN_BYTES,
    BPE_RECIPE,
    bpe_training_sample,
    load_tokenizer,
    token_dtype,
    tokenize_to_file,
    tokenizer_identity,
    train_bpe_tokenizer,
)

logger = logging.getLogger(__name__)

# Bump when document splitting/chunking or the cache layout changes, so old caches are never reused by mistake.
CACHE_VERSION = 1
# The content checksum of a token file. xxh3 reads about 30x faster than blake2b (scripts/bench_token_cache.py), so
# checking a multi-GB entry on every load costs a fraction of a second; it guards against corruption, not attackers.
CHECKSUM = "xxh3_128"
SPLITS = ("train", "val")
# What loading an entry reads from its meta.json (the rest describes the entry for data_info.json).
_META_KEYS = frozenset(
    {"dtype", "vocab_size", "tokenizer_trained", *(f"{s}_{what}" for s in SPLITS for what in ("tokens", "documents"))}
)
# Texts handed to one `encode_batch` call: large enough for the Rust side to parallelize, small enough for memory.
_ENCODE_BATCH_BYTES = 4 * 2**20
# Tokens read per step when scanning a token file: large enough to amortize the Python loop, small for the cache.
SCAN_TOKENS = 2**22


@dataclass
class PreparedData:
    train: np.ndarray  # 1-D memory-mapped token ids, every document followed by eos
    val: np.ndarray  # same for the validation split (empty when validation_split_percentage is 0)
    tokenizer: PreTrainedTokenizerBase  # a PreTrainedTokenizerFast unless --tokenizer names a slow-only one
    info: dict[str, Any]  # JSON-serializable description of the data and where it is cached


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
# Integrity


@dataclass(frozen=True)
class TokenScan:
    checksum: str  # CHECKSUM of the file's bytes, as hex
    max_id: int  # the largest id (-1 for an empty file)
    first_invalid: int | None  # position of the first id >= the vocabulary size, if any
    eos_count: int | None = None  # eos tokens in the file (only when asked: it costs a second pass over each chunk)
    last: int | None = None  # the file's last token (None for an empty file)


def scan_tokens(path: Path, dtype: np.dtype, vocab_size: int, eos_id: int | None = None) -> TokenScan:
    """Read a token file once: its checksum, its largest id and where the first id outside the vocabulary is, and with
    `eos_id` how many eos tokens it holds."""
    h = xxhash.xxh3_128()
    count = path.stat().st_size // dtype.itemsize
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.empty(0, dtype=dtype)
    max_id, first_invalid, eos_count = -1, None, 0
    for start in range(0, count, SCAN_TOKENS):
        chunk = tokens[start : start + SCAN_TOKENS]
        h.update(chunk)
        top = int(chunk.max())
        max_id = max(max_id, top)
        if top >= vocab_size and first_invalid is None:
            first_invalid = start + int(np.argmax(chunk >= vocab_size))
        if eos_id is not None:
            eos_count += int(np.count_nonzero(chunk == eos_id))
    return TokenScan(
        checksum=h.hexdigest(),
        max_id=max_id,
        first_invalid=first_invalid,
        eos_count=eos_count if eos_id is not None else None,
        last=int(tokens[-1]) if count else None,
    )


class CorruptEntry(Exception):
    """A cache entry that failed a check; the message says which file and how, and fits after 'entry <path>: '."""


def _invalid_ids(name: str, scan: TokenScan, vocab_size: int) -> str:
    return (
        f"{name} holds token id {scan.max_id} (the first out-of-range one at position {scan.first_invalid}) but the "
        f"vocabulary has {vocab_size} tokens"
    )


def _check_structure(name: str, scan: TokenScan, documents: int, eos_id: int, exact: bool) -> None:
    """What can be checked without a checksum: every document ends with eos, and (`exact`) nothing else is eos. A
    zeroed file fails it whatever the eos id: it is all eos when that is 0, and has none otherwise."""
    assert scan.eos_count is not None
    if scan.last is not None and scan.last != eos_id:
        raise CorruptEntry(f"{name} does not end with the end-of-document token")
    if scan.eos_count != documents and (exact or scan.eos_count < documents):
        raise CorruptEntry(
            f"{name} holds {scan.eos_count} end-of-document tokens but meta.json records {documents} documents"
        )


def _check_tokens(final: Path, meta: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, str] | None:
    """Check the entry's token files, raising CorruptEntry at the first problem. For an entry that predates checksums
    the files are checked structurally instead, and the checksums to record are returned (else None)."""
    vocab_size = len(tokenizer)
    dtype = np.dtype(meta["dtype"])
    if dtype != token_dtype(vocab_size):
        raise CorruptEntry(
            f"meta.json records dtype {dtype}, but a {vocab_size}-token vocabulary is stored as "
            f"{token_dtype(vocab_size)}"
        )
    recorded = meta.get("checksums")
    recorded = recorded if isinstance(recorded, dict) else {}
    legacy = recorded.get("algorithm") != CHECKSUM
    found: dict[str, str] = {"algorithm": CHECKSUM}
    for split in SPLITS:
        name = f"{split}.bin"
        scan = scan_tokens(final / name, dtype, vocab_size, tokenizer.eos_token_id if legacy else None)
        if not legacy and scan.checksum != recorded.get(name):
            also = f" and {_invalid_ids(name, scan, vocab_size)}" if scan.first_invalid is not None else ""
            raise CorruptEntry(f"{name} does not match the checksum recorded when it was built{also}")
        if scan.first_invalid is not None:
            raise CorruptEntry(_invalid_ids(name, scan, vocab_size))
        if legacy:
            # A slow (Python) tokenizer may turn corpus text that spells the eos token into eos, so count exactly only
            # for fast ones, which were told to encode special tokens as text.
            _check_structure(name, scan, meta[f"{split}_documents"], tokenizer.eos_token_id, exact=tokenizer.is_fast)
        found[name] = scan.checksum
    return found if legacy else None


def _entry_tokenizer(
    final: Path, meta: dict[str, Any], loaded: PreTrainedTokenizerBase | None
) -> PreTrainedTokenizerBase:
    tokenizer = loaded
    if tokenizer is None:
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(final / "tokenizer"))
        except Exception as err:  # a damaged tokenizer.json raises anything from OSError to a Rust panic's message
            raise CorruptEntry(f"its tokenizer cannot be loaded ({one_line(err)})") from err
    if len(tokenizer) != meta["vocab_size"]:
        raise CorruptEntry(f"its tokenizer has {len(tokenizer)} tokens but meta.json records {meta['vocab_size']}")
    return tokenizer


def _record_checksums(final: Path, meta: dict[str, Any], checksums: dict[str, str]) -> dict[str, Any]:
    meta = {**meta, "checksums": checksums}
    try:
        write_json(final / "meta.json", meta)
    except OSError as err:  # a read-only shared cache: usable, just checked structurally on every load
        logger.warning(
            "token cache entry %s was written without checksums; its token ids and document ends check out, but "
            "checksums cannot be recorded in its meta.json (%s), so this check repeats on every load",
            final,
            one_line(err),
        )
        return meta
    logger.warning(
        "token cache entry %s was written without checksums; its token ids and document ends check out, so their "
        "checksums are now recorded in its meta.json",
        final,
    )
    return meta


def _open_entry(final: Path, loaded: PreTrainedTokenizerBase | None) -> tuple[dict[str, Any], PreTrainedTokenizerBase]:
    """(meta, tokenizer) of a checked entry; raises CorruptEntry when it fails a check."""
    meta = read_meta(final)
    if meta is None:
        raise CorruptEntry("it is incomplete (an interrupted build?) or its files do not match meta.json")
    tokenizer = _entry_tokenizer(final, meta, loaded)
    checksums = _check_tokens(final, meta, tokenizer)
    if checksums is not None:
        meta = _record_checksums(final, meta, checksums)
    return meta, tokenizer


def _is_main_process() -> bool:
    """Rank 0 of a distributed job (accelerate sets up torch.distributed before prepare_data runs), or a lone
    process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _discard_corrupt(final: Path, reason: str) -> None:
    """Remove an entry that failed a check, so that it can be rebuilt; or refuse in one line where that is unsafe."""
    if not _is_main_process():
        # The main process checked (and if need be rebuilt) this entry moments ago, and other ranks may be reading
        # it now: removing it here would pull it from under them.
        raise DataError(
            f"token cache entry {final}: {reason}, although the main process checked it moments ago; something is "
            "changing it, or this node has its own copy: delete the entry and rerun"
        )
    logger.warning("token cache entry %s: %s; rebuilding it", final, reason)
    try:
        shutil.rmtree(final)
    except OSError as err:
        raise DataError(
            f"token cache entry {final}: {reason}, and it cannot be removed to rebuild it ({one_line(err)}); delete "
            "it by hand or pass another --cache_dir"
        ) from err


# ---------------------------------------------------------------------------------------------------------------------
# Entry files


def read_meta(directory: Path) -> dict[str, Any] | None:
    """The entry's meta.json if the entry is complete and its file sizes match it, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if not _META_KEYS <= meta.keys():
            return None
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in SPLITS:
            if (directory / f"{split}.bin").stat().st_size != meta[f"{split}_tokens"] * itemsize:
                return None
        if meta["tokenizer_trained"] and not (directory / "tokenizer").is_dir():
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # AttributeError: JSON that is not an object
        return None


def staging_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def _remove_dead_staging(final: Path) -> None:
    """Delete staging directories that killed builds of this entry on this host left behind."""
    host = socket.gethostname()
    for stale in final.parent.glob(staging_prefix(final) + "*"):
        try:
            stale_host, pid, _ = stale.name[len(staging_prefix(final)) :].rsplit("-", 2)
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


# ---------------------------------------------------------------------------------------------------------------------
# Building an entry


def _spool_documents(source: Source, args: DataArguments, staging: Path) -> _Spool:
    """Every document of `source`, split and written to a spool in `staging`; at least one in each split in use."""
    spool = _Spool(staging)
    try:
        for is_val, text in source.documents():
            spool.add(text, is_val)
    finally:
        spool.close()
    train_docs, _ = spool.stats(val=False)
    val_docs, _ = spool.stats(val=True)
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
    return spool


def _tokenize_splits(tokenizer: PreTrainedTokenizerBase, spool: _Spool, staging: Path) -> dict[str, Any]:
    """Tokenize both splits into staging/<split>.bin: their token counts, dtype and checksums for meta.json."""
    dtype = token_dtype(len(tokenizer))
    counts: dict[str, Any] = {}
    checksums = {"algorithm": CHECKSUM}
    for split in SPLITS:
        path = staging / f"{split}.bin"
        counts[f"{split}_tokens"] = tokenize_to_file(tokenizer, spool.batches(val=split == "val"), path, dtype)
        checksums[path.name] = scan_tokens(path, dtype, len(tokenizer)).checksum
    return {**counts, "dtype": dtype.name, "checksums": checksums}


def _build(
    source: Source,
    args: DataArguments,
    vocab_size: int,
    loaded: PreTrainedTokenizerBase | None,
    base_meta: dict[str, Any],
    final: Path,
) -> None:
    """Build the cache entry in a staging directory next to `final`, then publish it with one atomic rename."""
    _remove_dead_staging(final)
    staging = Path(
        tempfile.mkdtemp(prefix=f"{staging_prefix(final)}{socket.gethostname()}-{os.getpid()}-", dir=final.parent)
    )
    try:
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        spool = _spool_documents(source, args, staging)
        (train_docs, train_bytes), (val_docs, val_bytes) = spool.stats(val=False), spool.stats(val=True)
        seconds["read"] = time.perf_counter() - t0
        logger.info("read %d train / %d val documents (%d / %d bytes)", train_docs, val_docs, train_bytes, val_bytes)

        tokenizer = loaded
        if tokenizer is None:
            t0 = time.perf_counter()
            keep = bpe_training_sample(train_bytes)
            tokenizer = train_bpe_tokenizer(spool.batches(val=False, keep=keep), vocab_size)
            tokenizer.save_pretrained(staging / "tokenizer")
            seconds["train_tokenizer"] = time.perf_counter() - t0
            logger.info("trained a %d-token BPE in %.1f s", len(tokenizer), seconds["train_tokenizer"])

        t0 = time.perf_counter()
        tokens = _tokenize_splits(tokenizer, spool, staging)
        seconds["tokenize"] = time.perf_counter() - t0
        logger.info(
            "tokenized %d train / %d val tokens in %.1f s",
            tokens["train_tokens"],
            tokens["val_tokens"],
            seconds["tokenize"],
        )
        spool.path.unlink()
        meta = {
            **base_meta,
            "train_documents": train_docs,
            "val_documents": val_docs,
            "train_bytes": train_bytes,
            "val_bytes": val_bytes,
            "train_tokens": tokens["train_tokens"],
            "val_tokens": tokens["val_tokens"],
            "vocab_size": len(tokenizer),
            "dtype": tokens["dtype"],
            "build_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "checksums": tokens["checksums"],
        }
        write_json(staging / "meta.json", meta)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, final: Path) -> None:
    try:
        os.replace(staging, final)
    except OSError:
        # `final` exists and is not empty: a concurrent build of the same key (another node, or an unrelated run)
        # published first. Its content is equivalent, so use it and drop ours.
        if read_meta(final) is None:
            raise


# ---------------------------------------------------------------------------------------------------------------------
# prepare_data


def _validate(args: DataArguments, vocab_size: int) -> None:
    if not 0 <= args.validation_split_percentage < 100:
        raise DataError(f"validation_split_percentage must be in [0, 100), got {args.validation_split_percentage}")
    if args.block_size <= 0:
        raise DataError(f"block_size must be > 0, got {args.block_size}")
    if args.max_train_bytes is not None and args.max_train_bytes <= 0:
        raise DataError(f"max_train_bytes must be > 0 or unset, got {args.max_train_bytes}")
    if args.tokenizer is None and not 256 + 1 <= vocab_size <= 2**32:
        raise DataError(f"vocab_size must be in [257, 2**32] for a byte-level BPE (256 bytes + eos), got {vocab_size}")


def cache_key_fields(
    args: DataArguments, fingerprint: str, loaded: PreTrainedTokenizerBase | None, vocab_size: int
) -> dict[str, Any]:
    """What identifies a cache entry. Changing any of it (or how it is hashed) invalidates every existing cache."""
    if loaded is None:
        tokenizer_id: dict[str, Any] = {
            "recipe": BPE_RECIPE,
            "vocab_size": vocab_size,
            "bpe_max_train_bytes": BPE_MAX_TRAIN_BYTES,
        }
    else:
        tokenizer_id = {"sha256": tokenizer_identity(loaded)}
    return {
        "cache_version": CACHE_VERSION,
        "dataset_fingerprint": fingerprint,
        "tokenizer": tokenizer_id,
        # float(): a YAML config may give 5 where the CLI gives 5.0, and both must find the same entry.
        "validation_split_percentage": float(args.validation_split_percentage),
        "max_train_bytes": args.max_train_bytes,
    }


def _base_meta(
    args: DataArguments, source: Source, fingerprint: str, trained: bool, key_fields: dict[str, Any]
) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "source": source.kind,
        **source.describe(),
        "fingerprint": fingerprint,
        "validation_split_percentage": args.validation_split_percentage,
        "max_train_bytes": args.max_train_bytes,
        "text_column": args.text_column,
        "tokenizer_source": f"trained:{BPE_RECIPE}" if trained else args.tokenizer,
        "tokenizer_trained": trained,
        "cache_key": key_fields,
    }


def _open_or_build(
    source: Source, args: DataArguments, vocab_size: int, loaded: PreTrainedTokenizerBase | None
) -> tuple[dict[str, Any], PreTrainedTokenizerBase, Path, bool]:
    """(meta, tokenizer, entry, cache_hit) for a checked entry, built first when missing or corrupt."""
    fingerprint = source.fingerprint()
    key_fields = cache_key_fields(args, fingerprint, loaded, vocab_size)
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root(args)
    final = root / f"{source.name}-{key}"
    if final.exists():
        try:
            meta, tokenizer = _open_entry(final, loaded)
            return meta, tokenizer, final, True
        except CorruptEntry as err:
            _discard_corrupt(final, str(err))
    root.mkdir(parents=True, exist_ok=True)
    _build(source, args, vocab_size, loaded, _base_meta(args, source, fingerprint, loaded is None, key_fields), final)
    try:
        meta, tokenizer = _open_entry(final, loaded)
        return meta, tokenizer, final, False
    except CorruptEntry as err:
        raise DataError(
            f"token cache entry {final}: {err}, right after it was built; its disk may be failing: pass another "
            "--cache_dir"
        ) from None


def prepare_data(
    args: DataArguments, vocab_size: int, main_process_first: Callable[[], AbstractContextManager[Any]]
) -> PreparedData:
    """Tokenizer and memory-mapped train/val token arrays for `args`, built once, cached, and checked on every load.

    `main_process_first` (e.g. `accelerator.main_process_first`) lets the main process check and, if need be, build
    or rebuild the cache entry while the other ranks wait; they then find the finished entry and check it too, but
    never remove one. `vocab_size` is used only when training a BPE.
    """
    _validate(args, vocab_size)
    source = resolve_source(args)
    if args.streaming and source.kind != "hub":
        raise DataError(f"--streaming applies only to hub datasets, not '{args.dataset}'")
    if args.streaming and args.max_train_bytes is None:
        raise DataError("--streaming needs --max_train_bytes, the amount of text to take from the stream")
    with main_process_first():
        loaded = load_tokenizer(args.tokenizer) if args.tokenizer is not None else None
        meta, tokenizer, final, cache_hit = _open_or_build(source, args, vocab_size, loaded)
    dtype = np.dtype(meta["dtype"])
    return PreparedData(
        train=_memmap(final / "train.bin", dtype, meta["train_tokens"]),
        val=_memmap(final / "val.bin", dtype, meta["val_tokens"]),
        tokenizer=tokenizer,
        info={**meta, "cache_path": str(final), "cache_hit": cache_hit},
    )
