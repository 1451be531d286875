"""The ground truth of a piece (`PieceAttributes`), drawing it from an RNG, and hold-out specs.

A hold-out spec names attribute combinations to leave out of a corpus (or to make alone):
"style=jazz,lead=saxophone;style=rock,lead=piano" holds out jazz with a saxophone lead and rock
with a piano lead. Drawing is rejection sampling from the piece's own RNG, so which pieces a
corpus holds depends on the seed and the piece index only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ssmttm.data.synth.theory import key_name, pitch_class
from ssmttm.data.synth.vocabulary import MOODS, STYLES, Style, dynamics_for

# The narrowest possible combination (every key set) turns up about once in 120,000 draws of
# about 20 us each, so this cap is never reached by a spec `HoldOut.parse` accepts: it only
# stops a loop that could not end.
MAX_DRAWS = 5_000_000
# A spec that holds out (nearly) everything is caught up front: if none of this many trial draws
# falls outside it, corpus generation refuses to start.
PROBE_DRAWS = 20_000


@dataclass(frozen=True)
class PieceAttributes:
    """Everything a caption may say about a piece, all of it true of the composed music."""

    style: str
    lead: str
    accompaniment: tuple[str, ...]  # instrument names, bass last; empty for solo piano
    tempo_bpm: int
    key: str  # the tonic, spelled for the mode ("Db" major, "C#" minor)
    mode: str  # "major" or "minor"
    mood: str
    dynamics: str  # "soft", "medium" or "loud"
    drums: bool
    progression: str  # Roman numerals with optional ":beats", as in vocabulary.py

    @property
    def tonic_pc(self) -> int:
        return pitch_class(self.key)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_attributes(rng: np.random.Generator) -> PieceAttributes:
    """One piece's attributes: a style, then choices that style allows, each uniform unless weighted."""
    style = STYLES[_pick(rng, tuple(STYLES))]
    mode = "minor" if rng.random() < style.minor_probability else "major"
    mood = MOODS[_pick(rng, [m for m in style.moods if mode in MOODS[m].modes])]
    dynamics = _pick(rng, dynamics_for(style, mood))
    low, high = style.tempo
    reach = round(0.6 * (high - low))
    if mood.energy < 0:
        high = low + reach
    elif mood.energy > 0:
        low = high - reach
    tempo = int(rng.integers(low, high + 1))
    tonic = int(rng.integers(12))
    lead = _pick(rng, style.leads)
    accompaniment: list[str] = []
    for slot in style.slots:
        pool = [name for name in slot.pool if name != lead and name not in accompaniment]
        if rng.random() < slot.probability and pool:
            accompaniment.append(_pick(rng, pool))
    drums = bool(rng.random() < style.drums_probability)
    progression = _pick(rng, style.major if mode == "major" else style.minor)
    return PieceAttributes(
        style.name,
        lead,
        tuple(accompaniment),
        tempo,
        key_name(tonic, mode),
        mode,
        mood.name,
        dynamics,
        drums,
        progression,
    )


HOLD_OUT_KEYS = ("style", "lead", "accompaniment", "key", "mode", "mood", "dynamics", "drums")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _vocabulary(key: str) -> tuple[str, ...]:
    if key == "style":
        return tuple(STYLES)
    if key == "lead":
        return tuple(sorted({name for style in STYLES.values() for name in style.leads}))
    if key == "accompaniment":
        return tuple(sorted({name for s in STYLES.values() for slot in s.slots for name in slot.pool}))
    if key == "mode":
        return ("major", "minor")
    if key == "mood":
        return tuple(MOODS)
    return ("soft", "medium", "loud")


def _parse_value(key: str, raw: str) -> str | int | bool:
    if key == "key":
        try:
            return pitch_class(raw)
        except ValueError:
            raise ValueError(f"hold-out key={raw!r} is not a note name such as C, F# or Bb") from None
    text = re.sub(r"[\s_-]+", " ", raw.lower())
    if key == "drums":
        if text not in _TRUE + _FALSE:
            raise ValueError(f"hold-out drums={raw!r}: use true or false")
        return text in _TRUE
    choices = _vocabulary(key)
    if text not in choices:
        raise ValueError(f"hold-out {key}={raw!r} is unknown; choose one of: {', '.join(choices)}")
    return text


@dataclass(frozen=True)
class Combination:
    """Conditions that must all hold, as (key, value) pairs; a key's value is compared as parsed."""

    conditions: tuple[tuple[str, str | int | bool], ...]

    def matches(self, attrs: PieceAttributes) -> bool:
        """True when the piece meets every condition (accompaniment: the instrument is among them)."""
        for key, value in self.conditions:
            if key == "accompaniment":
                if value not in attrs.accompaniment:
                    return False
            elif key == "key":
                if attrs.tonic_pc != value:
                    return False
            elif getattr(attrs, key) != value:
                return False
        return True

    def possible(self) -> bool:
        """Whether `sample_attributes` can ever draw a piece that matches."""
        want = dict(self.conditions)
        return any(_style_allows(style, want) for style in STYLES.values())

    def __str__(self) -> str:
        names = {pc: key_name(pc, "major") for pc in range(12)}
        return ",".join(f"{k}={names[v] if k == 'key' else str(v).lower()}" for k, v in self.conditions)


def _style_allows(style: Style, want: dict[str, str | int | bool]) -> bool:
    if want.get("style", style.name) != style.name:
        return False
    if "drums" in want and not (style.drums_probability > 0 if want["drums"] else style.drums_probability < 1):
        return False
    modes = [m for m, p in (("major", 1 - style.minor_probability), ("minor", style.minor_probability)) if p > 0]
    moods_ok = any(
        want.get("mood", mood) == mood and want.get("dynamics", dyn) == dyn
        for mode in modes
        if want.get("mode", mode) == mode
        for mood in style.moods
        if mode in MOODS[mood].modes
        for dyn in dynamics_for(style, MOODS[mood])
    )
    pools = [set(slot.pool) for slot in style.slots if slot.probability > 0]
    lead_ok = any(
        want.get("lead", lead) == lead
        and ("accompaniment" not in want or any(want["accompaniment"] in pool - {lead} for pool in pools))
        for lead in style.leads
    )
    return moods_ok and lead_ok


@dataclass(frozen=True)
class HoldOut:
    """Combinations left out of a corpus, parsed from "k=v,k=v;k=v" (`HoldOut.parse`)."""

    combinations: tuple[Combination, ...]

    @classmethod
    def parse(cls, spec: str) -> HoldOut:
        """Parse and validate a spec; a bad key, value or an impossible combination is a one-line ValueError."""
        combinations = []
        for part in (p.strip() for p in spec.split(";")):
            if not part:
                continue
            conditions: dict[str, str | int | bool] = {}
            for item in (i.strip() for i in part.split(",")):
                key, sep, raw = (s.strip() for s in item.partition("="))
                key = key.lower()
                if not sep or not key or not raw:
                    raise ValueError(f"hold-out condition {item!r} is not of the form key=value")
                if key not in HOLD_OUT_KEYS:
                    raise ValueError(f"hold-out key {key!r} is unknown; use one of: {', '.join(HOLD_OUT_KEYS)}")
                if key in conditions:
                    raise ValueError(f"hold-out combination {part!r} sets {key} twice")
                conditions[key] = _parse_value(key, raw)
            combination = Combination(tuple(conditions.items()))
            if not combination.possible():
                raise ValueError(f"hold-out combination {part!r} can never occur: no style draws it")
            combinations.append(combination)
        if not combinations:
            raise ValueError(f"hold-out spec {spec!r} names no combination")
        return cls(tuple(combinations))

    def matches(self, attrs: PieceAttributes) -> bool:
        """True when the piece is one of the held-out combinations."""
        return any(c.matches(attrs) for c in self.combinations)

    def __str__(self) -> str:
        return ";".join(str(c) for c in self.combinations)


def check_drawable(hold_out: HoldOut | None, only_held_out: bool) -> None:
    """Fail fast (ValueError) when a spec leaves nothing outside it to draw.

    Held-out pieces always exist when `HoldOut.parse` accepted the spec; the other side needs
    this probe, which stops at the first trial piece outside the spec.
    """
    if hold_out is None or only_held_out:
        return
    rng = np.random.default_rng(0)
    if all(hold_out.matches(sample_attributes(rng)) for _ in range(PROBE_DRAWS)):
        raise ValueError(f"hold-out {hold_out} leaves (almost) nothing: all {PROBE_DRAWS:,} trial pieces match it")


def draw_attributes(
    rng: np.random.Generator, hold_out: HoldOut | None = None, only_held_out: bool = False
) -> PieceAttributes:
    """Draw until the piece is outside the hold-out (or inside it, with `only_held_out`)."""
    for _ in range(MAX_DRAWS):
        attrs = sample_attributes(rng)
        if hold_out is None or hold_out.matches(attrs) == only_held_out:
            return attrs
    side = "inside" if only_held_out else "outside"
    raise ValueError(f"no piece {side} hold-out {hold_out} in {MAX_DRAWS:,} draws; the spec is too narrow or too wide")
