"""The data layer: text corpus -> tokenizer + cached, memory-mapped token streams -> training and evaluation batches.

arguments.py    DataError, the one-line error every bad input raises (DataArguments, the data flags: train/arguments.py)
sources.py      the stdlib corpus, local files and hub datasets; their fingerprints and train/validation split
tokenizer.py    training the default byte-level BPE, loading a tokenizer, tokenizing documents to a file
token_cache.py  prepare_data: the cache entry <cache_dir>/<name>-<key>/, built once, checked on every load
batches.py      TokenBatches and eval_batches: [batch, block_size] LongTensors, resumable and sharded over ranks
"""

from train.arguments import DataArguments
from train.data.arguments import DataError
from train.data.batches import TokenBatches, eval_batches
from train.data.sources import is_validation, stdlib_files, stdlib_root
from train.data.token_cache import PreparedData, prepare_data
from train.data.tokenizer import EOS_TOKEN, train_bpe_tokenizer

__all__ = [
    "EOS_TOKEN",
    "DataArguments",
    "DataError",
    "PreparedData",
    "TokenBatches",
    "eval_batches",
    "is_validation",
    "prepare_data",
    "stdlib_files",
    "stdlib_root",
    "train_bpe_tokenizer",
]
