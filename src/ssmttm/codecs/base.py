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

The continuous side serves two-stage generation (an LM predicts the first codebook's tokens, a
diffusion model the rest as continuous latents). A codec's codebooks are either "additive" (each entry lives
in one shared space and a frame's latent is their sum: residual quantizers such as the embedded
codec's and EnCodec's) or "stacked" (each codebook has its own low-dimensional space and a frame's
latent concatenates them: DAC's factorized codes). `latents` maps codes to that space,
`two_stage_target` gives what a two-stage model trains on, `compose` joins its two halves and
`decode_latents` (or `latent_stream_decoder`) turns the result into audio, in windows as `decode`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

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


@dataclass(frozen=True)
class TwoStageTarget:
    """What a two-stage model trains on: stage 1 predicts `coarse`, stage 2 generates `residual`;
    `codec.compose(coarse, residual)` is the whole continuous representation."""

    coarse: Tensor  # (B, 1, T) int64: the first codebook's codes (index 0)
    residual: Tensor  # (B, D, T) float32, D = codec.latent_dim(1, codec.num_codebooks)


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
    # The continuous side: None for a codec without one (every latent method is then a CodecError),
    # "additive" when the codebooks' entries sum in one space, "stacked" when each codebook has its
    # own space of `codebook_latent_dim` channels and they concatenate.
    latent_layout: str | None = None
    codebook_latent_dim: int = 0
    snap_latents: bool = False  # decode_latents' default: snap to codebook entries first, or not

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
        padded = self._encoder_input(wav, sample_rate)  # (B, 1, T * hop)
        parts = []
        with torch.inference_mode():
            for window, keep in self._encode_windows(padded, chunk_frames):
                codes = self._encode(window)  # (B, >= K, frames of the window)
                parts.append(codes[:, : self.num_codebooks, keep])
        return torch.cat(parts, dim=-1).long()

    def _encoder_input(self, wav: Tensor, sample_rate: int) -> Tensor:
        """wav (B, C, N) at `sample_rate` -> mono (B, 1, T * hop) at the codec's rate, the end padded
        with silence to a whole frame (at least one)."""
        rate = _check_audio(wav, sample_rate)
        mono = self._to_codec_rate(wav.float().mean(dim=1, keepdim=True), rate)  # (B, 1, N')
        frames = max(1, self.num_frames(mono.shape[-1]))
        return torch.nn.functional.pad(mono, (0, frames * self.hop_length - mono.shape[-1]))  # (B, 1, T * hop)

    def _encode_windows(self, padded: Tensor, chunk_frames: int | None) -> Iterator[tuple[Tensor, slice]]:
        """padded (B, 1, T * hop) -> per window, its audio with the encoder's context and the slice of
        its frames to keep: encode and two_stage_target share one windowing."""
        hop = self.hop_length
        frames = padded.shape[-1] // hop
        left, right = self.encode_context
        for lo, hi, start, stop in windows(0, frames, frames, self._chunk(chunk_frames), left, right):
            yield padded[..., lo * hop : hi * hop], slice(start - lo, stop - lo)

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

    def check_codes(self, codes: Tensor, num_codebooks: int | None = None, what: str = "decode") -> Tensor:
        """codes (B, K, T) of integers in 0..cardinality - 1, as int64; a CodecError otherwise. K is
        `num_codebooks` (default: all in use); `what` names the caller in the message."""
        k = self.num_codebooks if num_codebooks is None else num_codebooks
        if not isinstance(codes, Tensor) or codes.dim() != 3 or codes.shape[1] != k:
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise CodecError(f"{what} expects codes (batch, {k}, frames), got {shape}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise CodecError(f"codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cardinality):
            raise CodecError(f"codes must lie in 0..{self.cardinality - 1}")
        return codes.long()

    def decode_span(
        self,
        codes: Tensor,
        first: int,
        start: int,
        stop: int,
        total: int,
        chunk: int,
        decode: Callable[[Tensor, int], Tensor] | None = None,
    ) -> Tensor:
        """Frames start..stop of a sequence whose frames first..first + t are `codes` (B, K, t) and
        of which `total` frames exist: -> wav (B, 1, (stop - start) * hop), window by window.
        `decode(window, start_frame)` decodes one window (default `_decode`); latents (B, D, t) go
        through here too, with `_decode_latents`, so both share one windowing."""
        decode = self._decode if decode is None else decode
        hop = self.hop_length
        left, right = self.decode_context
        parts = []  # on the device the codec decodes on, which may not be the codes' (the spectral codecs: CPU)
        with torch.inference_mode():
            for lo, hi, keep_lo, keep_hi in windows(start, stop, total, chunk, left, right):
                wav = decode(codes[..., lo - first : hi - first], lo)  # (B, 1, (hi - lo) * hop)
                parts.append(wav[..., (keep_lo - lo) * hop : (keep_hi - lo) * hop].float())
        return torch.cat(parts, dim=-1) if parts else codes.new_zeros(codes.shape[0], 1, 0, dtype=torch.float32)

    # ---- the continuous side ----

    def latent_dim(self, start: int = 0, stop: int | None = None) -> int:
        """Channels of `latents(codes, start, stop)`: one codebook's for "additive" codebooks, the
        sum over codebooks start..stop - 1 for "stacked" ones."""
        start, stop = self._codebook_range(start, stop)
        if self.latent_layout == "additive":
            return self.codebook_latent_dim
        return self.codebook_latent_dim * (stop - start)

    def latents(self, codes: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """codes (B, stop - start, T) of codebooks start..stop - 1 (0-based, as a slice; stop defaults
        to start + codes.shape[1]) -> latents (B, latent_dim(start, stop), T) float32: their entries
        summed in codebook order ("additive") or concatenated along channels ("stacked")."""
        self._require_latents()
        count = codes.shape[1] if isinstance(codes, Tensor) and codes.dim() == 3 else 0
        start, stop = self._codebook_range(start, start + count if stop is None else stop)
        codes = self.check_codes(codes, stop - start, what=f"latents of codebooks {start}..{stop - 1}")
        with torch.no_grad():  # not inference_mode: a stage 2 model trains on these
            entries = [self._entry(k, codes[:, i]) for i, k in enumerate(range(start, stop))]  # each (B, d, T)
            if self.latent_layout == "stacked":
                return torch.cat([self._zeros(codes, 0), *entries], dim=1)  # (B, d * (stop - start), T)
            out = self._zeros(codes, self.codebook_latent_dim)  # (B, d, T)
            for entry in entries:  # from zero, in codebook order, as the codec's own dequantizer sums
                out = out + entry
            return out

    def compose(self, coarse: Tensor, residual: Tensor) -> Tensor:
        """Stage 1's codes (B, 1, T) of codebook 0 and stage 2's residual (B, latent_dim(1, K), T)
        -> z (B, latent_dim(0, K), T), what `decode_latents` takes."""
        coarse = self.check_codes(coarse, 1, what="compose")
        residual = self.check_latents(residual, self.latent_dim(1, self.num_codebooks), what="compose's residual")
        if residual.shape[0] != coarse.shape[0] or residual.shape[-1] != coarse.shape[-1]:
            raise CodecError(f"compose expects a residual of the codes' batch and frames, got {tuple(residual.shape)}")
        base = self.latents(coarse, 0, 1)  # (B, d, T)
        residual = residual.to(base.device)
        return base + residual if self.latent_layout == "additive" else torch.cat([base, residual], dim=1)

    def two_stage_target(self, wav: Tensor, sample_rate: int, chunk_frames: int | None = None) -> TwoStageTarget:
        """wav (B, C, N) at `sample_rate` -> codebook 0's codes (B, 1, T) and the residual (B, D, T)
        that a stage 2 model learns, in windows like `encode` (so they equal a whole pass). What the
        residual holds is the codec's choice (see its `_two_stage`)."""
        self._require_latents()
        padded = self._encoder_input(wav, sample_rate)  # (B, 1, T * hop)
        coarse, residual = [], []
        with torch.no_grad():  # not inference_mode: a stage 2 model trains on these
            for window, keep in self._encode_windows(padded, chunk_frames):
                codes, rest = self._two_stage(window)  # (B, 1, t), (B, D, t)
                coarse.append(codes[..., keep])
                residual.append(rest[..., keep])
        return TwoStageTarget(torch.cat(coarse, dim=-1).long(), torch.cat(residual, dim=-1).float())

    def decode_latents(self, z: Tensor, chunk_frames: int | None = None, snap: bool | None = None) -> Tensor:
        """z (B, latent_dim(0, K), T) -> wav (B, 1, T * hop) float32, in windows like `decode`. With
        `snap` (default: the codec's `snap_latents`) z goes to its nearest codes first, then decodes."""
        z = self.check_latents(z, self.latent_dim(0, self.num_codebooks))
        frames = z.shape[-1]
        decode = partial(self._decode_latents, snap=self.snap_latents if snap is None else snap)
        return self.decode_span(z, 0, 0, frames, frames, self._chunk(chunk_frames), decode)

    def nearest_codes(self, z: Tensor) -> Tensor:
        """z (B, latent_dim(0, K), T) -> codes (B, K, T) int64: the codes `decode_latents(z, snap=True)`
        decodes, found by the codec's own quantizer."""
        z = self.check_latents(z, what="nearest_codes")
        with torch.inference_mode():
            return self._snap(z).long()

    def latent_stream_decoder(self, chunk_frames: int | None = None, snap: bool | None = None) -> LatentStreamDecoder:
        """Decodes latents as they arrive: `push(z (B, D, t)) -> wav (B, 1, n)`, then `flush()`.
        All pushes and the flush, concatenated, equal `decode_latents` of all the latents."""
        self._require_latents()
        return LatentStreamDecoder(self, self._chunk(chunk_frames), self.snap_latents if snap is None else snap)

    def check_latents(self, z: Tensor, channels: int | None = None, what: str = "decode_latents") -> Tensor:
        """z (B, channels, T) of finite floats, as float32; a CodecError otherwise. `channels`
        defaults to the whole representation's, latent_dim(0, K)."""
        channels = self.latent_dim(0, self.num_codebooks) if channels is None else channels
        if not isinstance(z, Tensor) or z.dim() != 3 or z.shape[1] != channels:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise CodecError(f"{what} expects latents (batch, {channels}, frames), got {shape}")
        if not z.dtype.is_floating_point or not torch.isfinite(z).all():
            raise CodecError(f"{what} expects finite floating-point latents, got {z.dtype}")
        return z.float()

    def _decode_latents(self, z: Tensor, start_frame: int = 0, snap: bool = False) -> Tensor:
        """One window: z (B, D, T) -> wav (B, 1, T * hop), snapped to codes first or not."""
        if snap:
            return self._decode(self._snap(z), start_frame)
        return self._decode_continuous(z, start_frame)

    def _codebook_range(self, start: int, stop: int | None) -> tuple[int, int]:
        self._require_latents()
        stop = self.num_codebooks if stop is None else stop
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= self.num_codebooks):
            raise CodecError(f"codebooks {start}..{stop} are not a range within the {self.num_codebooks} in use")
        return start, stop

    def _require_latents(self) -> None:
        if self.latent_layout not in ("additive", "stacked"):
            raise self._no_latents()

    def _no_latents(self) -> CodecError:
        return CodecError(f"{type(self).__name__} has no continuous latents: it does not expose its codebook entries")

    def _zeros(self, codes: Tensor, channels: int) -> Tensor:
        """(B, channels, T) float32 zeros for codes (B, k, T), on the device the codec computes on."""
        device = getattr(self, "device", torch.device("cpu"))  # the neural codecs keep theirs; the spectral: CPU
        return torch.zeros(codes.shape[0], channels, codes.shape[-1], device=device)

    # Hooks of the continuous side; a codec with a `latent_layout` implements all four.

    def _entry(self, k: int, codes: Tensor) -> Tensor:
        """Codebook k's entries of codes (B, T) -> (B, codebook_latent_dim, T)."""
        raise self._no_latents()

    def _two_stage(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """wav (B, 1, N) at the codec rate -> codebook 0's codes (B, 1, N / hop), residual (B, D, N / hop)."""
        raise self._no_latents()

    def _snap(self, z: Tensor) -> Tensor:
        """z (B, D, T) -> the codes (B, K, T) whose latents are nearest, by the codec's own metric."""
        raise self._no_latents()

    def _decode_continuous(self, z: Tensor, start_frame: int = 0) -> Tensor:
        """z (B, D, T) -> wav (B, 1, T * hop) without quantizing z."""
        raise self._no_latents()

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
    """`push(codes (B, K, t)) -> wav (B, 1, n)` as frames arrive, then `flush() -> wav` once.

    What a frame is (codes, or latents in `LatentStreamDecoder`) is set by `_check` and `_decode`."""

    kind = "codes"  # what a push holds, for messages
    opener = "stream_decoder"  # the codec method that starts a stream of this kind

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
            raise CodecError(f"this stream was flushed; start a new one with codec.{self.opener}()")
        codes = self._check(codes)
        if self._codes is None:
            self._codes = codes[..., :0]
        if codes.shape[0] != self._codes.shape[0]:
            raise CodecError(f"the stream's batch is {self._codes.shape[0]}, got {self.kind} for {codes.shape[0]}")
        self._codes = torch.cat([self._codes, codes.to(self._codes.device)], dim=-1)
        self._received += codes.shape[-1]
        return self._emit(self._received - self.right)

    def flush(self) -> Tensor:
        """wav (B, 1, n) for the frames held back; the stream is over."""
        wav = self._emit(self._received)
        self._closed = True
        return wav

    def _check(self, frames: Tensor) -> Tensor:
        return self.codec.check_codes(frames)

    def _decode(self, frames: Tensor, start_frame: int) -> Tensor:
        return self.codec._decode(frames, start_frame)

    def _emit(self, stop: int) -> Tensor:
        if self._codes is None:
            return torch.zeros(0, 1, 0)
        start = self._emitted
        wav = self.codec.decode_span(
            self._codes, self._first, start, max(start, stop), self._received, self.chunk_frames, self._decode
        )
        self._emitted = max(start, stop)
        drop = max(0, self._emitted - self.left - self._first)
        if drop:
            self._codes = self._codes[..., drop:].clone()  # a copy, so the dropped frames are freed
            self._first += drop
        return wav


class LatentStreamDecoder(StreamDecoder):
    """`push(z (B, D, t)) -> wav (B, 1, n)` as latents arrive, then `flush() -> wav` once: the
    same windows as `StreamDecoder`, decoded by `Codec.decode_latents`' window."""

    kind = "latents"
    opener = "latent_stream_decoder"

    def __init__(self, codec: Codec, chunk_frames: int, snap: bool):
        super().__init__(codec, chunk_frames)
        self.snap = snap

    def _check(self, frames: Tensor) -> Tensor:
        return self.codec.check_latents(frames)

    def _decode(self, frames: Tensor, start_frame: int) -> Tensor:
        return self.codec._decode_latents(frames, start_frame, snap=self.snap)


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
