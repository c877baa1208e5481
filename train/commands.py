"""normgpt's front door: one command, `normgpt`, with a subcommand per tool (`[project.scripts]` in pyproject.toml).

    normgpt train --norm rms                 train a model (train/train.py; under `accelerate launch` on many devices)
    normgpt prepare --config C               build the token cache a run will read (once, before a multi-node launch)
    normgpt sweep SWEEP.yaml --output_dir D  a grid of training runs, then its report (train/sweep/)
    normgpt report D                         a sweep directory's summary.csv, report.md and figures
    normgpt export RUN OUT [--gguf q8_0]     the model a user gets: stock class or remote code, card, GGUF
    normgpt evaluate RUN --text FILE         bits per byte on local text, and lm-eval tasks
    normgpt push RUN --hub_model_id ID       upload a model directory to the Hub, never its checkpoints

Each subcommand is its tool's own `main`, imported only when it runs, so `normgpt report` starts without torch.
`python -m train ...` is the same command (train/__main__.py): `accelerate launch -m train train --norm rms`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from train.cli import OneLineParser

# subcommand -> (the module whose main(argv) runs it, one line of help)
COMMANDS = {
    "train": ("train.train", "train a model (one process; many under accelerate launch)"),
    "prepare": ("train.prepare", "build the token cache a run will read, and nothing else (trainer flags)"),
    "sweep": ("train.sweep.ablate", "run a grid of training runs (an ablation sweep), then write its report"),
    "report": ("train.sweep.report", "write a sweep directory's summary.csv, report.md and figures"),
    "export": ("train.publish.command", "write a run's model as a publishable directory: stock class, card, GGUF"),
    "evaluate": ("train.evaluate", "evaluate a model: bits per byte on local text, and lm-eval tasks"),
    "push": ("train.publish.hub", "upload a model directory to the Hugging Face Hub (never its checkpoints)"),
}


def build_parser() -> OneLineParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    parser = OneLineParser(
        name="normgpt",
        prog="normgpt",
        description="normgpt: train, compare and publish small language models that showcase RMSNorm.",
        epilog=f"commands:\n{listing}\n\n`normgpt COMMAND --help` describes each one.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit code is normgpt's."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        module, _ = COMMANDS[args.command]
        return importlib.import_module(module).main(args.args)
    except SystemExit as stop:  # argparse: --help (0), or a bad command line (2, its one line already printed)
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
