"""Tokenizers: training the default byte-level BPE, loading an existing one, its identity (part of the cache key),
and tokenizing documents into a raw token file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from train.data.arguments import DataError, looks_like_path, one_line
from train.data.sources import unit_hash, update_hash

EOS_TOKEN = "<|endoftext|>"
# Identifies how the default tokenizer is trained; part of the cache key, bump when the recipe changes.
BPE_RECIPE = "bytelevel-bpe-v1"
# The BPE trainer keeps every distinct pre-token in memory, so huge corpora train it on a hashed sample of this size
# (all of the text is still tokenized). The whole stdlib (~12 MB) is far below it.
BPE_MAX_TRAIN_BYTES = 512 * 2**20
# Files of which a saved tokenizer folder (save_pretrained) holds at least one.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


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


def bpe_training_sample(train_bytes: int) -> Callable[[int], bool] | None:
    """Which training documents (by index) the BPE trainer sees: all of them (None) up to BPE_MAX_TRAIN_BYTES, else a
    deterministic hashed sample of about that size."""
    if train_bytes <= BPE_MAX_TRAIN_BYTES:
        return None
    fraction = BPE_MAX_TRAIN_BYTES / train_bytes
    return lambda i: unit_hash(f"bpe#{i}") < fraction


def _missing_tokenizer(name: str) -> str | None:
    """Why the local path `name` cannot hold a tokenizer, or None when it may (or when `name` is a hub name)."""
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):
            return f"tokenizer path '{name}' does not exist; pass a folder saved with save_pretrained or a hub name"
        return None
    if not path.is_dir():
        return f"tokenizer path '{name}' is a file; pass the folder that holds it (saved with save_pretrained)"
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        files = " or ".join(_TOKENIZER_FILES)
        return f"tokenizer folder '{name}' holds no {files}; pass a folder saved with save_pretrained or a hub name"
    return None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if problem := _missing_tokenizer(name):
        raise DataError(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # corrupt files, no network, unknown repo...: one line for the user
        where = (
            f"the tokenizer in folder '{name}'"
            if Path(name).expanduser().is_dir()
            else f"tokenizer '{name}' from the hub"
        )
        raise DataError(
            f"could not load {where}: {one_line(err)}; pass a local tokenizer folder or a hub name"
        ) from err
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer '{name}' has no eos_token, which is needed to separate documents")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    h = hashlib.sha256()
    if tokenizer.is_fast:
        update_hash(h, tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    else:
        update_hash(h, json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    update_hash(h, str(tokenizer.eos_token_id).encode())
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenize_to_file(
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
