"""The lead melody: phrased rhythm cells, chord tones on strong beats, scale steps between.

A phrase is four bars, A A' B C: a rhythm cell heard twice (a motif), a contrasting cell, and a
cadence cell whose last, long note lands on the tonic (or the chord's root when the tonic is not
in the chord). Phrases start on the tonic too, where the chord has it. Later phrases reuse the
first phrase's rhythms with new pitches, as a tune repeats its rhythm under new words.
"""

from __future__ import annotations

import numpy as np
import pretty_midi

from ssmttm.data.synth.theory import Chord
from ssmttm.data.synth.timeline import BEATS_PER_BAR, PHRASE_BARS, Timeline, make_note
from ssmttm.data.synth.vocabulary import Instrument

# One bar each, in note values: w h q e s (whole .. sixteenth), "." dots, "r" makes a rest.
RHYTHMS: dict[str, tuple[str, ...]] = {
    "ambient": ("h h", "w", "h. q", "rh h", "q q h"),
    "rock": ("q q q q", "e e q q q", "q. e h", "q e e h", "e e e e q q", "rq q q q"),
    "jazz": ("e e e e q q", "q e e e e q", "re e e e h", "e e q e e q", "h e e q", "q. e e e q"),
    "electronic dance": ("e e e e e e q", "q e e q q", "e q e e q e", "q q e e q", "e e rq e e q"),
    "classical piano": ("q q q q", "e e e e h", "q. e q q", "h q q", "e e q q q", "q e e h"),
    "reggae": ("rq q q q", "q. e h", "rq e e h", "q q h", "e e q h"),
    "funk": ("e s s e e q q", "s s e e s s q e e", "q. s s q q", "re s s e e rq q", "e. s e e h"),
    "folk": ("q q q q", "q e e q q", "h q q", "q. e h", "e e q h"),
}
CADENCES: dict[str, tuple[str, ...]] = {
    "ambient": ("w", "h h"),
    "funk": ("q. s s h", "e e q h"),
}
_DEFAULT_CADENCES = ("q q h", "h h", "w", "e e q h")
_VALUES = {"w": 4.0, "h": 2.0, "q": 1.0, "e": 0.5, "s": 0.25}


def parse_cell(cell: str) -> list[tuple[float, float, bool]]:
    """ "q. e rh" -> [(onset, beats, is_rest), ...] from the bar's start."""
    out, onset = [], 0.0
    for token in cell.split():
        rest = token.startswith("r")
        value = token.lstrip("r")
        beats = _VALUES[value[0]] * (1.5 if value.endswith(".") else 1.0)
        out.append((onset, beats, rest))
        onset += beats
    return out


def _phrase_rhythm(style: str, rng: np.random.Generator) -> list[list[tuple[float, float, bool]]]:
    cells = RHYTHMS[style]
    motif, contrast = (cells[i] for i in rng.choice(len(cells), size=2, replace=False))
    cadences = CADENCES.get(style, _DEFAULT_CADENCES)
    cadence = cadences[int(rng.integers(len(cadences)))]
    return [parse_cell(c) for c in (motif, motif, contrast, cadence)]


class _Voice:
    """The melodic line's memory: where it is, where it is heading, and the range it must keep."""

    def __init__(self, instrument: Instrument, rng: np.random.Generator, first_chord: Chord) -> None:
        self.low, self.high, self.rng = instrument.low, instrument.high, rng
        centre = (self.low + self.high) / 2
        self.pitch = min(self._in_range(first_chord.tones), key=lambda p: abs(p - centre))
        self.direction = 1 if rng.random() < 0.5 else -1

    def _in_range(self, pcs: tuple[int, ...]) -> list[int]:
        return [p for p in range(self.low, self.high + 1) if p % 12 in pcs]

    def _steer(self) -> None:
        if self.pitch >= self.high - 3:
            self.direction = -1
        elif self.pitch <= self.low + 3:
            self.direction = 1
        elif self.rng.random() < 0.2:
            self.direction = -self.direction

    def chord_tone(self, chord: Chord, tonic_pc: int) -> int:
        """A chord tone near the last note, leaning the way the line is heading and to the tonic."""
        candidates = [p for p in self._in_range(chord.tones) if abs(p - self.pitch) <= 9]
        weights = np.array(
            [
                np.exp(-abs(p - self.pitch) / 3.0)
                * (2.0 if (p - self.pitch) * self.direction > 0 else 1.0)
                * (0.3 if p == self.pitch else 1.0)
                * (1.5 if p % 12 == tonic_pc else 1.0)
                for p in candidates
            ]
        )
        new = candidates[int(self.rng.choice(len(candidates), p=weights / weights.sum()))]
        if abs(new - self.pitch) > 4:  # a leap is answered by motion the other way (gap fill)
            self.direction = -1 if new > self.pitch else 1
        self.pitch = new
        self._steer()
        return new

    def scale_step(self, chord: Chord) -> int:
        """One (sometimes two) steps along the chord's scale in the current direction."""
        ladder = self._in_range(chord.scale)
        here = min(range(len(ladder)), key=lambda i: abs(ladder[i] - self.pitch))
        steps = 2 if self.rng.random() < 0.2 else 1
        index = int(np.clip(here + self.direction * steps, 0, len(ladder) - 1))
        self.pitch = ladder[index]
        self._steer()
        return self.pitch

    def resolve(self, pc: int) -> int:
        """The nearest pitch of class `pc`: where a phrase comes to rest."""
        self.pitch = min(self._in_range((pc,)), key=lambda p: abs(p - self.pitch))
        return self.pitch


def compose_melody(
    timeline: Timeline,
    style: str,
    instrument: Instrument,
    tonic_pc: int,
    velocity: float,
    rng: np.random.Generator,
) -> list[pretty_midi.Note]:
    """The lead line over the whole piece, in the instrument's range."""
    rhythm = _phrase_rhythm(style, rng)
    voice = _Voice(instrument, rng, timeline.spans[0].chord)
    legato = 0.95 if instrument.texture in ("sustain", "horn") else 0.85
    if style in ("funk", "reggae"):
        legato *= 0.7  # short, punchy phrasing
    notes = []
    for bar in range(timeline.total_beats // BEATS_PER_BAR):
        position = bar % PHRASE_BARS
        sounding = [(onset, beats) for onset, beats, rest in rhythm[position] if not rest]
        for k, (onset, beats) in enumerate(sounding):
            beat = bar * BEATS_PER_BAR + onset
            span = timeline.span_at(beat)
            phrase_start = position == 0 and k == 0
            phrase_end = position == PHRASE_BARS - 1 and k == len(sounding) - 1
            if (phrase_start or phrase_end) and tonic_pc in span.chord.tones:  # a phrase starts and ends at home
                pitch = voice.resolve(tonic_pc)
            elif phrase_end:
                pitch = voice.resolve(span.chord.root)
            elif onset % 2 == 0 or beats >= 1.5 or span.start == beat:  # strong beats and chord changes
                pitch = voice.chord_tone(span.chord, tonic_pc)
            else:
                pitch = voice.scale_step(span.chord)
            accent = 1.08 if onset % 2 == 0 else 1.0
            notes.append(make_note(timeline, rng, pitch, velocity * accent, beat, beats, legato))
    return notes
