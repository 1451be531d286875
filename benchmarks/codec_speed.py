"""Encode and decode speed of the codecs on the CPU: real-time factors (seconds of audio per second
of compute), 2 threads, batch 1.

  embedded       `load_codec("embedded")`, the offline codec (skipped with a note if it does not load)
  dac-44khz      descript/dac_44khz's architecture (DacConfig defaults at 44.1 kHz), random weights
  encodec-32khz  facebook/encodec_32khz's architecture (as transformers' conversion script builds
                 it), random weights

Each codec encodes and decodes a clip of noise in its default chunks (the median of a few runs,
after a warm-up), and decodes it again as a stream pushed 1 s at a time.

    python benchmarks/codec_speed.py              # 10 s clips, 3 runs (a few minutes)
    python benchmarks/codec_speed.py --quick      # 2 s clips, 1 run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from ssmttm import tune_allocator
from ssmttm.codecs import Codec, CodecError, load_codec

tune_allocator()  # as the CLI does: every figure here was measured with it (ssmttm/_allocator.py)

THREADS = 2


def random_dac() -> Codec:
    from transformers import DacModel

    from ssmttm.codecs.dac import DacCodec, dac_44khz_config

    torch.manual_seed(0)
    return DacCodec(DacModel(dac_44khz_config()), "dac-44khz (random weights)")


def random_encodec() -> Codec:
    from transformers import EncodecModel

    from ssmttm.codecs.encodec import EncodecCodec, encodec_32khz_config

    torch.manual_seed(0)
    model = EncodecModel(encodec_32khz_config())
    for layer in model.quantizer.layers:  # transformers starts codebooks at zero
        layer.codebook.embed.normal_(0.0, 0.03)
    return EncodecCodec(model, "encodec-32khz (random weights)")


def timed(fn, runs: int) -> float:
    """Median seconds of `runs` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stream(codec: Codec, codes: torch.Tensor) -> torch.Tensor:
    decoder, step = codec.stream_decoder(), round(codec.frame_rate)
    parts = [decoder.push(codes[..., k : k + step]) for k in range(0, codes.shape[-1], step)]
    return torch.cat([*parts, decoder.flush()], dim=-1)


def measure(codec: Codec, seconds: float, runs: int) -> dict:
    wav = torch.randn(1, 1, round(seconds * codec.sample_rate)) * 0.1
    codes = codec.encode(wav, codec.sample_rate)
    return {
        "encode": seconds / timed(lambda: codec.encode(wav, codec.sample_rate), runs),
        "decode": seconds / timed(lambda: codec.decode(codes), runs),
        "stream": seconds / timed(lambda: stream(codec, codes), runs),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s clips and one run: a smoke run")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    args = parser.parse_args()
    seconds, runs = (2.0, 1) if args.quick else (args.seconds, args.runs)
    torch.set_num_threads(THREADS)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {THREADS} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; {seconds:g} s clips, median of {runs}\n"
    )
    print(
        "| codec | rate | frames/s | codebooks | context (enc; dec) | chunk "
        "| encode x RT | decode x RT | stream 1 s pushes x RT |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    builders = {"embedded": lambda: load_codec("embedded"), "dac-44khz": random_dac, "encodec-32khz": random_encodec}
    for label, build in builders.items():
        try:
            codec = build()
        except CodecError as err:
            print(f"| {label} | skipped: {err} |||||||")
            continue
        speed = measure(codec, seconds, runs)
        print(
            f"| {label} | {codec.sample_rate} Hz | {codec.frame_rate:.2f} "
            f"| {codec.num_codebooks} x {codec.cardinality} "
            f"| {codec.encode_context}; {codec.decode_context} | {codec.chunk_frames} | {speed['encode']:.1f} "
            f"| {speed['decode']:.1f} | {speed['stream']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
