"""Where the chords fall and how beats become seconds (with swing), shared by every part."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pretty_midi

from ssmttm.data.synth.theory import Chord, diatonic_chord

BEATS_PER_BAR = 4  # every piece is in 4/4
PHRASE_BARS = 4
# Human timing: a few milliseconds of scatter keeps the parts from sounding quantised without
# moving any onset far enough to blur the beat a listener (or a beat tracker) hears.
TIMING_JITTER_S = 0.004
VELOCITY_JITTER = 4


@dataclass(frozen=True)
class ChordSpan:
    start: float  # beats from the piece start
    beats: float
    chord: Chord

    @property
    def end(self) -> float:
        return self.start + self.beats


@dataclass(frozen=True)
class Timeline:
    """The piece's grid: tempo, swing, length in beats and the chord under every beat."""

    beat_s: float
    swing: bool  # swung eighths: the off-beat eighth sits at 2/3 of the beat
    total_beats: int
    spans: tuple[ChordSpan, ...]

    @classmethod
    def build(
        cls, progression: str, tonic_pc: int, mode: str, seventh: bool, tempo_bpm: int, duration_s: float, swing: bool
    ) -> Timeline:
        """Repeat the progression ("ii:4 V:4 I:8") in whole bars until the piece lasts `duration_s`."""
        beat_s = 60.0 / tempo_bpm
        bars = math.ceil(duration_s / (BEATS_PER_BAR * beat_s) - 1e-9)
        total = bars * BEATS_PER_BAR
        steps = []
        for token in progression.split():
            numeral, _, beats = token.partition(":")
            steps.append((diatonic_chord(numeral, tonic_pc, mode, seventh), float(beats or BEATS_PER_BAR)))
        spans: list[ChordSpan] = []
        start = 0.0
        while start < total:
            chord, beats = steps[len(spans) % len(steps)]
            spans.append(ChordSpan(start, beats, chord))
            start += beats
        return cls(beat_s, swing, total, tuple(spans))

    def span_at(self, beat: float) -> ChordSpan:
        """The chord sounding at `beat` (the last one holds past the end)."""
        for span in self.spans:
            if span.start <= beat + 1e-9 < span.end:
                return span
        return self.spans[-1]

    def next_chord(self, beat: float) -> Chord:
        """The chord that starts after the one at `beat` (the same chord at the end of the piece)."""
        index = self.spans.index(self.span_at(beat))
        return self.spans[min(index + 1, len(self.spans) - 1)].chord

    def time(self, beat: float) -> float:
        """Seconds at `beat`; with swing, an off-beat eighth moves from 1/2 to 2/3 of its beat."""
        whole = math.floor(beat + 1e-9)
        frac = beat - whole
        if self.swing and abs(frac - 0.5) < 1e-9:
            frac = 2 / 3
        return (whole + frac) * self.beat_s


def make_note(
    timeline: Timeline,
    rng: np.random.Generator,
    pitch: int,
    velocity: float,
    start: float,
    beats: float,
    legato: float = 0.9,
    jitter: bool = True,
) -> pretty_midi.Note:
    """A note from `start` for `beats` beats, sounding `legato` of that, with human scatter."""
    onset = timeline.time(start)
    length = max(0.03, legato * (timeline.time(start + beats) - onset))
    if jitter:
        onset = max(0.0, onset + float(rng.normal(0.0, TIMING_JITTER_S)))
        velocity += float(rng.normal(0.0, VELOCITY_JITTER))
    return pretty_midi.Note(int(np.clip(round(velocity), 1, 127)), int(pitch), onset, onset + length)
