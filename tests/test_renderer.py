"""The renderer seam: the pipeline makes sound only through a renderer, which may read fewer of the
LM's codebooks than the LM predicts, for whole clips, streams and files written chunk by chunk."""

from __future__ import annotations

import re

import pytest
import soundfile as sf
import torch

from ssmttm.codecs import load_codec
from ssmttm.generation.pipeline import GenerationError, TextToMusic
from ssmttm.generation.renderer import CodecRenderer, Renderer, RenderStream
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import read_config, save_pretrained
from ssmttm.text import load_text_encoder

TINY = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]


class CoarseRenderer:
    """Reads the first `codebooks` of the LM's codes and decodes them with the codec, the finer
    codebooks left at token 0: a stand-in for a second stage that renders what the LM leaves out."""

    def __init__(self, codebooks: int) -> None:
        self.codec = load_codec("embedded", 4)
        self.name, self.codebooks = "coarse renderer", codebooks
        self.sample_rate, self.frame_rate, self.cardinality = (
            self.codec.sample_rate,
            self.codec.frame_rate,
            self.codec.cardinality,
        )
        self.seen: list[int] = []

    def _full(self, codes: torch.Tensor) -> torch.Tensor:
        self.seen.append(codes.shape[1])
        rest = codes.new_zeros(codes.shape[0], self.codec.num_codebooks - codes.shape[1], codes.shape[2])
        return torch.cat([codes, rest], dim=1)

    def render(self, codes: torch.Tensor, request=None) -> torch.Tensor:
        return self.codec.decode(self._full(codes))

    def stream(self, request=None) -> RenderStream:
        outer, inner = self, self.codec.stream_decoder()

        class Stream:
            def push(self, codes: torch.Tensor) -> torch.Tensor:
                return inner.push(outer._full(codes))

            def flush(self) -> torch.Tensor:
                return inner.flush()

        return Stream()


def _pipeline(tmp_path, renderer: Renderer | None) -> TextToMusic:
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", TINY))
    directory = save_pretrained(lm, tmp_path, codec="embedded", text_encoder="minilm")
    config = read_config(directory)
    return TextToMusic(lm.eval(), load_codec("embedded", 4), load_text_encoder("minilm"), config, renderer=renderer)


def test_a_renderer_reading_fewer_codebooks_serves_clips_streams_and_files(tmp_path):
    renderer = CoarseRenderer(codebooks=1)
    model = _pipeline(tmp_path, renderer)
    assert isinstance(renderer, Renderer) and model.sample_rate == renderer.sample_rate
    whole = model.generate("calm piano", duration=1.0, seed=0)
    streamed = torch.cat(list(model.stream("calm piano", duration=1.0, seed=0, chunk_seconds=0.3)), dim=-1)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    written = model.generate_to_file("calm piano", tmp_path / "out.wav", duration=1.0, seed=0)
    assert sf.info(str(written)).frames == whole.shape[-1]
    assert set(renderer.seen) == {1}  # only the coarse codebook ever reached it
    codes = model.generate_codes("calm piano", duration=1.0, seed=0)
    plain = _pipeline(tmp_path / "plain", None)
    torch.testing.assert_close(renderer.render(codes[:, :1])[..., : whole.shape[-1]], whole, atol=0, rtol=0)
    assert not torch.equal(plain.generate("calm piano", duration=1.0, seed=0), whole)  # the finer codebooks count


def test_the_default_renderer_is_the_codec_and_a_renderer_needing_more_codebooks_is_refused(tmp_path):
    assert isinstance(_pipeline(tmp_path / "a", None).renderer, CodecRenderer)
    message = "coarse renderer renders 5 x 1024 codes; the model predicts 4 x 1024"
    with pytest.raises(GenerationError, match=re.escape(message)):
        _pipeline(tmp_path / "b", CoarseRenderer(codebooks=5))
