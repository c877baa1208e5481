"""Build the token cache a training run will read, and nothing else: `normgpt prepare` (train/prepare.py).

python scripts/prepare_data.py --config configs/small.yaml --dataset my_corpus/ --cache_dir /shared/cache
"""

import sys

from train.commands import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
