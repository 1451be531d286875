"""The seam between tokens and audio: a renderer turns the LM's codes into waveforms.

`TextToMusic` calls nothing else to make sound: `render` for a whole clip, `stream` for audio while
codes arrive (which `generate_to_file` writes chunk by chunk for long form). A renderer says how
many of the LM's codebooks it reads, the first `codebooks` of them, so an LM can predict more
codebooks than a renderer needs, or (two-stage generation) a renderer can synthesise what the LM
leaves out. `CodecRenderer` decodes with a codec, which is what every model does today.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from ssmttm.codecs import Codec


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

    def render(self, codes: Tensor) -> Tensor:
        """codes (B, codebooks, T) -> wav (B, 1, N) float32 at `sample_rate`."""
        ...

    def stream(self) -> RenderStream: ...


class CodecRenderer:
    """A codec's decoder as the renderer: it reads all the codec's codebooks."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.name = f"codec {codec.name}"
        self.sample_rate = codec.sample_rate
        self.frame_rate = codec.frame_rate
        self.codebooks = codec.num_codebooks
        self.cardinality = codec.cardinality

    def render(self, codes: Tensor) -> Tensor:
        return self.codec.decode(codes)

    def stream(self) -> RenderStream:
        return self.codec.stream_decoder()
