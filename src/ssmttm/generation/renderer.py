"""The seam between tokens and audio: a renderer turns the LM's codes into waveforms.

`TextToMusic` calls nothing else to make sound: `render` for a whole clip, `stream` for audio while
codes arrive (which `generate_to_file` writes chunk by chunk for long form). A renderer says how
many of the LM's codebooks it reads, the first `codebooks` of them, so an LM can predict more
codebooks than a renderer needs, or (two-stage generation, stage2_renderer.py) a renderer can
synthesise what the LM leaves out. Each call gets the request's `RenderRequest`: the prompts' text
and the seed, which a codec ignores and a stage 2 is conditioned on. `CodecRenderer` decodes with a
codec, which is what a single-stage model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from ssmttm.codecs import Codec


@dataclass(frozen=True)
class RenderRequest:
    """What a renderer may read besides the codes, for B prompts."""

    text: Tensor  # (B, L, E) the prompts' embeddings (not CFG's unconditional rows)
    mask: Tensor | None  # (B, L) True at real positions; None: all real
    seed: int | Sequence[int] | None = None  # the generation's seed(s), for a renderer that samples
    steps: int | None = None  # a sampling renderer's steps (diffusion); None: its own default
    cfg_scale: float | None = None  # a sampling renderer's guidance on the text; None: its own default


@runtime_checkable
class RenderStream(Protocol):
    """Audio out while codes arrive: all pushes and the flush, concatenated, equal `render`."""

    def push(self, codes: Tensor) -> Tensor:
        """codes (B, codebooks, t), the next t frames -> wav (B, 1, n): what can be finished now."""
        ...

    def flush(self) -> Tensor:
        """wav (B, 1, n) for everything held back; the stream is over."""
        ...


@runtime_checkable
class Renderer(Protocol):
    name: str  # what to call it in messages
    sample_rate: int  # of the audio it returns
    frame_rate: float  # code frames per second it reads
    codebooks: int  # how many of the LM's codebooks it reads: the first `codebooks`
    cardinality: int  # entries per codebook

    def render(self, codes: Tensor, request: RenderRequest | None = None) -> Tensor:
        """codes (B, codebooks, T) -> wav (B, 1, N) float32 at `sample_rate`."""
        ...

    def stream(self, request: RenderRequest | None = None) -> RenderStream: ...


class CodecRenderer:
    """A codec's decoder as the renderer: it reads all the codec's codebooks."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.name = f"codec {codec.name}"
        self.sample_rate = codec.sample_rate
        self.frame_rate = codec.frame_rate
        self.codebooks = codec.num_codebooks
        self.cardinality = codec.cardinality

    def render(self, codes: Tensor, request: RenderRequest | None = None) -> Tensor:
        return self.codec.decode(codes)

    def stream(self, request: RenderRequest | None = None) -> RenderStream:
        return self.codec.stream_decoder()
