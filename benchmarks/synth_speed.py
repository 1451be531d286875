"""Synthetic corpus speed: seconds of audio made per wall second, from composition to FLAC on disk.

Two measurements:
  corpus   `synthesize_corpus` with --workers processes (default 2) into a fresh folder: the
           real-time factor a user gets, process start-up and metadata included.
  stages   the same pieces one after another in this process, each stage timed on its own:
           compose (attributes -> score), render (tinysoundfont, per-track mix, levelling) and
           encode + write (FLAC, atomic rename).

    python benchmarks/synth_speed.py                 # 40 pieces of 10 s, 2 workers
    python benchmarks/synth_speed.py --n 200 --workers 4
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from ssmttm import tune_allocator
from ssmttm.audio import save_audio
from ssmttm.data.synth import CorpusSettings, compose, piece_record, piece_rngs, synthesize_corpus
from ssmttm.data.synth.render import level, render_score
from ssmttm.data.synth.vocabulary import LOUDNESS_DBFS

tune_allocator()  # as the CLI does: every figure here was measured with it (ssmttm/_allocator.py)


def corpus_speed(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        summary = synthesize_corpus(
            folder,
            n=args.n,
            seed=args.seed,
            workers=args.workers,
            sample_rate=args.sample_rate,
            duration_s=args.duration,
        )
    print(
        f"corpus  {summary.pieces} pieces, {summary.rendered_seconds:.0f} s of audio in {summary.wall_seconds:.2f} s "
        f"wall with {args.workers} workers: {summary.realtime_factor:.0f}x real time"
    )


def stage_speed(args: argparse.Namespace) -> None:
    settings = CorpusSettings(args.seed, args.duration, args.sample_rate)
    totals = {"compose": 0.0, "render": 0.0, "encode + write": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.n):
            attrs, record = piece_record(settings, index)
            _, music_rng, _ = piece_rngs(args.seed, index)
            start = time.perf_counter()
            score = compose(attrs, music_rng, args.duration)
            composed = time.perf_counter()
            audio = level(
                render_score(score, args.sample_rate, args.duration), LOUDNESS_DBFS[attrs.dynamics], args.sample_rate
            )
            rendered = time.perf_counter()
            save_audio(Path(folder) / record["file"], audio, args.sample_rate)
            written = time.perf_counter()
            totals["compose"] += composed - start
            totals["render"] += rendered - composed
            totals["encode + write"] += written - rendered
    audio_s = args.n * args.duration
    whole = sum(totals.values())
    print(f"stages  one process, {args.n} pieces ({audio_s:.0f} s of audio):")
    print(f"  {'stage':<16} {'ms/piece':>9} {'share':>7} {'x real time':>12}")
    for stage, seconds in [*totals.items(), ("all", whole)]:
        print(f"  {stage:<16} {1e3 * seconds / args.n:>9.1f} {seconds / whole:>7.0%} {audio_s / seconds:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="pieces (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the corpus run (default 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per piece (default 10)")
    parser.add_argument("--sample-rate", type=int, default=44_100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"synth_speed: {machine}, {os.cpu_count()} CPUs, {args.duration:g} s pieces at {args.sample_rate} Hz")
    corpus_speed(args)
    stage_speed(args)


if __name__ == "__main__":
    main()
