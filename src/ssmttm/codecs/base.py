"""The codec interface: audio <-> K parallel streams of discrete tokens.

Every codec takes audio at any rate and channel count (it resamples and downmixes itself) and
decodes to mono at its own rate. `frame_rate` is exact: sample_rate / hop as a float, so that
durations and frame counts never drift.

Long audio runs in windows, in both directions: a window computes `chunk_frames` frames plus the
context its network needs on each side (`encode_context_frames`, `decode_context_frames`) and
keeps only its centre, so memory is bounded by the chunk size and the result equals a whole pass
up to float noise. A subclass implements `_encode` and `_decode` and sets those three attributes;
chunking and streaming come from here.

Streaming decode (`StreamDecoder`) gives audio out while codes are still arriving: a push decodes
every frame whose right context has arrived, holds back only the last `right` frames (the
decoder's look-ahead) and keeps `left` frames of history for the next window, so memory stays
bounded however long the stream. What comes out equals `decode` of all the codes up to float
noise, because every frame is decoded with the context its receptive field needs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ssmttm.audio import resample
from ssmttm.hub import first_line, how_to_provide, is_local_path, quiet_loading


class CodecError(ValueError):
    """A codec that cannot be loaded or used as asked, with a one-line reason."""


@dataclass(frozen=True)
class CodecFacts:
    """What `ssmttm codec info` tells of a codec; a neural codec's follow from its config alone."""

    name: str
    kind: str  # the Codec class that loads it
    sample_rate: int
    hop_length: int
    num_codebooks: int  # in use: all the codec has, unless fewer were asked for
    cardinality: int
    encode_context: tuple[int, int]  # (left, right) frames
    decode_context: tuple[int, int]

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


class Codec(ABC):
    """Audio codec contract: encode (B, C, N) at any rate -> codes (B, K, T); decode -> (B, 1, N)."""

    name: str  # what `load_codec` accepts to rebuild it: a registry name, a hub id or a local path
    sample_rate: int
    hop_length: int
    num_codebooks: int
    cardinality: int  # entries per codebook; token ids are 0 .. cardinality - 1
    # Frames of context a window needs so that its centre frames equal a whole pass: an int for
    # both sides, or (left, right). Derive them from the network's receptive field.
    encode_context_frames: int | tuple[int, int] = 0
    decode_context_frames: int | tuple[int, int] = 0
    chunk_frames: int = 1024  # frames a window keeps; with the context, this bounds memory

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def encode_context(self) -> tuple[int, int]:
        """(left, right) frames of context an encoding window needs."""
        return _sides(self.encode_context_frames)

    @property
    def decode_context(self) -> tuple[int, int]:
        """(left, right) frames of context a decoding window needs; a stream holds back `right`."""
        return _sides(self.decode_context_frames)

    def facts(self) -> CodecFacts:
        return CodecFacts(
            self.name,
            type(self).__name__,
            self.sample_rate,
            self.hop_length,
            self.num_codebooks,
            self.cardinality,
            self.encode_context,
            self.decode_context,
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames for `num_samples` samples at the codec's rate: ceil(N / hop)."""
        return math.ceil(num_samples / self.hop_length)

    def encode(self, wav: Tensor, sample_rate: int, chunk_frames: int | None = None) -> Tensor:
        """wav (B, C, N) float at `sample_rate` -> codes (B, K, T) int64, T = ceil(N' / hop) where N'
        is the length at the codec's rate. The end is padded with silence up to a whole frame, so
        audio shorter than one hop gives one frame. Runs in windows of `chunk_frames` frames
        (default: the codec's `chunk_frames`)."""
        rate = _check_audio(wav, sample_rate)
        mono = self._to_codec_rate(wav.float().mean(dim=1, keepdim=True), rate)  # (B, 1, N')
        frames = max(1, self.num_frames(mono.shape[-1]))
        hop = self.hop_length
        padded = torch.nn.functional.pad(mono, (0, frames * hop - mono.shape[-1]))  # (B, 1, T * hop)
        left, right = self.encode_context
        parts = []
        with torch.inference_mode():
            for lo, hi, start, stop in windows(0, frames, frames, self._chunk(chunk_frames), left, right):
                codes = self._encode(padded[..., lo * hop : hi * hop])  # (B, >= K, hi - lo)
                parts.append(codes[:, : self.num_codebooks, start - lo : stop - lo])
        return torch.cat(parts, dim=-1).long()

    def decode(self, codes: Tensor, chunk_frames: int | None = None) -> Tensor:
        """codes (B, K, T) -> wav (B, 1, T * hop) float32 at `sample_rate`, in windows of
        `chunk_frames` frames (default: the codec's `chunk_frames`)."""
        codes = self.check_codes(codes)
        frames = codes.shape[-1]
        return self.decode_span(codes, 0, 0, frames, frames, self._chunk(chunk_frames))

    def stream_decoder(self, chunk_frames: int | None = None) -> StreamDecoder:
        """Decodes codes as they arrive: `push(codes (B, K, t)) -> wav (B, 1, n)`, then `flush()`.
        All pushes and the flush, concatenated, equal `decode` of all the codes."""
        return StreamDecoder(self, self._chunk(chunk_frames))

    def check_codes(self, codes: Tensor) -> Tensor:
        """codes (B, K, T) of integers in 0..cardinality - 1, as int64; a CodecError otherwise."""
        if not isinstance(codes, Tensor) or codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise CodecError(f"decode expects codes (batch, {self.num_codebooks}, frames), got {shape}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise CodecError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cardinality):
            raise CodecError(f"codes must lie in 0..{self.cardinality - 1}")
        return codes.long()

    def decode_span(self, codes: Tensor, first: int, start: int, stop: int, total: int, chunk: int) -> Tensor:
        """Frames start..stop of a sequence whose frames first..first + t are `codes` (B, K, t) and
        of which `total` frames exist: -> wav (B, 1, (stop - start) * hop), window by window."""
        hop = self.hop_length
        left, right = self.decode_context
        parts = []  # on the device the codec decodes on, which may not be the codes' (the spectral codecs: CPU)
        with torch.inference_mode():
            for lo, hi, keep_lo, keep_hi in windows(start, stop, total, chunk, left, right):
                wav = self._decode(codes[..., lo - first : hi - first], lo)  # (B, 1, (hi - lo) * hop)
                parts.append(wav[..., (keep_lo - lo) * hop : (keep_hi - lo) * hop].float())
        return torch.cat(parts, dim=-1) if parts else codes.new_zeros(codes.shape[0], 1, 0, dtype=torch.float32)

    def _chunk(self, chunk_frames: int | None) -> int:
        chunk = self.chunk_frames if chunk_frames is None else chunk_frames
        if not isinstance(chunk, int) or chunk < 1:
            raise CodecError(f"chunk_frames must be a positive integer, got {chunk!r}")
        return chunk

    def _to_codec_rate(self, wav: Tensor, sample_rate: int) -> Tensor:
        if sample_rate == self.sample_rate:
            return wav
        flat = wav.reshape(-1, wav.shape[-1]).cpu().numpy()
        out = resample(flat.astype(np.float32), sample_rate, self.sample_rate)
        return torch.from_numpy(out).reshape(*wav.shape[:-1], -1).to(wav.device)

    @abstractmethod
    def _encode(self, wav: Tensor) -> Tensor:
        """wav (B, 1, N) at the codec rate, N a multiple of hop -> codes (B, >= K, N / hop)."""

    @abstractmethod
    def _decode(self, codes: Tensor, start_frame: int = 0) -> Tensor:
        """codes (B, K, T) -> wav (B, 1, T * hop). `start_frame` is the absolute index of the first
        frame, for codecs whose synthesis depends on absolute time (phases); others ignore it."""


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


def windows(start: int, stop: int, total: int, chunk: int, left: int, right: int):
    """Windows that compute frames start..stop of `total`: (lo, hi, keep_lo, keep_hi) per window,
    where frames lo..hi go in (clipped to 0..total) and frames keep_lo..keep_hi are kept."""
    for keep_lo in range(start, stop, chunk):
        keep_hi = min(keep_lo + chunk, stop)
        yield max(0, keep_lo - left), min(total, keep_hi + right), keep_lo, keep_hi


def _sides(context: int | tuple[int, int]) -> tuple[int, int]:
    left, right = (context, context) if isinstance(context, int) else context
    return int(left), int(right)


def _check_audio(wav: Tensor, sample_rate: int) -> int:
    """The sample rate as an int, after checking wav (B, C, N) and the rate; a CodecError otherwise."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise CodecError(f"sample rate must be a positive integer, got {sample_rate!r}")
    if not (math.isfinite(sample_rate) and sample_rate > 0 and float(sample_rate).is_integer()):
        raise CodecError(f"sample rate must be a positive integer, got {sample_rate!r}")
    if not isinstance(wav, Tensor) or wav.dim() != 3:
        shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
        raise CodecError(f"encode expects audio of shape (batch, channels, samples), got {shape}")
    if wav.numel() == 0:
        raise CodecError(f"cannot encode empty audio of shape {tuple(wav.shape)}")
    if wav.dtype.is_complex or not torch.isfinite(wav).all():
        raise CodecError("cannot encode audio with NaN, infinite or complex values")
    return int(sample_rate)


def load_hf_codec_model(model_class, source: str, what: str, hub_id: str):
    """The `transformers` model of a codec, `model_class.from_pretrained(source)`: a local folder,
    or a hub id (from the cache when offline). A source that cannot be had is one CodecError
    saying how to provide it; for a folder, that is a complete one of its kind, `hub_id`."""
    from safetensors import SafetensorError  # a weights file that is not one: transformers lets it through

    try:
        with quiet_loading():
            return model_class.from_pretrained(source)
    except (OSError, ValueError, SafetensorError) as err:
        if is_local_path(source):
            how = f"a saved {what} folder holds config.json and the weights; {how_to_provide(hub_id)}"
        else:
            how = how_to_provide(source)
        raise CodecError(f"cannot load {what} from {source!r} ({first_line(err)}); {how}") from None
