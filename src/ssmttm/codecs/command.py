"""The `codec` subcommands: round trip a file (to hear a codec), fit the embedded codec, describe one."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_codec_commands(commands: argparse._SubParsersAction) -> None:
    codec = commands.add_parser("codec", help="audio codecs: round trip a file, fit or describe a codec")
    sub = codec.add_subparsers(dest="codec_command", required=True)

    trip = sub.add_parser("roundtrip", help="encode a file to tokens and decode it back, to hear the codec")
    trip.add_argument("input", help="audio file (wav, flac, mp3, ogg), any rate and channels")
    trip.add_argument("-o", "--out", required=True, help="output file; the format follows the extension")
    trip.add_argument("--codec", default="embedded", help="embedded (default), dac, encodec, a hub id or a folder")
    trip.add_argument("--num-codebooks", type=int, help="decode from the first K codebooks (default: all)")
    trip.add_argument("--spectrogram", help="also save the spectrograms before and after to this image (png, svg)")
    trip.set_defaults(run=_roundtrip)

    fit = sub.add_parser("fit", help="fit the embedded codec's codebooks on a folder of audio")
    fit.add_argument("corpus", help="folder searched for wav, flac, mp3 and ogg files")
    fit.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    fit.add_argument("--max-frames", type=int, default=120_000, help="frames sampled for k-means (default 120000)")
    fit.add_argument("--iterations", type=int, default=25, help="k-means iterations per codebook (default 25)")
    fit.add_argument("--codebook-size", type=int, default=1024, help="entries per codebook (default 1024)")
    fit.add_argument(
        "--codebooks", type=int, default=4, help="residual codebooks (default 4; the first K of more equal a fit of K)"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=int, default=1, help="processes for the analysis (default 1)")
    fit.set_defaults(run=_fit)

    info = sub.add_parser("info", help="rates, codebooks and context of a codec")
    info.add_argument("codec", nargs="?", default="embedded")
    info.set_defaults(run=_info)


def _roundtrip(args: argparse.Namespace) -> None:
    from ssmttm.codecs import load_codec
    from ssmttm.codecs.roundtrip import roundtrip_file

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"no such audio file: {args.input}")
    codec = load_codec(args.codec, args.num_codebooks)
    trip = roundtrip_file(codec, args.input, args.out)
    print(
        f"{args.out}: {trip.seconds:.2f} s through {codec.name} ({codec.num_codebooks} codebooks, {trip.frames} frames "
        f"at {codec.frame_rate:.2f}/s, {trip.input_rate} Hz in, {trip.output_rate} Hz mono out); encode "
        f"{trip.seconds / trip.encode_s:.0f}x and decode {trip.seconds / trip.decode_s:.0f}x real time"
    )
    if args.spectrogram:
        from ssmttm.data.audio import load_audio, to_mono
        from ssmttm.plots import save_spectrograms

        before, rate = load_audio(args.input)
        after, out_rate = load_audio(args.out)
        panels = [("original", to_mono(before)[0], rate), (f"{codec.name} round trip", after[0], out_rate)]
        save_spectrograms(args.spectrogram, panels, fmax=min(rate, out_rate) / 2)
        print(f"{args.spectrogram}: spectrograms before and after")


def _fit(args: argparse.Namespace) -> None:
    from ssmttm.codecs.spectral import SpectralConfig
    from ssmttm.codecs.spectral.fit import FitConfig, fit_spectral_codec

    fit = FitConfig(max_frames=args.max_frames, iterations=args.iterations, seed=args.seed, workers=args.workers)
    if args.codebooks < 1 or args.codebook_size < 2:
        count, size = args.codebooks, args.codebook_size
        raise ValueError(f"need at least 1 codebook of at least 2 entries, not {count} of {size}")
    config = SpectralConfig(num_codebooks=args.codebooks, codebook_size=args.codebook_size)
    codec = fit_spectral_codec(args.corpus, args.out, config, fit)
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {codec.num_codebooks} codebooks of {codec.cardinality}, {size / 2**20:.2f} MiB")


def _info(args: argparse.Namespace) -> None:
    from ssmttm.codecs import load_codec

    codec = load_codec(args.codec)
    print(f"{codec.name}: {type(codec).__name__}")
    print(f"  rate          {codec.sample_rate} Hz mono, hop {codec.hop_length}, {codec.frame_rate:.2f} frames/s")
    print(f"  codebooks     {codec.num_codebooks} of {codec.cardinality}")
    print(f"  context       encode {codec.encode_context}, decode {codec.decode_context} frames (left, right)")
