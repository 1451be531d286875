"""The paper's findings 1 and 3 in miniature: SiMBA, Mamba-2 and a Transformer of equal size, and the
same two SSMs with Mamba-3 mixers at half the state (tiny-simba3, tiny-mamba3), trained for the same
number of steps on the synthetic corpus on the CPU, compared by validation loss against steps and
against training FLOPs.

    ssmttm data synth --n 1000 --seed 100 --sample-rate 22050 --out corpus-fit --workers 2
    ssmttm data prepare --source corpus-fit --codec embedded --out data/synth-embedded --segment-seconds 10 --workers 2
    python benchmarks/miniature_study.py --collection data/synth-embedded --steps 200 --out runs/study

Each run uses its `configs/train/tiny-*.yaml` preset with the same overrides; a finished run is
reused, an interrupted one resumes. Prints a markdown table and writes the figure (`--figure`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from ssmttm import tune_allocator
from ssmttm.lm import count_parameters
from ssmttm.presets import PRESET_DIR
from ssmttm.training.config import load_train_config
from ssmttm.training.layout import METRICS
from ssmttm.training.plot import plot_runs
from ssmttm.training.trainer import Trainer

tune_allocator()  # as the CLI does: every figure here was measured with it (ssmttm/_allocator.py)

BACKBONES = ("tiny-simba", "tiny-mamba2", "tiny-transformer", "tiny-simba3", "tiny-mamba3")


def loader_rate(batches, count: int = 50) -> float:
    """Micro-batches per second the training data loader delivers alone, after its first batch."""
    stream = iter(batches)
    next(stream)
    start = time.perf_counter()
    for _ in range(count):
        next(stream)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", required=True, help="a prepared collection (embedded codec, 4 codebooks)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--out", default="runs/study", help="one run folder per backbone goes here")
    parser.add_argument("--figure", default="docs/miniature_study.png")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. run.seed=1")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    overrides = [
        f"data.collection={args.collection}",
        f"schedule.max_steps={args.steps}",
        f"run.val_every={args.val_every}",
        f"run.checkpoint_every={args.val_every}",
        *args.overrides,
    ]
    runs = []
    for name in BACKBONES:
        config = load_train_config(PRESET_DIR / "train" / f"{name}.yaml", overrides)
        run_dir = Path(args.out) / name
        trainer = Trainer(config, run_dir)
        trainer.fit()  # returns at once when the run already reached max_steps
        runs.append((name, config, run_dir))

    print(f"{args.steps} steps each, batch {runs[0][1].run.batch_size}, {runs[0][1].data.window_seconds:g} s windows")
    print("| preset | parameters | final val loss | best val loss | training FLOPs | tokens/s | training time |")
    print("|---|---|---|---|---|---|---|")
    for name, config, run_dir in runs:
        with (run_dir / METRICS).open() as f:
            val = [r for r in csv.DictReader(f) if r["kind"] == "val"]
        last = val[-1]
        best = min(float(r["loss"]) for r in val)
        wall = float(last["wall_s"])
        print(
            f"| {name} | {count_parameters(config.model):,} | {float(last['loss']):.3f} | {best:.3f} | "
            f"{float(last['flops']):.3g} | {int(last['tokens']) / wall:,.0f} | {wall:.0f} s |"
        )
    print(f"data loader: {loader_rate(trainer.batches):.0f} micro-batches/s with {config.data.workers} workers")
    plot_runs([r for _, _, r in runs], Path(args.figure))
    print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
