"""Batches: a 1-D token array cut into [batch, block_size] LongTensors, deterministically, resumably and sharded over
ranks (`TokenBatches` for training, `eval_batches` for a fixed evaluation set)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from train.data.arguments import DataError


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise DataError(f"{name} must be > 0, got {value}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, {world_size}), got {rank}")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> torch.Tensor:
    index = starts[:, None] + np.arange(block_size)  # [windows, block_size]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


class TokenBatches:
    """Deterministic, resumable source of [batch_size, block_size] LongTensor batches from a 1-D token array.

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
