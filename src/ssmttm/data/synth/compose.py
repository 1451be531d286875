"""Attributes -> a score: the lead melody, its accompaniment, bass and drums, and their mix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pretty_midi

from ssmttm.data.synth.attributes import PieceAttributes
from ssmttm.data.synth.drums import GROOVES, compose_drums
from ssmttm.data.synth.melody import compose_melody
from ssmttm.data.synth.parts import compose_bass, compose_comping, compose_left_hand
from ssmttm.data.synth.timeline import Timeline
from ssmttm.data.synth.vocabulary import DYNAMICS, INSTRUMENTS, STYLES

# The mix: each role's level against the lead's (dB, applied to the rendered audio) and its
# velocity against the lead's (which shapes the SoundFont's timbre), so the melody sits on top,
# the bass and drums under it and the chords behind.
_LEVEL_DB = {"lead": 0.0, "left hand": -5.0, "harmony": -8.0, "bass": -4.0}
_VELOCITY_OFFSET = {"lead": 0, "left hand": -18, "harmony": -14, "bass": -4, "drums": 0}


@dataclass
class Score:
    """A piece as MIDI plus its mix: `levels_db[i]` is track i's loudness against the lead."""

    midi: pretty_midi.PrettyMIDI
    levels_db: tuple[float, ...]


def compose(attrs: PieceAttributes, rng: np.random.Generator, duration_s: float) -> Score:
    """The score of one piece, covering at least `duration_s` (whole bars; notes start before it)."""
    style = STYLES[attrs.style]
    timeline = Timeline.build(
        attrs.progression,
        attrs.tonic_pc,
        attrs.mode,
        style.sevenths,
        attrs.tempo_bpm,
        duration_s,
        swing=attrs.style == "jazz",
    )
    base = DYNAMICS[attrs.dynamics]

    def velocity(role: str) -> float:
        return float(base + _VELOCITY_OFFSET[role])

    lead = INSTRUMENTS[attrs.lead]
    parts = [("lead", lead.program, compose_melody(timeline, style.name, lead, attrs.tonic_pc, velocity("lead"), rng))]
    if not style.slots:  # a solo pianist: the left hand accompanies the right
        parts.append(("left hand", lead.program, compose_left_hand(timeline, velocity("left hand"), rng)))
    for name in attrs.accompaniment:
        inst = INSTRUMENTS[name]
        if inst.texture == "bass":
            parts.append(("bass", inst.program, compose_bass(timeline, style.name, velocity("bass"), rng)))
        else:
            notes = compose_comping(timeline, style.name, inst, velocity("harmony"), rng)
            parts.append(("harmony", inst.program, notes))
    if attrs.drums:
        parts.append(("drums", 0, compose_drums(timeline, style.name, velocity("drums"), rng)))

    midi = pretty_midi.PrettyMIDI(initial_tempo=float(attrs.tempo_bpm))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    midi.key_signature_changes.append(
        pretty_midi.KeySignature(attrs.tonic_pc + (12 if attrs.mode == "minor" else 0), 0.0)
    )
    levels = []
    for role, program, notes in parts:
        track = pretty_midi.Instrument(program, is_drum=role == "drums", name=role)
        track.notes = [note for note in notes if note.start < duration_s]
        midi.instruments.append(track)
        levels.append(GROOVES[style.name].level_db if role == "drums" else _LEVEL_DB[role])
    return Score(midi, tuple(levels))
