"""Drum grooves by style on the General MIDI kit (channel 10), with fills and crashes at phrase ends.

Each voice is a 16th-note grid per bar: "X" accent, "x" normal, "g" ghost note, "." silence.
A voice may list alternatives; one is drawn per bar, which is how a drummer varies a groove.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pretty_midi

from ssmttm.data.synth.timeline import BEATS_PER_BAR, PHRASE_BARS, Timeline, make_note

KICK, RIM, SNARE, CLAP = 36, 37, 38, 39
CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 42, 44, 46
LOW_TOM, MID_TOM, HIGH_TOM = 45, 47, 50
CRASH, RIDE, TAMBOURINE, SHAKER = 49, 51, 54, 70
_LEVEL = {"X": 1.0, "x": 0.82, "g": 0.4}


@dataclass(frozen=True)
class Groove:
    """A style's beat: per-voice patterns, the fill that ends a phrase (last beat), crashes, and how
    loud the kit sits against the lead (dB)."""

    voices: dict[int, tuple[str, ...]]
    level_db: float
    fill: dict[int, str] = field(default_factory=dict)  # 4 steps: the last beat of a phrase
    crash: bool = False  # a crash cymbal on the downbeat of each phrase


GROOVES: dict[str, Groove] = {
    "rock": Groove(  # the backbeat: snare on 2 and 4, eighth-note hats
        {
            KICK: ("X.......X.x.....", "X.......X.x..x..", "X..x....X.x....."),
            SNARE: ("....X.......X...",),
            CLOSED_HAT: ("x.x.x.x.x.x.x.x.",),
        },
        level_db=-2.0,
        fill={SNARE: "xx..", MID_TOM: "..x.", LOW_TOM: "...X"},
        crash=True,
    ),
    "electronic dance": Groove(  # four on the floor, claps on 2 and 4, open hats on the off-beats
        {
            KICK: ("X...X...X...X...",),
            CLAP: ("....x.......x...",),
            OPEN_HAT: ("..x...x...x...x.",),
            CLOSED_HAT: ("xg.gxg.gxg.gxg.g",),
        },
        level_db=0.0,
        fill={SNARE: "xxxX", KICK: "X..."},
        crash=True,
    ),
    "funk": Groove(  # syncopated kick, ghosted snare, sixteenth hats
        {
            KICK: ("X.x.....X.x.....", "X.x.....X....x..", "X......xX.x....."),
            SNARE: ("....X..g.g..X..g", "....X..g....X.g."),
            CLOSED_HAT: ("XgxgXgxgXgxgXgxg",),
        },
        level_db=-2.0,
        fill={SNARE: "gxgX"},
        crash=True,
    ),
    "reggae": Groove(  # the one drop: kick and rim shot together on beat 3 only
        {
            KICK: ("........X.......",),
            RIM: ("........X.......",),
            CLOSED_HAT: ("x.x.x.x.x.x.x.x.", "x.x.x.x.x.xxx.x."),
        },
        level_db=-3.0,
    ),
    "jazz": Groove(  # swing: spang-a-lang on the ride, hi-hat pedal on 2 and 4, feathered kick
        {
            RIDE: ("x...x.x.x...x.x.",),
            PEDAL_HAT: ("....x.......x...",),
            KICK: ("g...g...g...g...",),
            SNARE: ("................", "......g.........", "..........g...g.", "..............g."),
        },
        level_db=-4.0,
    ),
    "folk": Groove(  # a light kit: kick on 1 and 3, rim on 2 and 4, tambourine off-beats
        {
            KICK: ("x.......x.......", "x.......x..x...."),
            RIM: ("....x.......x...",),
            TAMBOURINE: ("..x...x...x...x.",),
            SHAKER: ("g.g.g.g.g.g.g.g.",),
        },
        level_db=-4.0,
    ),
}


def compose_drums(timeline: Timeline, style: str, velocity: float, rng: np.random.Generator) -> list[pretty_midi.Note]:
    """The style's groove over the whole piece (16th-note grid, swung in jazz)."""
    groove = GROOVES[style]
    notes = []
    bars = timeline.total_beats // BEATS_PER_BAR
    for bar in range(bars):
        phrase_end = bar % PHRASE_BARS == PHRASE_BARS - 1 and bool(groove.fill)
        hits: dict[int, str] = {}
        for drum, options in groove.voices.items():
            pattern = options[int(rng.integers(len(options)))]
            hits[drum] = pattern[:12] + "...." if phrase_end else pattern
        if phrase_end:
            for drum, last_beat in groove.fill.items():
                hits[drum] = hits.get(drum, "." * 16)[:12] + last_beat
        if groove.crash and bar % PHRASE_BARS == 0:
            hits[CRASH] = "X" + "." * 15
        for drum, pattern in hits.items():
            for step, mark in enumerate(pattern):
                if mark in _LEVEL:
                    beat = bar * BEATS_PER_BAR + step / 4
                    level = _LEVEL[mark]
                    notes.append(make_note(timeline, rng, drum, velocity * level, beat, 0.25, legato=1.0))
    return notes
