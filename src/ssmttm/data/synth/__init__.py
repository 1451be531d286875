"""The synthetic captioned-music corpus: symbolic pieces composed from drawn attributes, rendered
with a General MIDI SoundFont, and captions that are true by construction.

    from ssmttm.data.synth import synthesize_corpus
    summary = synthesize_corpus("data/synth", n=1000, seed=0, workers=2, hold_out="style=jazz,lead=saxophone")

Modules: vocabulary (styles, instruments, moods), attributes (drawing, hold-out specs), theory,
timeline, melody, parts and drums (composition), compose (the score), render (tinysoundfont),
captions, corpus (files on disk), command (the `synth` CLI subcommand).
"""

from ssmttm.data.synth.attributes import HoldOut, PieceAttributes, draw_attributes, sample_attributes
from ssmttm.data.synth.captions import make_caption
from ssmttm.data.synth.compose import Score, compose
from ssmttm.data.synth.corpus import (
    DEFAULT_DURATION_S,
    DEFAULT_SAMPLE_RATE,
    CorpusSettings,
    CorpusSummary,
    make_piece,
    piece_id,
    piece_record,
    piece_rngs,
    render_piece,
    synthesize_corpus,
)
from ssmttm.data.synth.render import RendererMissingError, level, render_midi, render_score, soundfont_path

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_SAMPLE_RATE",
    "CorpusSettings",
    "CorpusSummary",
    "HoldOut",
    "PieceAttributes",
    "RendererMissingError",
    "Score",
    "compose",
    "draw_attributes",
    "level",
    "make_caption",
    "make_piece",
    "piece_id",
    "piece_record",
    "piece_rngs",
    "render_midi",
    "render_piece",
    "render_score",
    "sample_attributes",
    "soundfont_path",
    "synthesize_corpus",
]
