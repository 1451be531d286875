"""Accompaniment: comping patterns by style and texture, bass lines on the chord roots, and the
classical left hand.

Patterns are written per bar in beats, and the chord at each hit decides its pitches, so one
pattern serves every progression and harmonic rhythm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pretty_midi

from ssmttm.data.synth.theory import Chord, nearest_pitch, voice_chord
from ssmttm.data.synth.timeline import BEATS_PER_BAR, ChordSpan, Timeline, make_note
from ssmttm.data.synth.vocabulary import Instrument

Voicing = Literal["block", "shell", "power", "arpeggio", "strum"]


def _grid(steps: str, length: float) -> tuple[tuple[float, float], ...]:
    """A 16th-note grid "x..x" -> hits (onset, length) at the marked steps."""
    return tuple((i / 4, length) for i, c in enumerate(steps) if c == "x")


@dataclass(frozen=True)
class Comp:
    """How a chord instrument plays a bar: its hits (onset, beats), voicing and register.

    `tie` lets a held chord ring on into the next bar instead of being struck again.
    """

    hits: tuple[tuple[float, float], ...]
    voicing: Voicing
    low: int
    high: int
    tie: bool = False


_HOLD = ((0.0, 4.0),)
_EIGHTHS = tuple((i / 2, 0.5) for i in range(8))
_OFFBEATS = ((0.5, 0.3), (1.5, 0.3), (2.5, 0.3), (3.5, 0.3))

# Looked up by (style, instrument), then (style, texture), then texture alone.
COMPING: dict[tuple[str, str], Comp] = {
    ("ambient", "sustain"): Comp(_HOLD, "block", 48, 72, tie=True),
    ("ambient", "keys"): Comp(_EIGHTHS, "arpeggio", 55, 79),
    ("ambient", "music box"): Comp(_EIGHTHS, "arpeggio", 67, 91),
    ("rock", "overdriven guitar"): Comp(tuple((i / 2, 0.45) for i in range(8)), "power", 40, 64),
    ("rock", "guitar"): Comp(((0, 1.0), (1, 0.5), (1.5, 1.0), (2.5, 0.5), (3, 1.0)), "block", 52, 76),
    ("rock", "keys"): Comp(((0, 0.9), (1, 0.9), (2, 0.9), (3, 0.9)), "block", 52, 76),
    ("rock", "sustain"): Comp(_HOLD, "block", 52, 76, tie=True),
    ("jazz", "keys"): Comp(((0, 1.0), (1.5, 0.5), (3, 0.5)), "shell", 52, 74),
    ("jazz", "guitar"): Comp(((0, 0.8), (1, 0.8), (2, 0.8), (3, 0.8)), "shell", 50, 70),
    ("electronic dance", "sustain"): Comp(_HOLD, "block", 55, 79, tie=True),
    ("electronic dance", "keys"): Comp(_OFFBEATS, "block", 57, 79),
    ("reggae", "guitar"): Comp(((1, 0.25), (3, 0.25)), "block", 60, 79),
    ("reggae", "keys"): Comp(((1, 0.25), (3, 0.25)), "block", 57, 76),
    ("reggae", "sustain"): Comp(_OFFBEATS, "block", 55, 72),
    ("funk", "guitar"): Comp(_grid("x.xxx.x.x.xxx.x.", 0.15), "shell", 55, 74),
    ("funk", "keys"): Comp(_grid("x..xx.x.x..xx.x.", 0.2), "block", 55, 76),
    ("funk", "sustain"): Comp(_grid("x.....x...x.....", 0.6), "block", 55, 76),
    ("funk", "horn"): Comp(_grid("......x.......x.", 0.3), "block", 58, 79),
    ("folk", "guitar"): Comp(((0, 1), (1, 0.5), (1.5, 1), (2.5, 0.5), (3, 0.5), (3.5, 0.5)), "strum", 48, 67),
    ("folk", "keys"): Comp(_EIGHTHS, "arpeggio", 48, 72),
    ("folk", "sustain"): Comp(((1, 0.8), (3, 0.8)), "block", 55, 72),
    ("folk", "cello"): Comp(_HOLD, "block", 43, 62, tie=True),
}
_FALLBACK: dict[str, Comp] = {
    "keys": Comp(((0, 0.9), (1, 0.9), (2, 0.9), (3, 0.9)), "block", 52, 76),
    "guitar": Comp(((0, 1.8), (2, 1.8)), "block", 50, 72),
    "sustain": Comp(_HOLD, "block", 52, 76, tie=True),
    "horn": Comp(_HOLD, "block", 55, 76, tie=True),
}


def comp_for(style: str, instrument: Instrument) -> Comp:
    """The comping pattern this instrument plays in this style."""
    for key in ((style, instrument.name), (style, instrument.texture)):
        if key in COMPING:
            return COMPING[key]
    return _FALLBACK[instrument.texture]


def _voicing(chord: Chord, comp: Comp, previous: tuple[int, ...] | None) -> tuple[int, ...]:
    if comp.voicing == "power":  # root, fifth, octave: always in root position
        root = nearest_pitch(chord.root, previous[0] if previous else comp.low + 6, comp.low, comp.high - 12)
        return (root, root + 7, root + 12)
    if comp.voicing == "shell":  # root, third and seventh: the jazz and funk guitarist's grip
        return voice_chord((chord.root, chord.third, chord.tones[-1]), previous, comp.low, comp.high)
    if comp.voicing == "strum":  # six strings: the triad with its lowest note doubled an octave up
        triad = voice_chord(chord.tones, previous[:3] if previous else None, comp.low, comp.high)
        return (*triad, triad[0] + 12) if triad[0] + 12 <= comp.high else triad
    return voice_chord(chord.tones, previous, comp.low, comp.high)


def compose_comping(
    timeline: Timeline, style: str, instrument: Instrument, velocity: float, rng: np.random.Generator
) -> list[pretty_midi.Note]:
    """Chords for the whole piece, voice-led: each voicing moves least from the one before."""
    comp = comp_for(style, instrument)
    notes: list[pretty_midi.Note] = []
    previous: tuple[int, ...] | None = None
    held: list[pretty_midi.Note] = []
    held_span: ChordSpan | None = None
    arpeggio_step = 0
    for bar in range(timeline.total_beats // BEATS_PER_BAR):
        for onset, beats in comp.hits:
            beat = bar * BEATS_PER_BAR + onset
            span = timeline.span_at(beat)
            beats = min(beats, span.end - beat)  # a chord's notes stop where the chord does
            voicing = _voicing(span.chord, comp, previous)
            if comp.tie and span is held_span and previous == voicing:
                end = timeline.time(beat + beats)
                for note in held:
                    note.end = max(note.end, end)
                continue
            previous = voicing
            if comp.voicing == "arpeggio":
                order = voicing + voicing[-2:0:-1]  # up and back down
                pitch = order[arpeggio_step % len(order)]
                arpeggio_step += 1
                # each note rings on under the next, as on a harp or a piano with the pedal down
                notes.append(make_note(timeline, rng, pitch, velocity, beat, beats * 2, legato=0.95))
                continue
            accent = 1.1 if onset == 0 else 1.0
            held = []
            for i, pitch in enumerate(voicing):
                note = make_note(timeline, rng, pitch, velocity * accent, beat, beats, legato=0.95)
                if comp.voicing == "strum":  # a downstroke reaches the strings one after another
                    note.start += 0.008 * i
                held.append(note)
            held_span = span
            notes.extend(held)
    return notes


@dataclass(frozen=True)
class BassStep:
    onset: float
    beats: float
    tone: Literal["root", "third", "fifth", "seventh", "octave", "approach"]


def _steps(*items: tuple[float, float, str]) -> tuple[BassStep, ...]:
    return tuple(BassStep(*item) for item in items)


BASS_LINES: dict[str, tuple[tuple[BassStep, ...], ...]] = {
    "rock": (
        _steps(*((i / 2, 0.45, "root") for i in range(8))),
        _steps((0, 1.5, "root"), (1.5, 0.5, "root"), (2, 1, "fifth"), (3, 1, "octave")),
    ),
    "jazz": (
        _steps((0, 1, "root"), (1, 1, "third"), (2, 1, "fifth"), (3, 1, "approach")),
        _steps((0, 1, "root"), (1, 1, "fifth"), (2, 1, "third"), (3, 1, "approach")),
    ),
    "electronic dance": (
        _steps((0.5, 0.4, "root"), (1.5, 0.4, "root"), (2.5, 0.4, "root"), (3.5, 0.4, "root")),
        _steps(*((i / 2, 0.4, "root" if i % 2 == 0 else "octave") for i in range(8))),
    ),
    "reggae": (
        _steps((0, 1.5, "root"), (1.5, 0.5, "third"), (2, 1, "fifth"), (3, 0.5, "octave"), (3.5, 0.5, "fifth")),
    ),
    "funk": (
        _steps(
            (0, 0.4, "root"),
            (0.75, 0.2, "root"),
            (1, 0.2, "octave"),
            (1.5, 0.2, "root"),
            (2, 0.4, "root"),
            (2.5, 0.2, "fifth"),
            (3, 0.2, "seventh"),
            (3.5, 0.2, "octave"),
            (3.75, 0.2, "fifth"),
        ),
    ),
    "folk": (_steps((0, 1, "root"), (2, 1, "fifth")), _steps((0, 1.5, "root"), (1.5, 0.5, "third"), (2, 2, "fifth"))),
}
_BASS_LOW, _BASS_HIGH = 28, 52  # E1 to E3, where a bass line sits


def compose_bass(timeline: Timeline, style: str, velocity: float, rng: np.random.Generator) -> list[pretty_midi.Note]:
    """A bass line on the chord roots; a step that falls on a chord change always plays the root."""
    lines = BASS_LINES[style]
    line = lines[int(rng.integers(len(lines)))]
    root = nearest_pitch(timeline.spans[0].chord.root, 36, _BASS_LOW, _BASS_HIGH)
    notes = []
    for bar in range(timeline.total_beats // BEATS_PER_BAR):
        for step in line:
            beat = bar * BEATS_PER_BAR + step.onset
            span = timeline.span_at(beat)
            if span.start == beat or step.tone == "root":
                root = nearest_pitch(span.chord.root, root, _BASS_LOW, _BASS_HIGH - 12)
                pitch = root
            elif step.tone == "approach":  # a semitone below the next chord's root leads into it
                target = nearest_pitch(timeline.next_chord(beat).root, root, _BASS_LOW + 1, _BASS_HIGH)
                pitch = target - 1
            else:
                pitch = root + _interval(span.chord, step.tone)
            accent = 1.1 if step.onset == 0 else 1.0
            notes.append(make_note(timeline, rng, pitch, velocity * accent, beat, step.beats, legato=0.9))
    return notes


def _interval(chord: Chord, tone: str) -> int:
    if tone == "octave":
        return 12
    pcs = {"third": chord.third, "fifth": chord.fifth, "seventh": chord.tones[-1]}
    return (pcs[tone] - chord.root) % 12


ALBERTI = (0, 2, 1, 2)  # root, fifth, third, fifth: the classical broken-chord bass
BROKEN = (0, 2, 3, 1)  # root, fifth, octave, third: a wider romantic figure


def compose_left_hand(timeline: Timeline, velocity: float, rng: np.random.Generator) -> list[pretty_midi.Note]:
    """The solo pianist's left hand: eighth-note broken chords under the melody, voice-led."""
    figure = ALBERTI if rng.random() < 0.5 else BROKEN
    notes = []
    root = nearest_pitch(timeline.spans[0].chord.root, 45, 36, 55)
    for eighth in range(timeline.total_beats * 2):
        beat = eighth / 2
        chord = timeline.span_at(beat).chord
        root = nearest_pitch(chord.root, root, 36, 50)
        third = root + (chord.third - chord.root) % 12
        fifth = root + (chord.fifth - chord.root) % 12
        pitch = (root, third, fifth, root + 12)[figure[eighth % 4]]
        accent = 1.1 if eighth % 8 == 0 else 1.0
        notes.append(make_note(timeline, rng, pitch, velocity * accent, beat, 0.5, legato=1.6))
    return notes
