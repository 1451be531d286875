"""Streaming decode: audio out while codes are still arriving, for any `Codec`.

A push decodes every frame whose right context has arrived; it holds back only the last
`right` frames (the decoder's look-ahead) and keeps `left` frames of history for the next window,
so memory stays bounded however long the stream. What comes out equals `Codec.decode` of all the
codes up to float noise, because every frame is decoded with the context its receptive field needs.
"""

from __future__ import annotations

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
