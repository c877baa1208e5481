"""What the stability probes cost: the same training run with `--stability_metrics` on and off, interleaved; and,
in one process, what a probing step costs against a plain one, and the mean-drift probe's part of it.

    python scripts/bench_stability.py                                  # tiny preset, CPU or whatever is there
    python scripts/bench_stability.py --repeats 3 -- --config configs/small.yaml --max_steps 200   # on a GPU
    python scripts/bench_stability.py --in_process --repeats 20        # step, probing step, mean drift's part

Extra trainer flags go after `--`. Each run is a fresh `train/train.py` process; the table reports the training
throughput from each run's summary.json (tokens over training wall time, evaluation and checkpointing excluded by
turning them off), the median per setting, and the overhead of the probes as a ratio measured in this same run.

`--in_process` builds the preset's model (`--config`, default the tiny preset) on random tokens of its batch shape
and times, interleaved, a plain training step, a probing step (train/stability.py's BlockProbes around the same
step) and the two things mean drift adds to a probing step: the forward with the norm-input hooks against the same
forward without them, and the drift of the stream from the hidden states. Medians; every figure is a ratio to the
plain step of the same run, and the cost per step at --logging_steps is that ratio over the logging interval.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train.run_directory import Summary

REPO = Path(__file__).resolve().parent.parent


def run_once(extra: list[str], stability: bool, logging_steps: int, out: Path) -> float:
    cmd = [
        sys.executable,
        str(REPO / "train" / "train.py"),
        *extra,
        "--output_dir",
        str(out),
        "--logging_steps",
        str(logging_steps),
        "--stability_metrics",
        str(stability).lower(),
        "--eval_steps",
        "0",
        "--save_steps",
        "0",
        "--sample_max_new_tokens",
        "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_stability.py: a training run failed:\n{proc.stderr[-2000:]}")
    return Summary.read(out).tokens_per_sec


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def in_process(config: str, repeats: int, logging_steps: int) -> None:
    import torch

    from model import NormGPTForCausalLM
    from train.config import parse_args
    from train.stability import BlockProbes, mean_drift, norm_input_probe

    run = parse_args(["--config", config])
    torch.manual_seed(0)
    model = NormGPTForCausalLM(run.model_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (run.training.per_device_train_batch_size, run.data.block_size)
    ids = torch.randint(0, model.config.vocab_size, shape)
    blocks = model.model.layers

    def step(probes: BlockProbes | None = None) -> None:
        if probes is None:
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        else:
            with probes.forward():
                out = model(input_ids=ids, labels=ids, use_cache=False, output_hidden_states=True)
            probes.after_forward(out)
            out.loss.backward()
            probes.before_update()
        optimizer.step()
        if probes is not None:
            probes.after_update()
        optimizer.zero_grad(set_to_none=True)

    def forward(hooks: bool) -> None:
        with torch.no_grad():
            if hooks:
                with norm_input_probe(blocks) as found:
                    model(input_ids=ids, use_cache=False)
                torch.stack(list(found.values())).tolist()
            else:
                model(input_ids=ids, use_cache=False)

    with torch.no_grad():
        hidden = model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states
    cases = {
        "plain step": step,
        "probing step": lambda: step(BlockProbes(blocks)),
        "forward": lambda: forward(False),
        "forward + norm-input hooks": lambda: forward(True),
        "stream drift from the hidden states": lambda: torch.stack([mean_drift(h) for h in hidden[1:]]).tolist(),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(values) for name, values in times.items()}
    plain = med["plain step"]
    drift = max(0.0, med["forward + norm-input hooks"] - med["forward"]) + med["stream drift from the hidden states"]
    threads = torch.get_num_threads()
    print(f"{config}: batch {shape[0]} x {shape[1]} tokens, {repeats} interleaved repeats, {threads} threads")
    for name, value in med.items():
        print(f"  {name:<40}{value * 1e3:>10.2f} ms{value / plain:>8.3f} x plain step")
    probes = med["probing step"] / plain - 1
    print(f"  a probing step costs {probes:+.1%} of a plain step; mean drift's part: {drift / plain:+.2%}")
    print(
        f"  at --logging_steps {logging_steps}: every probe {probes / logging_steps:+.2%} time per step, "
        f"mean drift {drift / plain / logging_steps:+.3%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved on/off")
    parser.add_argument("--logging_steps", type=int, default=10, help="probes run on logging steps only")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--in_process", action="store_true", help="time one process's steps (see above)")
    parser.add_argument("--config", default="configs/tiny.yaml", help="--in_process: the preset whose model to time")
    args, extra = parser.parse_known_args()
    if args.in_process:
        in_process(args.config, args.repeats, args.logging_steps)
        return 0
    extra = [a for a in extra if a != "--"]
    if "--max_steps" not in extra:
        extra += ["--max_steps", str(args.max_steps)]
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for stability in (False, True):
                out = Path(tmp) / f"{'on' if stability else 'off'}-{i}"
                results[stability].append(run_once(extra, stability, args.logging_steps, out))
                print(f"run {i + 1}/{args.repeats} stability_metrics={stability}: {results[stability][-1]:,.0f} tok/s")
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"\nstability probes every {args.logging_steps} steps, {args.repeats} runs each ({' '.join(extra)})")
    print(f"{'setting':<24}{'median tok/s':>14}{'runs (tok/s)':>40}")
    for label, values in (("stability_metrics=false", results[False]), ("stability_metrics=true", results[True])):
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{label:<24}{statistics.median(values):>14,.0f}{runs:>40}")
    print(f"overhead of the probes: {100 * (off / on - 1):+.1f}% time per token (on/off throughput {on / off:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
