"""Encode a file to tokens and decode it back, so that a codec can be heard and looked at."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmttm.audio import load_audio, save_audio
from ssmttm.codecs.base import Codec


@dataclass(frozen=True)
class RoundTrip:
    seconds: float  # audio duration
    frames: int
    encode_s: float  # wall time
    decode_s: float
    input_rate: int
    output_rate: int


def roundtrip_file(codec: Codec, source: str | Path, target: str | Path) -> RoundTrip:
    """Read `source` (any rate, any channels), encode, decode, write `target` (mono, codec rate;
    format by extension) atomically."""
    wav, rate = load_audio(source)  # (C, N)
    start = time.perf_counter()
    codes = codec.encode(torch.from_numpy(wav)[None], rate)  # (1, K, T)
    encoded = time.perf_counter()
    out = codec.decode(codes)[0]  # (1, T * hop)
    decoded = time.perf_counter()
    samples = round(wav.shape[-1] * codec.sample_rate / rate)  # drop the padding of the last frame
    save_audio(target, out[:, :samples].numpy(), codec.sample_rate)
    return RoundTrip(wav.shape[-1] / rate, codes.shape[-1], encoded - start, decoded - encoded, rate, codec.sample_rate)
