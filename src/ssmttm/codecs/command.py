"""The `codec` subcommands: round trip a file (to hear a codec), fit the embedded codec, describe one."""

from __future__ import annotations

import argparse
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssmttm.codecs.base import CodecFacts


def codec_names() -> str:
    """The short codec names `load_codec` accepts, for help texts: the built-in ones first."""
    from ssmttm.codecs import BUILTIN, NAMES

    return ", ".join([*BUILTIN, *NAMES])


def add_codec_commands(commands: argparse._SubParsersAction) -> None:
    codec = commands.add_parser("codec", help="audio codecs: round trip a file, fit or describe a codec")
    sub = codec.add_subparsers(metavar="COMMAND", required=True)  # as ssmttm.cli names every level's

    trip = sub.add_parser("roundtrip", help="encode a file to tokens and decode it back, to hear the codec")
    trip.add_argument("input", help="audio file (wav, flac, mp3, ogg), any rate and channels")
    trip.add_argument("-o", "--out", required=True, help="output file; the format follows the extension")
    trip.add_argument("--codec", default="embedded", help=f"{codec_names()}, a hub id or a folder")
    trip.add_argument("--num-codebooks", type=int, help="decode from the first K codebooks (default: all)")
    trip.add_argument("--spectrogram", help="also save the spectrograms before and after to this image (png, svg)")
    trip.set_defaults(run=_roundtrip)

    fit = sub.add_parser("fit", help="fit the embedded codec's codebooks on a folder of audio")
    fit.add_argument("corpus", help="folder searched for wav, flac, mp3 and ogg files")
    fit.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    fit.add_argument("--max-frames", type=int, default=120_000, help="frames sampled for k-means")
    fit.add_argument("--iterations", type=int, default=25, help="k-means iterations per codebook")
    fit.add_argument("--codebook-size", type=int, default=1024, help="entries per codebook")
    fit.add_argument(
        "--codebooks", type=int, default=4, help="residual codebooks: the first K of a fit of more equal a fit of K"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of the frame sampling and k-means")
    fit.add_argument("--workers", type=int, default=1, help="processes for the analysis")
    fit.set_defaults(run=_fit)

    info = sub.add_parser(
        "info",
        help="rates, codebooks and context of a codec",
        description="Rates, codebooks and context of a codec. A neural codec's facts come from its config "
        "(a local folder's, the Hugging Face cache's, or the known architecture of dac and encodec), "
        "so its weights need not be on this machine.",
    )
    info.add_argument("codec", nargs="?", default="embedded", help=f"{codec_names()}, a hub id or a folder")
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
        from ssmttm.audio import load_audio, to_mono
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
    facts = codec_facts(args.codec)
    print(f"{facts.name}: {facts.kind}")
    print(f"  rate          {facts.sample_rate} Hz mono, hop {facts.hop_length}, {facts.frame_rate:.2f} frames/s")
    print(f"  codebooks     {facts.num_codebooks} of {facts.cardinality}")
    print(f"  context       encode {facts.encode_context}, decode {facts.decode_context} frames (left, right)")


def codec_facts(name: str) -> CodecFacts:
    """What `load_codec(name)` would give, told without weights where none are needed: a neural
    codec's facts follow from its config; a spectral codec's weights file is small and local."""
    from ssmttm.codecs import BUILTIN, CLASSES, NAMES, load_codec

    source = NAMES.get(name, name)
    path = Path(source).expanduser()
    if name in BUILTIN or (path.is_file() and path.suffix == ".safetensors"):
        return load_codec(name).facts()
    config = _codec_config(name, source, path)
    module, cls = CLASSES[config.model_type].split(":")
    return getattr(import_module(module), cls).facts_from_config(config, str(path) if path.exists() else source)


def _codec_config(name: str, source: str, path: Path):
    """The transformers config of a local folder or hub id: its own config.json where this machine
    has one (the folder, or the Hugging Face cache), else the known architecture of the hub ids
    our short names stand for, else the hub's config.json (a few kB) when the hub is reachable."""
    from ssmttm.codecs import BUILTIN, NAMES, CodecError
    from ssmttm.codecs.dac import DAC_44KHZ, dac_44khz_config
    from ssmttm.codecs.encodec import ENCODEC_32KHZ, encodec_32khz_config
    from ssmttm.hub import cached_config, how_to_provide, is_hub_id, offline

    if path.exists():
        return _read_config(path / "config.json", source)
    if not is_hub_id(source):
        known = ", ".join(sorted({*NAMES, *BUILTIN}))
        raise CodecError(f"unknown codec {name!r}: not a local folder, a hub id or one of {known}")
    cached = cached_config(source)
    if cached is not None:
        return _read_config(Path(cached), source)
    architectures = {DAC_44KHZ: dac_44khz_config, ENCODEC_32KHZ: encodec_32khz_config}
    if source in architectures:
        return architectures[source]()
    if offline():
        raise CodecError(
            f"cannot describe codec {source!r}: its config is not in the Hugging Face cache (HF_HUB_OFFLINE=1); "
            f"{how_to_provide(source)}"
        )
    return _checked_config(source, source)


def _read_config(file: Path, source: str):
    """A saved codec's config.json as its transformers config, after the checks `load_codec` makes."""
    from ssmttm.codecs import _model_type

    _model_type(file, source)  # a missing or broken config.json is a CodecError in its words
    return _checked_config(str(file.parent), source)


def _checked_config(where: str, source: str):
    """AutoConfig of a folder or hub id (only config.json is read or fetched), of a kind we load."""
    from transformers import AutoConfig

    from ssmttm.codecs import CLASSES, CodecError
    from ssmttm.hub import first_line

    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise CodecError(f"cannot read the config of codec {source!r} ({first_line(err)})") from None
    if config.model_type not in CLASSES:
        raise CodecError(f"{source!r} is not a codec we know how to load (model type {config.model_type!r})")
    return config
