"""The `synth` subcommand: make (or finish) a synthetic captioned-music corpus."""

from __future__ import annotations

import argparse

from ssmttm.data.synth.corpus import DEFAULT_DURATION_S, DEFAULT_SAMPLE_RATE, synthesize_corpus
from ssmttm.data.synth.render import RendererMissingError


def add_synth_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `synth` on `subparsers` and return its parser; its handler is set as `run` (what
    `ssmttm.cli.main` calls) and as `func` (argparse's customary name)."""
    parser = subparsers.add_parser(
        "synth",
        help="make a synthetic captioned-music corpus (SoundFont-rendered, captions true by construction)",
        description="Compose, render and caption N pieces into OUT/audio/*.flac and OUT/metadata.jsonl. "
        "A re-run into the same folder only makes the pieces that are missing.",
    )
    parser.add_argument("--n", type=int, required=True, help="number of pieces")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, required=True, help="corpus seed: the same seed gives the same corpus")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument(
        "--hold-out",
        default=None,
        metavar="SPEC",
        help='combinations to leave out, e.g. "style=jazz,lead=saxophone;style=rock,lead=piano" '
        "(keys: style, lead, accompaniment, key, mode, mood, dynamics, drums)",
    )
    parser.add_argument("--only-held-out", action="store_true", help="make only the held-out combinations")
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE, help="Hz")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds per piece")
    parser.add_argument(
        "--bpm-captions",
        type=float,
        default=0.0,
        metavar="P",
        help="share (0-1) of the captions naming no BPM that are made to state one; 0 keeps the captions as written",
    )
    parser.set_defaults(run=run_synth, func=run_synth)
    return parser


def run_synth(args: argparse.Namespace) -> None:
    """Make the corpus the arguments describe and print what was made."""
    try:
        summary = synthesize_corpus(
            args.out,
            n=args.n,
            seed=args.seed,
            workers=args.workers,
            hold_out=args.hold_out,
            only_held_out=args.only_held_out,
            sample_rate=args.sample_rate,
            duration_s=args.duration,
            progress=True,
            bpm_captions=args.bpm_captions,
        )
    except RendererMissingError as err:
        raise ValueError(str(err)) from None
    speed = f", {summary.rendered_seconds:.0f} s of audio at {summary.realtime_factor:.0f}x real time"
    print(
        f"synth: {summary.pieces} pieces in {summary.out_dir} ({summary.rendered} rendered, "
        f"{summary.skipped} already there) in {summary.wall_seconds:.1f} s{speed if summary.rendered else ''}"
    )
    print("  styles   " + ", ".join(f"{style} {count}" for style, count in summary.styles.items()))
    print(f"  metadata {summary.metadata_path}")
