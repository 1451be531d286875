"""Just enough music theory for the synthetic corpus: keys, scales, diatonic chords, voicings.

Pitches are MIDI note numbers; pitch classes (pcs) are 0-11 with C = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor (aeolian)

# Spellings a musician would write for each tonic: flats for the flat keys, sharps for F# major and
# the sharp minor keys (C# minor, not Db minor).
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ROMAN = {"i": 0, "ii": 1, "iii": 2, "iv": 3, "v": 4, "vi": 5, "vii": 6}


def key_name(tonic_pc: int, mode: str) -> str:
    """The conventional spelling of a key's tonic, e.g. (1, "major") -> "Db", (1, "minor") -> "C#"."""
    return (_MAJOR_NAMES if mode == "major" else _MINOR_NAMES)[tonic_pc % 12]


def pitch_class(name: str) -> int:
    """ "C" -> 0, "F#" -> 6, "Bb" -> 10; letter case-insensitive, any number of # or b."""
    letter, accidentals = name[:1].upper(), name[1:]
    if letter not in _LETTERS or any(a not in "#b" for a in accidentals):
        raise ValueError(f"{name!r} is not a note name such as C, F# or Bb")
    return (_LETTERS[letter] + accidentals.count("#") - accidentals.count("b")) % 12


def scale_pcs(tonic_pc: int, mode: str) -> tuple[int, ...]:
    """The seven pitch classes of the key, starting on the tonic."""
    steps = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    return tuple((tonic_pc + s) % 12 for s in steps)


@dataclass(frozen=True)
class Chord:
    """A chord in a key: its root and tones as pitch classes, and the scale its melody notes use."""

    numeral: str
    root: int
    tones: tuple[int, ...]  # root, third, fifth[, seventh]
    scale: tuple[int, ...]  # the key's scale, with the leading tone raised under a minor key's V

    @property
    def fifth(self) -> int:
        return self.tones[2]

    @property
    def third(self) -> int:
        return self.tones[1]


def diatonic_chord(numeral: str, tonic_pc: int, mode: str, seventh: bool) -> Chord:
    """A Roman numeral ("vi", "IV", "V7") -> the chord stacked in thirds on that scale degree.

    A trailing 7 (or `seventh`) adds the diatonic seventh.
    The quality comes from the key, not the numeral's case, with one exception that is the
    common-practice rule: an upper-case V in a minor key is the major dominant of harmonic minor.
    """
    base = numeral.removesuffix("7")
    degree = _ROMAN.get(base.lower())
    if degree is None:
        raise ValueError(f"{numeral!r} is not a Roman numeral from i to vii, optionally with a 7")
    seventh = seventh or numeral.endswith("7")
    scale = list(scale_pcs(tonic_pc, mode))
    if mode == "minor" and base == "V":
        scale[6] = (scale[6] + 1) % 12
    tones = tuple(scale[(degree + 2 * k) % 7] for k in range(4 if seventh else 3))
    return Chord(numeral, tones[0], tones, tuple(scale))


def nearest_pitch(pc: int, target: float, low: int, high: int) -> int:
    """The pitch of class `pc` closest to `target` inside [low, high] (high - low must be >= 11)."""
    nearest = round(target)
    base = nearest - ((nearest - pc) % 12)
    candidates = [p for p in (base - 12, base, base + 12, base + 24) if low <= p <= high]
    return min(candidates, key=lambda p: (abs(p - target), p))


def voice_chord(pcs: tuple[int, ...], previous: tuple[int, ...] | None, low: int, high: int) -> tuple[int, ...]:
    """Close-position voicing of `pcs` inside [low, high] that moves least from `previous`.

    Every inversion is tried at every octave that fits; with no previous voicing the one nearest
    the middle of the range wins. Smallest total movement is what keeps comping smooth.
    """
    centre = (low + high) / 2
    best: tuple[int, ...] | None = None
    best_cost = float("inf")
    for inversion in range(len(pcs)):
        order = pcs[inversion:] + pcs[:inversion]
        for start in range(low, high + 1):
            if start % 12 != order[0]:
                continue
            notes = [start]
            for pc in order[1:]:
                notes.append(notes[-1] + ((pc - notes[-1]) % 12 or 12))
            if notes[-1] > high:
                continue
            if previous is not None and len(previous) == len(notes):
                cost = sum(abs(a - b) for a, b in zip(sorted(previous), notes, strict=True))
            else:
                cost = abs(sum(notes) / len(notes) - centre) * len(notes)
            if cost < best_cost:
                best, best_cost = tuple(notes), cost
    if best is None:
        raise ValueError(f"no voicing of {len(pcs)} tones fits in [{low}, {high}]")
    return best
