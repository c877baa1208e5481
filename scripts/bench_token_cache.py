"""What checking the token cache on load costs: checksum candidates and the id check on a 1 GB token file.

    python scripts/bench_token_cache.py                 # 1 GB of uint16 ids, 3 repeats
    python scripts/bench_token_cache.py --gigabytes 4 --repeats 5

Writes a file of random uint16 token ids to a temporary directory (removed at the end), then times, on the same
file in the same run: reading it alone (the floor), each hash alone (xxh3_128, which the cache uses, xxh64, blake2b,
sha256), the id check alone, and `scan_tokens` itself, i.e. what every load does (checksum + id check in one pass)
and what the one-time check of an entry written before checksums does (plus counting eos). Every figure is the
median of --repeats passes over a file in the page cache, as on a load soon after a build; the last row evicts the
file from the page cache first (posix_fadvise, this file only), as on the first load after a reboot.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash

from train.data.token_cache import SCAN_TOKENS, scan_tokens

DTYPE = np.dtype(np.uint16)


def write_tokens(path: Path, n_bytes: int, vocab_size: int) -> None:
    rng = np.random.default_rng(0)
    chunk = 64 * 2**20 // DTYPE.itemsize
    with open(path, "wb") as f:
        for start in range(0, n_bytes // DTYPE.itemsize, chunk):
            count = min(chunk, n_bytes // DTYPE.itemsize - start)
            rng.integers(0, vocab_size, count, dtype=DTYPE).tofile(f)
        f.flush()
        os.fsync(f.fileno())


def chunks(path: Path) -> Callable[[Callable[[np.ndarray], object]], None]:
    """Apply a function to the file's tokens chunk by chunk, the way scan_tokens walks it."""
    tokens = np.memmap(path, dtype=DTYPE, mode="r")

    def each(fn: Callable[[np.ndarray], object]) -> None:
        for start in range(0, len(tokens), SCAN_TOKENS):
            fn(tokens[start : start + SCAN_TOKENS])

    return each


def hashing(path: Path, make: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        h = make()
        chunks(path)(h.update)  # type: ignore[attr-defined]
        h.hexdigest()  # type: ignore[attr-defined]

    return run


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn: Callable[[], None], repeats: int, cold_path: Path | None = None) -> float:
    seconds = []
    for _ in range(repeats):
        if cold_path is not None:
            evict(cold_path)
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the token file (GB, 10**9 bytes)")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n_bytes = int(args.gigabytes * 1e9) // DTYPE.itemsize * DTYPE.itemsize
    with tempfile.TemporaryDirectory(prefix="bench_token_cache-") as tmp:
        path = Path(tmp) / "train.bin"
        write_tokens(path, n_bytes, args.vocab_size)
        cases: list[tuple[str, Callable[[], None], bool]] = [
            ("touch every page (floor)", lambda: chunks(path)(lambda c: c[::2048].sum()), False),
            ("xxh3_128 (the cache's checksum)", hashing(path, xxhash.xxh3_128), False),
            ("xxh64", hashing(path, xxhash.xxh64), False),
            ("blake2b", hashing(path, hashlib.blake2b), False),
            ("sha256", hashing(path, hashlib.sha256), False),
            ("id check alone (max)", lambda: chunks(path)(np.ndarray.max), False),
            ("scan_tokens: every load", lambda: scan_tokens(path, DTYPE, args.vocab_size), False),
            ("scan_tokens: entry without checksums", lambda: scan_tokens(path, DTYPE, args.vocab_size, 0), False),
            ("scan_tokens: every load, cold page cache", lambda: scan_tokens(path, DTYPE, args.vocab_size), True),
        ]
        results = {name: timed(fn, args.repeats, path if cold else None) for name, fn, cold in cases}
    gb = n_bytes / 1e9
    blake = results["blake2b"]
    print(f"token file: {gb:.2f} GB of uint16 ids (vocab {args.vocab_size}), median of {args.repeats} passes")
    print(f"{'':42s} {'seconds':>8s} {'GB/s':>7s} {'vs blake2b':>11s}")
    for name, seconds in results.items():
        print(f"{name:42s} {seconds:8.3f} {gb / seconds:7.2f} {blake / seconds:10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
