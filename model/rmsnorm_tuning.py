"""Launch configurations of the fused RMSNorm kernels: the space each kernel may run in, the choice within it by
measurement, and the record of every choice a process made.

A configuration is a tile shape (``block_n`` columns by ``rows`` rows), the warps that process one tile, the
software-pipeline depth of the kernel's loops, and for the persistent backward the number of programs per SM. The
space is a small product of those axes, pruned by rules with a reason each (see ``forward_space`` and
``backward_space``); every configuration in it compiles for sm_90 without register spills
(``scripts/check_kernel_registers.py`` checks that, and docs/benchmarks.md has the table).

Which configuration runs for a given kernel, device, row width, row count (rounded up to a power of two) and
dtypes is decided once per process, in this order:

1. pinned: ``Tuner.pin(record)`` (``pin_kernel_choices`` in rmsnorm_triton.py) with a record of an earlier run,
   so a resumed run computes exactly what the uninterrupted one would have (the configuration decides the order
   of the row reductions and of dW's summation);
2. this process's earlier choice for the same key;
3. the persistent cache file (``cache_path()``), written by an earlier measurement on this kind of device;
4. measurement: every configuration of the space is timed on scratch tensors of the real shape (CUDA only, for
   problems of at least ``MEASURE_MIN_ELEMENTS`` elements, not while a CUDA graph is being captured, and not
   when ``NORMGPT_RMSNORM_AUTOTUNE=0``); the fastest is used and written to the cache file (if the scratch
   tensors do not fit in memory, nothing is measured);
5. otherwise the space's first configuration, a reasonable default (the Triton interpreter always takes it or a
   pinned one).

``choices()`` returns what was used, with where each choice came from, for the run's record.

This file is copied next to saved checkpoints as remote code: it imports only the standard library and torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

# ----------------------------------------------------------------------------------------------------------------
# The space
# ----------------------------------------------------------------------------------------------------------------

VECTOR_BYTES = 16  # one 128-bit load or store per thread: the widest the hardware issues
FWD_WARPS = (2, 4, 8, 16, 32)
BWD_WARPS = (4, 8, 16, 32)  # heavier reductions per tile; one warp only for rows shorter than a warp's vectors
MAX_ROWS = 128  # rows per tile; more buys nothing once a tile holds thousands of elements
# The backward packs several rows into a tile only up to this many bytes per tensor (a single row may be longer):
# beyond it, more rows per tile only trade programs per SM for registers.
BWD_MAX_TILE_BYTES = 8192
# Elements per thread per tensor, in 16-byte vectors. The forward keeps one tensor live per element, the backward
# three (x, dy and the dW accumulator), so the backward stops at two vectors where the forward goes to four.
FWD_VECTORS_PER_THREAD = (1, 2, 4)
BWD_VECTORS_PER_THREAD = (1, 2)
# Longest row (after rounding up to a power of two) a single pass keeps in registers; longer rows run in chunks
# of FWD_CHUNK_N columns (forward) or BWD_CHUNK_BYTES (backward), two passes per row. Set from the register check:
# one step further spills.
FWD_MAX_FUSED_N = 16384
BWD_MAX_FUSED_N = 8192
FWD_CHUNK_N = 8192
BWD_CHUNK_BYTES = 8192  # 4096 bf16 or 2048 float32 elements: one vector per thread on 16 warps
# Pipeline depths. The forward's single pass has no loop to pipeline; its chunk loops and the backward's tile
# loop do (Triton turns the loads of the next iterations into cp.async copies into shared memory).
FWD_CHUNK_STAGES = (1, 2)
BWD_STAGES = (1, 2, 3)
BWD_CHUNK_STAGES = (1, 2)
# Resident warps per SM the persistent backward aims for, for one 16-byte vector per thread; programs per SM =
# this / (warps per program * vectors per thread). The backward needs about 64-80 registers per thread at one
# bf16 vector and up to 118 at two (scripts/check_kernel_registers.py), so an SM holds at most ~32 or ~16 of its
# warps.
BWD_RESIDENT_WARPS = (16, 32)
MAX_PROGRAMS_PER_SM = 16
SMEM_PER_SM = 200 * 1024  # of Hopper's 228 KiB, leaving room for the reductions' scratch


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One launch configuration. ``programs_per_sm`` is 0 for the forward, which runs one program per tile."""

    block_n: int
    rows: int
    num_warps: int
    num_stages: int = 1
    programs_per_sm: int = 0

    def elements_per_thread(self) -> int:
        return self.rows * self.block_n // (32 * self.num_warps)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> KernelConfig:
        """A config read from a file or a record; ValueError unless every field is a sane positive integer."""
        fields = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != fields:
            raise ValueError(f"a kernel configuration has exactly the fields {sorted(fields)}, got {data!r}")
        if not all(type(value) is int for value in data.values()):
            raise ValueError(f"kernel configuration fields must be integers, got {data!r}")
        config = cls(**data)
        powers = (config.block_n, config.rows, config.num_warps)
        if not all(_is_pow2(v) for v in powers) or config.num_warps > 32 or config.num_stages < 1:
            raise ValueError(f"not a valid kernel configuration: {data!r}")
        if config.programs_per_sm < 0 or config.programs_per_sm > MAX_PROGRAMS_PER_SM:
            raise ValueError(f"programs_per_sm must be in [0, {MAX_PROGRAMS_PER_SM}], got {data!r}")
        return config


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _tiles(block_n: int, n_rows: int, vector: int, warps_choices, vectors_per_thread, max_tile: int, allowed):
    """(rows, warps) pairs whose [rows, block_n] tile gives each thread exactly k 16-byte vectors per tensor, with
    at most MAX_ROWS rows, no more rows than the row count rounded up, at most max(block_n, max_tile) elements,
    and ``allowed(rows, warps, k)``. A row shorter than one warp's vectors falls back to one warp and as many rows
    as allowed; a long row that no allowed tile holds gets none (it runs in chunks)."""
    max_rows = min(MAX_ROWS, next_pow2(n_rows), max(1, max_tile // block_n))
    tiles = []
    for warps in warps_choices:
        for k in vectors_per_thread:
            tile = 32 * warps * k * vector
            if block_n <= tile <= max_rows * block_n and allowed(tile // block_n, warps, k):
                tiles.append((tile // block_n, warps))
    if not tiles and block_n < 32 * vector:
        tiles.append((max(1, min(max_rows, 32 * vector // block_n)), 1))
    return tiles


# Register rules, from scripts/check_kernel_registers.py (every configuration compiled for sm_90): 32 warps leave
# a thread 64 registers, which holds two vectors' worth of a row in a single pass over a width that is a multiple
# of 16 (16-byte loads), but spills in the chunk loops and where the width is not a multiple of 16 (then every
# element loads separately and needs its own address); the backward keeps about three float32 values per element
# live, so only single-row tiles take two vectors per thread, and tiles of several rows (whose reductions need
# more scratch) stay at 8 warps or fewer.
def _fwd_allowed(rows: int, warps: int, vectors: int) -> bool:
    return warps < 32 or vectors == 1


def _fwd_aligned_allowed(rows: int, warps: int, vectors: int) -> bool:
    return warps < 32 or vectors <= 2


def _bwd_allowed(rows: int, warps: int, vectors: int) -> bool:
    return rows == 1 or (vectors == 1 and warps <= 8)


def _bwd_chunk_allowed(rows: int, warps: int, vectors: int) -> bool:
    return vectors == 1 and warps <= 16  # 32 warps spill in the chunk loops (Triton 3.6, float32)


def _ordered(space: list[KernelConfig], prefer: KernelConfig) -> list[KernelConfig]:
    """The space with the default first: the configuration nearest (in log2 steps) to ``prefer``'s elements per
    thread, warps, stages and resident warps, ties broken by the fields, so the order is stable."""

    def distance(c: KernelConfig):
        resident = c.programs_per_sm * c.num_warps
        preferred_resident = prefer.programs_per_sm * prefer.num_warps
        return (
            abs(math.log2(max(c.elements_per_thread(), 1) / prefer.elements_per_thread())),
            abs(math.log2(c.num_warps / prefer.num_warps)),
            abs(c.num_stages - prefer.num_stages),
            abs(math.log2(max(resident, 1) / max(preferred_resident, 1))),
            dataclasses.astuple(c),
        )

    return sorted(dict.fromkeys(space), key=distance)


def forward_space(n_cols: int, n_rows: int, itemsize: int) -> list[KernelConfig]:
    """Configurations of the forward for rows of ``n_cols`` elements of ``itemsize`` bytes; the default first.

    Single pass (the row fits in registers): tiles of 1..MAX_ROWS rows whose threads hold 1, 2 or 4 full 16-byte
    vectors of each row element they touch, on 2..32 warps. Small rows are packed several to a tile so every
    thread still issues full-width loads; fewer warps per row means cheaper row reductions, more rows per tile
    fewer programs. Chunked rows: one row per tile, the warps that give 1..4 vectors per thread, chunk loops with
    and without pipelining.
    """
    vector = max(1, VECTOR_BYTES // itemsize)
    block_n = next_pow2(n_cols)
    if block_n <= FWD_MAX_FUSED_N:
        allowed = _fwd_aligned_allowed if n_cols % 16 == 0 else _fwd_allowed
        tiles = _tiles(block_n, n_rows, vector, FWD_WARPS, FWD_VECTORS_PER_THREAD, MAX_ROWS * block_n, allowed)
        space = [KernelConfig(block_n, rows, warps) for rows, warps in tiles]
        if space:  # else the row is too long for any tile the register rules allow (float32 at 16384)
            return _ordered(space, KernelConfig(block_n=32 * 4 * 2 * vector, rows=1, num_warps=4))
    chunk = FWD_CHUNK_N
    space = [
        KernelConfig(chunk, 1, warps, stages)
        for rows, warps in _tiles(chunk, 1, vector, FWD_WARPS, FWD_VECTORS_PER_THREAD, chunk, _fwd_allowed)
        for stages in FWD_CHUNK_STAGES
    ]
    return _ordered(space, KernelConfig(chunk, 1, max(1, chunk // (32 * 2 * vector)), 2))


def _bwd_smem(config: KernelConfig, itemsize: int, has_dres: bool) -> int:
    """Shared memory of the pipeline: (stages - 1) buffered tiles of x, dy (and the residual gradient)."""
    return (config.num_stages - 1) * config.rows * config.block_n * itemsize * (3 if has_dres else 2)


def backward_space(n_cols: int, n_rows: int, itemsize: int, has_dres: bool) -> list[KernelConfig]:
    """Configurations of the persistent backward; the default first.

    Tiles as in the forward but at most two 16-byte vectors per thread (three live tensors per element) and 8 KB
    per tensor, on 4..32 warps; 1..3 pipeline stages (1 = plain loads; with 3 the loads of the next tile are in
    flight while this one reduces); programs per SM for 16 or 32 resident warps at one vector per thread, half as
    many at two (registers). Pruned where the pipeline buffers of an SM's programs would not fit its shared memory.
    """
    vector = max(1, VECTOR_BYTES // itemsize)
    block_n = next_pow2(n_cols)
    max_tile = BWD_MAX_TILE_BYTES // itemsize
    tiles = _tiles(block_n, n_rows, vector, BWD_WARPS, BWD_VECTORS_PER_THREAD, max_tile, _bwd_allowed)
    stages_choices = BWD_STAGES
    if block_n > BWD_MAX_FUSED_N or not tiles:
        block_n = BWD_CHUNK_BYTES // itemsize
        tiles = _tiles(block_n, 1, vector, BWD_WARPS, BWD_VECTORS_PER_THREAD, block_n, _bwd_chunk_allowed)
        stages_choices = BWD_CHUNK_STAGES
    space = []
    for rows, warps in tiles:
        vectors = max(1, rows * block_n // (32 * warps * vector))
        for stages in stages_choices:
            for resident in BWD_RESIDENT_WARPS:
                per_sm = min(MAX_PROGRAMS_PER_SM, max(1, resident // (warps * vectors)))
                config = KernelConfig(block_n, rows, warps, stages, per_sm)
                if per_sm * _bwd_smem(config, itemsize, has_dres) <= SMEM_PER_SM:
                    space.append(config)
    prefer = KernelConfig(block_n=32 * 4 * vector, rows=1, num_warps=4, num_stages=2, programs_per_sm=8)
    return _ordered(space, prefer)


# ----------------------------------------------------------------------------------------------------------------
# Choosing, remembering, recording
# ----------------------------------------------------------------------------------------------------------------

MEASURE_MIN_ELEMENTS = 1 << 20  # below ~2 MB a call is launch-bound: any configuration of the space will do


def key_name(key: tuple) -> str:
    """The stable text of a tuning key (kernel, device, n_cols, row bucket, dtypes...) used in files and records."""
    kernel, device, n_cols, rows_bucket, *dtypes = key
    names = ",".join(str(d).removeprefix("torch.") for d in dtypes)
    return f"{kernel}|{device}|N={n_cols}|M<={rows_bucket}|{names}"


def cache_path() -> Path:
    """The persistent cache of measured choices: $NORMGPT_CACHE_DIR, else $XDG_CACHE_HOME/normgpt, else
    ~/.cache/normgpt; the file is rmsnorm_tuning.json."""
    root = os.environ.get("NORMGPT_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "normgpt")
    return Path(root) / "rmsnorm_tuning.json"


def measuring_enabled() -> bool:
    return os.environ.get("NORMGPT_RMSNORM_AUTOTUNE", "1") != "0"


def kernels_version() -> str:
    """Hash of the kernels' source: a cached choice is only reused for the kernels it was measured with."""
    source = Path(__file__).with_name("rmsnorm_kernels.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:16]


@dataclasses.dataclass
class Choice:
    config: KernelConfig
    source: str  # "pinned", "cache", "measured" or "default"
    timings_ms: dict[str, float] | None = None  # per configuration, when measured


class Tuner:
    """The per-process table of choices (see the module docstring for the order in which they are made)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace  # triton and kernel versions: the cache file's section this process reads
        self._chosen: dict[tuple, Choice] = {}
        self._pinned: dict[str, KernelConfig] = {}
        self._disk: dict[str, dict] | None = None  # the cache file's section, read once

    def choose(
        self,
        key: tuple,
        space: Callable[[], list[KernelConfig]],
        measure: Callable[[KernelConfig], float] | None,
    ) -> KernelConfig:
        """The configuration for ``key``. ``space`` builds the candidates (only on a first use of the key);
        ``measure`` times one configuration in ms, or is None where measuring is impossible."""
        choice = self._chosen.get(key)
        if choice is None:
            choice = self._chosen[key] = self._decide(key, space(), measure)
        return choice.config

    def _decide(self, key: tuple, space: list[KernelConfig], measure) -> Choice:
        name = key_name(key)
        if name in self._pinned:
            return Choice(self._pinned[name], "pinned")
        cached = self._read_disk().get(name)
        if cached is not None:
            try:
                config = KernelConfig.from_dict(cached)
            except ValueError:
                config = None
            if config in space:
                return Choice(config, "cache")
        if measure is not None and len(space) > 1:
            try:
                timings = {config: measure(config) for config in space}
            except torch.cuda.OutOfMemoryError:  # scratch tensors of the shape did not fit next to the model
                timings = {config: math.inf for config in space}
            best = min(space, key=lambda c: timings[c])  # ties: the earlier, i.e. nearer the default
            if math.isfinite(timings[best]):
                self._write_disk(name, best)
                return Choice(best, "measured", {json.dumps(c.as_dict()): t for c, t in timings.items()})
        return Choice(space[0], "default")

    # -- the record --------------------------------------------------------------------------------------------

    def choices(self, timings: bool = False) -> dict:
        """Every choice this process made: {"namespace": ..., "choices": {key name: {config, source}}}."""
        entries = {}
        for key, choice in self._chosen.items():
            entry = {"config": choice.config.as_dict(), "source": choice.source}
            if timings and choice.timings_ms:
                entry["timings_ms"] = choice.timings_ms
            entries[key_name(key)] = entry
        return {"namespace": self.namespace, "choices": dict(sorted(entries.items()))}

    def pin(self, record: dict) -> None:
        """Use the configurations of ``record`` (a ``choices()`` result, e.g. from a run being resumed) for their
        keys from now on. ValueError for a malformed record; nothing is pinned then."""
        entries = record.get("choices") if isinstance(record, dict) else None
        if not isinstance(entries, dict):
            raise ValueError("a kernel tuning record is a mapping with a 'choices' mapping")
        pinned = {}
        for name, entry in entries.items():
            if not isinstance(entry, dict) or "config" not in entry:
                raise ValueError(f"kernel tuning record entry {name!r} has no 'config'")
            pinned[str(name)] = KernelConfig.from_dict(entry["config"])
        self._pinned.update(pinned)
        for key in [key for key in self._chosen if key_name(key) in pinned]:
            del self._chosen[key]  # the next call takes the pinned configuration

    def reset(self) -> None:
        """Forget pins and choices (tests, benchmarks); the cache file is kept."""
        self._chosen.clear()
        self._pinned.clear()
        self._disk = None

    # -- the cache file ----------------------------------------------------------------------------------------

    def _read_disk(self) -> dict:
        if self._disk is None:
            self._disk = _read_cache_file(cache_path()).get(self.namespace, {})
        return self._disk

    def _write_disk(self, name: str, config: KernelConfig) -> None:
        self._read_disk()[name] = config.as_dict()
        path = cache_path()
        try:
            content = _read_cache_file(path)  # merge with what other processes wrote meanwhile
            content.setdefault(self.namespace, {})[name] = config.as_dict()
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".rmsnorm_tuning.", delete=False) as tmp:
                json.dump(content, tmp, indent=1, sort_keys=True)
            os.replace(tmp.name, path)  # atomic: a reader sees the old file or the new one, never half of one
        except OSError as error:
            warnings.warn(f"could not save the RMSNorm kernel tuning cache {path}: {error}", stacklevel=2)


def _read_cache_file(path: Path) -> dict:
    """The cache file's content, or {} when it is missing or not a JSON object of objects (it is rewritten then)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict):
        return {}
    return {ns: section for ns, section in content.items() if isinstance(section, dict)}


def measure_with(run: Callable[[], None]) -> float:
    """Median time of ``run`` in ms (triton's do_bench: warm-up, L2 flushed before each run); inf if it fails to
    compile for this device (too much shared memory, too many registers)."""
    try:
        from triton.testing import do_bench
    except ImportError:  # only asked for on CUDA with triton installed; a try block keeps triton optional for
        return math.inf  # transformers' check of remote code's imports

    try:
        return float(do_bench(run, warmup=5, rep=25, return_mode="median"))
    except Exception as error:  # noqa: BLE001 - triton raises several unrelated types for "does not fit"
        if "out of resource" in str(error).lower() or type(error).__name__ in ("OutOfResources", "PTXASError"):
            return math.inf
        raise


def can_measure(device: torch.device) -> bool:
    """Measuring needs a real GPU, and may not launch anything while a CUDA graph is being captured."""
    if device.type != "cuda" or not measuring_enabled() or not torch.cuda.is_available():
        return False
    return not torch.cuda.is_current_stream_capturing()
