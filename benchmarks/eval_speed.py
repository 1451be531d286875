"""How fast the offline evaluation model reads audio: musicnn's embeddings and tag logits, 2 threads.

Clips of seeded noise with a beat, at 16 kHz (the model's rate, so no resampling is timed), each
read in one pass for its embeddings and logits both (`embeddings_and_logits`), as an evaluation with
musicnn as embedding and tagger does, and, for comparison in the same run, in two passes (one for
each). Target (issue 25): 100 clips of 10 s in under a minute.

    python benchmarks/eval_speed.py                 # 100 clips of 10 s
    python benchmarks/eval_speed.py --clips 10      # a smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from speed_common import THREADS, machine_line

from ssmttm.eval.models import MusicnnModel


def clip(seconds: float, seed: int, rate: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    beat = np.exp(-20 * (t % 0.5))  # a hit every half second
    return (0.3 * rng.normal(size=t.size) * beat).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(machine_line())
    model = MusicnnModel()
    wavs = [clip(args.seconds, seed, model.sample_rate) for seed in range(args.clips)]
    model.embeddings(wavs[0])  # warm-up: librosa's filters, torch's first kernels
    start = time.perf_counter()
    for wav in wavs:
        model.embeddings_and_logits(wav)
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for wav in wavs:
        model.embeddings(wav)
        model.logits(wav)
    two_passes = time.perf_counter() - start
    met = "met" if args.clips >= 100 and args.seconds >= 10 and elapsed < 60 else "NOT met (or not the target's size)"
    print(
        f"{model.id}: {args.clips} clips of {args.seconds:g} s, embeddings and logits in one pass, in {elapsed:.1f} s "
        f"({args.clips / elapsed:.1f} clips/s); target 100 clips of 10 s in under 60 s: {met}"
    )
    print(f"two passes (embeddings, then logits): {two_passes:.1f} s, {two_passes / elapsed:.2f}x the one pass")


if __name__ == "__main__":
    main()
