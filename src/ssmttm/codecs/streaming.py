"""Streaming decode: audio out while codes are still arriving, for any `Codec`.

A push decodes every frame whose right context has arrived; it holds back only the last
`right` frames (the decoder's look-ahead) and keeps `left` frames of history for the next window,
so memory stays bounded however long the stream. What comes out equals `Codec.decode` of all the
codes up to float noise, because every frame is decoded with the context its receptive field needs.

`GrowingWav` writes such audio to a file that players can open while it grows.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from ssmttm.codecs.base import Codec, CodecError


class StreamDecoder:
    """`push(codes (B, K, t)) -> wav (B, 1, n)` as frames arrive, then `flush() -> wav` once."""

    def __init__(self, codec: Codec, chunk_frames: int):
        self.codec = codec
        self.chunk_frames = chunk_frames
        self.left, self.right = codec.decode_context
        self._codes: Tensor | None = None  # (B, K, n): the frames from `_first` on that are still needed
        self._first = 0  # index of the first frame held
        self._received = 0  # frames pushed so far
        self._emitted = 0  # frames whose audio has been returned
        self._closed = False

    @property
    def held_frames(self) -> int:
        """Frames held for later windows: at most left + right after every push."""
        return 0 if self._codes is None else self._codes.shape[-1]

    def push(self, codes: Tensor) -> Tensor:
        """codes (B, K, t), the next t frames -> wav (B, 1, n) for every frame that can be finished now."""
        if self._closed:
            raise CodecError("this stream was flushed; start a new one with codec.stream_decoder()")
        codes = self.codec.check_codes(codes)
        if self._codes is None:
            self._codes = codes[..., :0]
        if codes.shape[0] != self._codes.shape[0]:
            raise CodecError(f"the stream's batch is {self._codes.shape[0]}, got codes for {codes.shape[0]}")
        self._codes = torch.cat([self._codes, codes.to(self._codes.device)], dim=-1)
        self._received += codes.shape[-1]
        return self._emit(self._received - self.right)

    def flush(self) -> Tensor:
        """wav (B, 1, n) for the frames held back; the stream is over."""
        wav = self._emit(self._received)
        self._closed = True
        return wav

    def _emit(self, stop: int) -> Tensor:
        if self._codes is None:
            return torch.zeros(0, 1, 0)
        start = self._emitted
        wav = self.codec.decode_span(
            self._codes, self._first, start, max(start, stop), self._received, self.chunk_frames
        )
        self._emitted = max(start, stop)
        drop = max(0, self._emitted - self.left - self._first)
        if drop:
            self._codes = self._codes[..., drop:].clone()  # a copy, so the dropped frames are freed
            self._first += drop
        return wav


def partial_path(path: Path) -> Path:
    """Where audio streamed to `path` grows until it is complete: out.wav -> out.wav.partial, visible."""
    return path.with_name(path.name + ".partial")


class GrowingWav:
    """A mono 16-bit WAV written chunk by chunk whose header counts every sample written so far, so
    that a player or another reader can open it at any time, and it stays valid wherever it stops.

    libsndfile writes a WAV's sizes only when the file is closed (its own reader repairs that; readers
    that trust the header, such as Python's `wave`, see no samples), so the header is written by
    `wave`, which patches the sizes after each chunk. The samples are still converted by libsndfile,
    so the finished file is byte for byte what `sf.write` writes of the same audio.
    """

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path, self.sample_rate, self.frames = path, sample_rate, 0
        # Both stay open across write() calls; close() closes them.
        self._file = open(path, "wb")  # noqa: SIM115
        self._wav = wave.open(self._file, "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    def write(self, audio: np.ndarray) -> None:
        """Append audio (N,) float, in [-1, 1], and flush it, header included, to the file."""
        pcm = io.BytesIO()
        sf.write(pcm, np.asarray(audio, np.float32), self.sample_rate, subtype="PCM_16", format="RAW", endian="LITTLE")
        self._wav.writeframes(pcm.getvalue())  # patches the RIFF and data sizes
        self._file.flush()
        self.frames += len(audio)

    def close(self) -> None:
        self._wav.close()  # leaves a file object it did not open to us
        self._file.close()

    def __enter__(self) -> GrowingWav:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
