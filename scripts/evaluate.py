"""Evaluate a normgpt model with lm-evaluation-harness: `normgpt evaluate` (train/evaluate.py), kept as a script.

python scripts/evaluate.py RUN_DIR --text held_out.txt      # the same as: normgpt evaluate RUN_DIR --text ...
"""

import sys

from train.commands import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
