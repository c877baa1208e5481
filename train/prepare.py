"""Build the token cache a training run will read, and nothing else: no model, no output directory.

    normgpt prepare --config configs/small.yaml --dataset my_corpus/ --cache_dir /shared/cache

It takes the trainer's own flags (any of them; only the data ones and the BPE size matter), so a job script can pass
the same command line to both. Run it once before a multi-node launch (configs/slurm/train.sbatch does): the ranks
then open the finished entry instead of waiting for rank 0 to tokenize the corpus, and with a cache_dir every node
sees, the corpus is tokenized once for all of them. Exit 2 with one line on a bad flag or unusable data.
"""

from __future__ import annotations

import contextlib
import sys

from train.config import ConfigError, parse_args
from train.data import DataError, prepare_data


def main(argv: list[str] | None = None) -> int:
    try:
        run = parse_args(argv)
        # The BPE size is only used when a tokenizer is trained on the data; the trainer passes the same value.
        data = prepare_data(run.data, run.model.bpe_vocab_size, contextlib.nullcontext)
    except (ConfigError, DataError) as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 2
    info = data.info
    state = "found" if info["cache_hit"] else "built"
    print(
        f"token cache {state}: {info['cache_path']} ({info['train_tokens']} training and {info['val_tokens']} "
        f"validation tokens, vocabulary {len(data.tokenizer)})"
    )
    return 0
