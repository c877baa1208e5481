"""Train a NormGPT model. The one entry point, on a laptop CPU, one GPU, many GPUs or many nodes:

    python train/train.py --norm rms                      # plain process
    accelerate launch train/train.py --norm rms           # whatever `accelerate config` set up
    accelerate launch --multi_gpu --num_processes 2 train/train.py   # 2-process DDP (gloo on a CPU-only machine)

Everything the run produces goes to --output_dir (see train/run_directory.py). Exit codes: 0 when the run ended
(completed, stalled or diverged: summary.json says which), 2 for bad input (one line on stderr, nothing written),
128 + the signal number when SIGTERM (143), SIGINT (130) or SIGUSR1 (138) stopped it after a checkpoint, and 1
when the run completed but the --push_to_hub upload failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script, Python puts train/ itself first on sys.path, where `import train` would find this very file
    # instead of the package. The repository root takes its place (which also works from a clone without pip install).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.checkpoints import CheckpointError  # noqa: E402
from train.config import ConfigError, parse_args  # noqa: E402
from train.data import DataError  # noqa: E402
from train.hub import HubError  # noqa: E402
from train.output_dir import OutputDirError  # noqa: E402
from train.trainer import Trainer  # noqa: E402

BAD_INPUT = (ConfigError, DataError, CheckpointError, OutputDirError, HubError)


def main(argv: list[str] | None = None) -> int:
    try:
        trainer = Trainer(parse_args(argv))
        trainer.setup()
        trainer.train()
    except BAD_INPUT as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    if trainer.interrupted_by:
        return 128 + trainer.interrupted_by
    return 1 if trainer.upload_failed else 0


if __name__ == "__main__":
    sys.exit(main())
