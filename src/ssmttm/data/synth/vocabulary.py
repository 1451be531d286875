"""What a synthetic piece can be: instruments, moods and styles, with the words captions use for them.

Every phrase listed here is a true description of the thing it belongs to (the General MIDI
program that plays, the style's grooves, the mood's tempo and mode), which is what lets the
captions be true by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Texture = Literal["keys", "guitar", "sustain", "horn", "bass"]


@dataclass(frozen=True)
class Instrument:
    """A General MIDI program as a piece uses it.

    `texture` decides how it accompanies (struck chords, strummed, held, stabs, bass line);
    `low`/`high` bound its melodies (MIDI notes, the comfortable part of the real instrument).
    """

    name: str
    program: int
    texture: Texture
    phrases: tuple[str, ...]
    low: int = 60
    high: int = 84


_INSTRUMENT_LIST = (
    Instrument("piano", 0, "keys", ("piano", "acoustic piano", "grand piano"), 60, 86),
    Instrument("electric piano", 4, "keys", ("electric piano", "Rhodes-style electric piano", "e-piano"), 58, 84),
    Instrument("clavinet", 7, "keys", ("clavinet", "clav"), 58, 82),
    Instrument("music box", 10, "keys", ("music box",), 72, 96),
    Instrument("vibraphone", 11, "keys", ("vibraphone",), 60, 86),
    Instrument("harp", 46, "keys", ("harp",), 55, 86),
    Instrument("organ", 16, "sustain", ("organ", "Hammond-style organ", "drawbar organ"), 58, 84),
    Instrument("accordion", 21, "sustain", ("accordion",), 58, 84),
    Instrument("harmonica", 22, "horn", ("harmonica", "blues harp"), 60, 84),
    Instrument("acoustic guitar", 25, "guitar", ("acoustic guitar", "steel-string acoustic guitar"), 55, 81),
    Instrument("jazz guitar", 26, "guitar", ("jazz guitar", "hollow-body electric guitar"), 55, 81),
    Instrument("clean electric guitar", 27, "guitar", ("clean electric guitar", "clean-toned electric guitar"), 55, 81),
    Instrument(
        "overdriven guitar", 29, "guitar", ("overdriven electric guitar", "overdriven guitar", "crunchy guitar"), 52, 81
    ),
    Instrument("upright bass", 32, "bass", ("upright bass", "double bass")),
    Instrument("electric bass", 33, "bass", ("electric bass", "bass guitar")),
    Instrument("synth bass", 38, "bass", ("synth bass", "synthesizer bass")),
    Instrument("violin", 40, "sustain", ("violin", "fiddle"), 62, 88),
    Instrument("cello", 42, "sustain", ("cello",), 48, 72),
    Instrument("strings", 48, "sustain", ("strings", "a string section", "a string ensemble")),
    Instrument("choir", 52, "sustain", ("a choir", "a wordless choir")),
    Instrument("trumpet", 56, "horn", ("trumpet",), 58, 82),
    Instrument("brass section", 61, "horn", ("a brass section", "a horn section", "brass")),
    Instrument("saxophone", 66, "horn", ("tenor saxophone", "tenor sax", "saxophone", "sax"), 52, 76),
    Instrument("clarinet", 71, "horn", ("clarinet",), 55, 84),
    Instrument("flute", 73, "horn", ("flute",), 67, 91),
    Instrument("square lead", 80, "horn", ("square-wave synth", "chiptune-like square synth")),
    Instrument("synth lead", 81, "horn", ("sawtooth synth", "saw-wave synth", "buzzy sawtooth synth")),
    Instrument("synth pad", 89, "sustain", ("synth pad", "warm synth pad", "synthesizer pad")),
)
INSTRUMENTS: dict[str, Instrument] = {inst.name: inst for inst in _INSTRUMENT_LIST}


@dataclass(frozen=True)
class Mood:
    """A mood: the modes it can be heard in and its energy, which moves tempo and dynamics.

    energy -1 keeps to the slow part of the style's tempo range and is never loud; +1 keeps to the
    fast part and is never soft; 0 may be anything the style allows.
    """

    name: str
    modes: tuple[str, ...]
    energy: int
    phrases: tuple[str, ...]


_BOTH = ("major", "minor")
_MOOD_LIST = (
    Mood("calm", _BOTH, -1, ("calm", "tranquil", "serene")),
    Mood("dreamy", _BOTH, -1, ("dreamy", "ethereal")),
    Mood("peaceful", ("major",), -1, ("peaceful", "gentle")),
    Mood("relaxed", _BOTH, -1, ("relaxed", "laid-back", "mellow", "easygoing")),
    Mood("romantic", _BOTH, -1, ("romantic", "tender", "lyrical")),
    Mood("nostalgic", _BOTH, -1, ("nostalgic", "sentimental")),
    Mood("melancholic", ("minor",), -1, ("melancholic", "wistful", "sad", "sombre")),
    Mood("mysterious", ("minor",), 0, ("mysterious", "brooding")),
    Mood("dark", ("minor",), 0, ("dark", "moody", "ominous")),
    Mood("cheerful", ("major",), 0, ("cheerful", "happy", "bright", "joyful")),
    Mood("playful", ("major",), 0, ("playful", "bouncy", "lighthearted")),
    Mood("groovy", _BOTH, 0, ("groovy",)),
    Mood("sophisticated", _BOTH, 0, ("sophisticated", "elegant", "classy")),
    Mood("energetic", _BOTH, 1, ("energetic", "driving", "high-energy")),
    Mood("uplifting", ("major",), 1, ("uplifting", "euphoric", "feel-good")),
    Mood("dramatic", ("minor",), 1, ("dramatic", "intense", "stormy")),
)
MOODS: dict[str, Mood] = {mood.name: mood for mood in _MOOD_LIST}

# Velocities of the lead at each level; the other parts sit relative to it (compose.py).
DYNAMICS: dict[str, int] = {"soft": 52, "medium": 78, "loud": 104}
# The loudness each level is mixed to (RMS, dBFS): after levelling, soft still sounds soft.
LOUDNESS_DBFS: dict[str, float] = {"soft": -27.0, "medium": -21.0, "loud": -16.0}
DYNAMICS_PHRASES: dict[str, tuple[str, ...]] = {
    "soft": ("soft", "quiet", "delicate", "gentle"),
    "medium": ("moderately loud", "neither soft nor loud"),
    "loud": ("loud", "powerful", "forceful"),
}
_ENERGY_DYNAMICS = {-1: ("soft", "medium"), 0: ("soft", "medium", "loud"), 1: ("medium", "loud")}


def dynamics_for(style: Style, mood: Mood) -> tuple[str, ...]:
    """The dynamics a piece of this style and mood may have."""
    return tuple(d for d in style.dynamics if d in _ENERGY_DYNAMICS[mood.energy])


@dataclass(frozen=True)
class Slot:
    """One accompaniment part: an instrument drawn from `pool` (never the lead), present with `probability`."""

    pool: tuple[str, ...]
    probability: float = 1.0


@dataclass(frozen=True)
class Style:
    """A genre with what it plays and how fast; progressions are Roman numerals, `:beats` (default 4).

    `adjectives` go before a noun ("a jazz piece"), `nouns` stand alone ("a jazz tune").
    """

    name: str
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    leads: tuple[str, ...]
    slots: tuple[Slot, ...]
    tempo: tuple[int, int]
    drums_probability: float
    moods: tuple[str, ...]
    dynamics: tuple[str, ...]
    minor_probability: float
    major: tuple[str, ...]
    minor: tuple[str, ...]
    sevenths: bool = False


_STYLE_LIST = (
    Style(
        "ambient",
        ("ambient", "atmospheric ambient"),
        ("ambient piece", "ambient soundscape", "ambient track"),
        ("flute", "piano", "electric piano", "vibraphone"),
        (Slot(("synth pad", "strings", "choir")), Slot(("harp", "music box", "electric piano", "piano"))),
        (60, 84),
        0.0,
        ("calm", "dreamy", "peaceful", "melancholic", "mysterious"),
        ("soft", "medium"),
        0.5,
        ("I:8 IV:8", "I vi IV I", "I:8 V:4 IV:4"),
        ("i:8 VI:8", "i iv i VI", "i VI III VII"),
    ),
    Style(
        "rock",
        ("rock", "classic rock"),
        ("rock track", "rock instrumental", "rock tune"),
        ("overdriven guitar", "clean electric guitar", "piano", "organ"),
        (
            Slot(("overdriven guitar", "clean electric guitar", "piano")),
            Slot(("organ", "piano"), 0.4),
            Slot(("electric bass",)),
        ),
        (100, 150),
        1.0,
        ("energetic", "uplifting", "cheerful", "dark", "dramatic"),
        ("medium", "loud"),
        0.4,
        ("I V vi IV", "I IV V IV", "I IV I V", "I vi IV V"),
        ("i VI III VII", "i VII VI VII", "i iv VII i", "i VI VII i"),
    ),
    Style(
        "jazz",
        ("jazz", "swing jazz", "jazzy"),
        ("jazz tune", "jazz piece", "swing tune", "jazz number"),
        ("saxophone", "trumpet", "piano", "vibraphone", "jazz guitar", "clarinet"),
        (Slot(("piano", "jazz guitar", "vibraphone")), Slot(("upright bass",))),
        (100, 180),
        0.7,
        ("relaxed", "sophisticated", "playful", "melancholic", "energetic"),
        ("soft", "medium", "loud"),
        0.35,
        ("ii:4 V:4 I:8", "I:4 vi:4 ii:4 V:4", "iii:2 vi:2 ii:2 V:2 I:8"),
        ("ii:4 V:4 i:8", "i:4 iv:4 ii:2 V:2 i:4", "i:4 VI:4 ii:4 V:4"),
        sevenths=True,
    ),
    Style(
        "electronic dance",
        ("electronic dance", "EDM", "house"),
        ("electronic dance track", "EDM track", "house track", "club track"),
        ("synth lead", "square lead", "piano"),
        (Slot(("synth pad", "strings")), Slot(("piano", "electric piano"), 0.5), Slot(("synth bass",))),
        (118, 132),
        1.0,
        ("energetic", "uplifting", "dark", "dreamy", "groovy"),
        ("medium", "loud"),
        0.6,
        ("vi IV I V", "I V vi IV", "I IV vi V"),
        ("i VI III VII", "i VII VI VII", "i iv VI VII"),
    ),
    Style(
        "classical piano",
        ("classical piano", "classical"),
        ("classical piano piece", "solo piano piece in a classical style", "piano miniature"),
        ("piano",),
        (),
        (66, 120),
        0.0,
        ("romantic", "peaceful", "melancholic", "dramatic", "playful"),
        ("soft", "medium", "loud"),
        0.4,
        ("I IV V7 I", "I vi ii V7", "I:2 V:2 vi:2 iii:2 IV:2 I:2 IV:2 V:2", "I ii V7 I"),
        ("i iv V7 i", "i VI iv V", "i:2 iv:2 VII:2 III:2 VI:2 iv:2 V7:4"),
    ),
    Style(
        "reggae",
        ("reggae", "roots reggae"),
        ("reggae tune", "reggae track", "reggae groove"),
        ("organ", "trumpet", "saxophone", "electric piano"),
        (
            Slot(("clean electric guitar", "piano", "electric piano")),
            Slot(("organ",), 0.6),
            Slot(("electric bass",)),
        ),
        (68, 92),
        1.0,
        ("relaxed", "cheerful", "uplifting", "melancholic", "groovy"),
        ("soft", "medium", "loud"),
        0.3,
        ("I IV", "I IV V IV", "I vi IV V"),
        ("i iv", "i VII", "i iv VII i"),
    ),
    Style(
        "funk",
        ("funk", "funky"),
        ("funk groove", "funk track", "funk jam"),
        ("saxophone", "trumpet", "clavinet", "organ", "synth lead"),
        (
            Slot(("clean electric guitar",)),
            Slot(("clavinet", "electric piano", "organ"), 0.7),
            Slot(("brass section",), 0.4),
            Slot(("electric bass",)),
        ),
        (92, 116),
        1.0,
        ("groovy", "energetic", "playful", "dark"),
        ("medium", "loud"),
        0.7,
        ("I IV", "I:8 IV:8", "I:12 IV:4"),
        ("i iv", "i:8 iv:8", "i:12 VII:4"),
        sevenths=True,
    ),
    Style(
        "folk",
        ("folk", "acoustic folk"),
        ("folk tune", "acoustic folk piece", "folk instrumental"),
        ("violin", "flute", "harmonica", "accordion", "acoustic guitar"),
        (Slot(("acoustic guitar", "piano")), Slot(("accordion", "cello"), 0.3), Slot(("upright bass",), 0.6)),
        (80, 124),
        0.5,
        ("nostalgic", "cheerful", "peaceful", "melancholic", "playful"),
        ("soft", "medium"),
        0.4,
        ("I IV I V", "I V vi IV", "I IV V I", "I vi IV V"),
        ("i VII VI VII", "i III VII i", "i VI III VII", "i iv V i"),
    ),
)
STYLES: dict[str, Style] = {style.name: style for style in _STYLE_LIST}
