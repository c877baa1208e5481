"""Build the token cache a training run will read, and nothing else: no model, no output directory.

    python scripts/prepare_data.py --config configs/small.yaml --dataset my_corpus/ --cache_dir /shared/cache

It takes train/train.py's own flags (any of them; only the data ones and the BPE size matter), so a job script can
pass the same command line to both. Run it once before a multi-node launch (configs/slurm/train.sbatch does): the
ranks then open the finished entry instead of waiting for rank 0 to tokenize the corpus, and with a cache_dir every
node sees, the corpus is tokenized once for all of them. Exit 2 with one line on a bad flag or unusable data.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python scripts/prepare_data.py` from a clone
    sys.path.insert(0, str(REPO))

from train.config import DEFAULT_VOCAB_SIZE, ConfigError, parse_args  # noqa: E402
from train.data import DataError, prepare_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        run = parse_args(argv)
        # The BPE size is only used when a tokenizer is trained on the data; the trainer passes the same value.
        data = prepare_data(run.data, run.model.vocab_size or DEFAULT_VOCAB_SIZE, contextlib.nullcontext)
    except (ConfigError, DataError) as err:
        print(f"prepare_data: error: {err}", file=sys.stderr)
        return 2
    info = data.info
    state = "found" if info["cache_hit"] else "built"
    print(
        f"token cache {state}: {info['cache_path']} ({info['train_tokens']} training and {info['val_tokens']} "
        f"validation tokens, vocabulary {len(data.tokenizer)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
