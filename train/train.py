"""Train a NormGPT model. The one entry point, on a laptop CPU, one GPU, many GPUs or many nodes:

    normgpt train --norm rms                              # plain process (also: python train/train.py --norm rms)
    accelerate launch train/train.py --norm rms           # whatever `accelerate config` set up
    accelerate launch -m train train --norm rms           # the same, through the front door (train/__main__.py)
    accelerate launch --multi_gpu --num_processes 2 train/train.py   # 2-process DDP (gloo on a CPU-only machine)

Everything the run produces goes to --output_dir (see train/run_directory.py). Exit codes: 0 when the run ended
(completed, stalled or diverged: summary.json says which) or, resumed, had already trained to its --max_steps (one
line says so; nothing is done), 2 for bad input or a machine that cannot hold the run (a full disk: one line on
stderr; nothing lost, nothing written by a refused run), 128 + the signal number when SIGTERM (143), SIGINT (130) or
SIGUSR1 (138) stopped it after a checkpoint, and 1 when the run completed but the --push_to_hub upload failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python train/train.py` (and `accelerate launch train/train.py`, which runs the same) puts the script's own
    # folder, train/, first on sys.path, where `import train` finds this very file instead of the package: no import
    # of the package can work until that entry goes. The repository root takes its place (so a clone runs without
    # pip install too). Every other entry point is a module of the installed package and needs nothing of the kind.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train.arguments import ConfigError  # noqa: E402
from train.checkpoints import CheckpointError  # noqa: E402
from train.config import parse_args  # noqa: E402
from train.data import DataError  # noqa: E402
from train.output_dir import OutputDirError, RunCompleted  # noqa: E402
from train.publish.hub import HubError  # noqa: E402
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
    except RunCompleted as done:
        print(f"train.py: {done}")
        return 0
    if trainer.interrupted_by:
        return 128 + trainer.interrupted_by
    return 1 if trainer.upload_failed else 0


if __name__ == "__main__":
    sys.exit(main())
