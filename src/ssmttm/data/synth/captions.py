"""Attributes + RNG -> a caption in varied natural language, true by construction.

Captions come in three shapes, as in MusicCaps and LLM-rephrased caption sets: a lead sentence
naming the style and lead instrument followed by a shuffled selection of sentences; one long
sentence; a comma-separated tag list. Style and lead are always named; the rest is mentioned
at random. Every word choice is drawn from phrases listed as true of the attribute.
"""

from __future__ import annotations

import numpy as np

from ssmttm.data.synth.attributes import PieceAttributes
from ssmttm.data.synth.vocabulary import DYNAMICS_PHRASES, INSTRUMENTS, MOODS, STYLES
from ssmttm.text.stated_tempo import STATED_BPM

DRUM_PHRASES: dict[str, tuple[str, ...]] = {
    "rock": ("a steady rock backbeat", "driving rock drums", "a backbeat on the drum kit"),
    "electronic dance": ("a four-on-the-floor kick", "a pounding four-on-the-floor beat", "off-beat open hi-hats"),
    "funk": ("syncopated funk drums", "a tight, syncopated drum groove", "ghost-noted snare and sixteenth hi-hats"),
    "reggae": ("a one-drop drum beat", "a one-drop beat with the kick on beat three"),
    "jazz": ("swing drums on the ride cymbal", "a swinging ride cymbal", "a light swing beat on the drum kit"),
    "folk": ("light percussion with tambourine", "a gentle kick-and-rim beat with tambourine"),
}
NO_DRUM_PHRASES = ("no drums", "no percussion", "no drums or percussion")
# Tempo bands (upper limit in BPM): adjectives ("a slow piece") and paces ("at a slow tempo").
TEMPO_BANDS = (
    (80, ("slow", "slow-paced"), ("slow", "leisurely")),
    (105, ("mid-tempo", "moderately paced"), ("moderate", "medium")),
    (130, ("upbeat", "lively"), ("lively", "brisk")),
    (1000, ("fast", "up-tempo", "fast-paced"), ("fast", "quick")),
)
_SPELLED = {"#": "-sharp", "b": "-flat"}


def _article(phrase: str) -> str:
    """ "an organ", "a euphoric", "an EDM track", "a one-drop beat"."""
    vowel = phrase[:1].lower() in "aeiou" and not phrase.lower().startswith(("eu", "one", "uni"))
    return f"{'an' if vowel else 'a'} {phrase}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class _Words:
    """Draws one true phrase for each attribute of a piece."""

    def __init__(self, attrs: PieceAttributes, rng: np.random.Generator) -> None:
        self.attrs, self.rng = attrs, rng

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def style_adj(self) -> str:
        return self.pick(STYLES[self.attrs.style].adjectives)

    def style_noun(self) -> str:
        return self.pick(STYLES[self.attrs.style].nouns)

    def lead(self) -> str:
        return self.pick(INSTRUMENTS[self.attrs.lead].phrases)

    def accompaniment(self) -> str:
        return _join([self.pick(INSTRUMENTS[name].phrases) for name in self.attrs.accompaniment])

    def mood(self) -> str:
        return self.pick(MOODS[self.attrs.mood].phrases)

    def dynamics(self) -> str:
        return self.pick(DYNAMICS_PHRASES[self.attrs.dynamics])

    def drums(self) -> str:
        return self.pick(DRUM_PHRASES[self.attrs.style]) if self.attrs.drums else self.pick(NO_DRUM_PHRASES)

    def _band(self) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
        return next(band for band in TEMPO_BANDS if self.attrs.tempo_bpm < band[0])

    def tempo_word(self) -> str:
        return self.pick(self._band()[1])

    def tempo(self) -> str:
        """A tempo phrase: a word, the exact BPM, or "around" the nearest multiple of 5 (within 2.5)."""
        bpm = self.attrs.tempo_bpm
        return self.pick(
            (
                f"at a {self.pick(self._band()[2])} tempo",
                f"at {bpm} BPM",
                f"at around {5 * round(bpm / 5)} BPM",
                f"at roughly {5 * round(bpm / 5)} beats per minute",
            )
        )

    def key(self) -> str:
        name = self.attrs.key
        spelled = name[0] + _SPELLED.get(name[1:], "")
        return self.pick(
            (
                f"in {spelled} {self.attrs.mode}",
                f"in the key of {name} {self.attrs.mode}",
                f"in a {self.attrs.mode} key",
            )
        )


def _sentences(w: _Words, mood_said: bool) -> list[str]:
    """Optional sentences, each present with its own probability (the mood only if not yet said)."""
    a = w.attrs
    out = []
    if a.accompaniment and w.rng.random() < 0.75:
        acc = w.accompaniment()
        out.append(
            w.pick((f"It is accompanied by {acc}.", f"Backing comes from {acc}.", f"Underneath, {acc} support it."))
        )
    elif not a.accompaniment and w.rng.random() < 0.75:
        out.append(w.pick(("The piano plays alone, with no other instruments.", "It is a solo performance.")))
    if w.rng.random() < 0.7 and not mood_said:
        out.append(w.pick((f"The mood is {w.mood()}.", f"It feels {w.mood()}.", f"The atmosphere is {w.mood()}.")))
    if w.rng.random() < 0.6:
        out.append(w.pick((f"It moves {w.tempo()}.", f"The piece is played {w.tempo()}.", f"It is {w.tempo_word()}.")))
    if w.rng.random() < 0.6:
        if a.drums:
            out.append(w.pick((f"The rhythm comes from {w.drums()}.", f"It is driven by {w.drums()}.")))
        else:
            out.append(w.pick(("There are no drums.", "There is no percussion.", "It is played without drums.")))
    if w.rng.random() < 0.3:
        out.append(w.pick((f"It is written {w.key()}.", f"The harmony stays {w.key()}.")))
    if w.rng.random() < 0.35:
        out.append(w.pick((f"The playing is {w.dynamics()}.", f"The overall dynamics are {w.dynamics()}.")))
    w.rng.shuffle(out)
    return out


def _prose(w: _Words) -> str:
    mood = f"{w.mood()} " if w.rng.random() < 0.4 else ""  # "a calm ambient piece"
    opener = w.pick(
        (
            f"{_cap(_article(mood + w.style_adj()))} piece led by {_article(w.lead())}.",
            f"This is {_article(w.style_noun())} featuring {_article(w.lead())} on the melody.",
            f"{_cap(_article(w.style_noun()))} in which {_article(w.lead())} carries the main melody.",
            f"{_cap(w.style_adj())} music with {_article(w.lead())} playing the tune.",
            f"The {w.lead()} takes the lead in this {mood}{w.style_adj()} track.",
        )
    )
    return " ".join([opener, *_sentences(w, mood_said=bool(mood) and mood in opener)])


def _one_sentence(w: _Words) -> str:
    a = w.attrs
    tempo = f"{w.tempo_word()} " if w.rng.random() < 0.6 else ""
    text = f"{_cap(_article(tempo + w.mood() + ' ' + w.style_noun()))} with {_article(w.lead())} lead"
    if a.accompaniment:
        text += f", backed by {w.accompaniment()}"
    if w.rng.random() < 0.7:
        text += f", over {w.drums()}" if a.drums else f", with {w.drums()}"
    text += f", {w.key()}" if w.rng.random() < 0.3 else ""
    return text + "."


def _tags(w: _Words) -> str:
    a = w.attrs
    tags = [w.style_adj(), f"{w.lead()} lead"]
    tags += [w.pick(INSTRUMENTS[name].phrases) for name in a.accompaniment] if w.rng.random() < 0.8 else []
    tags += [w.drums()] if w.rng.random() < 0.7 else []
    tags += [w.mood()] if w.rng.random() < 0.8 else []
    tags += [w.pick((f"{a.tempo_bpm} bpm", w.tempo_word()))] if w.rng.random() < 0.6 else []
    tags += [f"{a.key} {a.mode}"] if w.rng.random() < 0.3 else []
    tags += ["instrumental"] if "choir" not in a.accompaniment else []  # a choir sings, if wordlessly
    return ", ".join(tags)


def _add_bpm(caption: str, w: _Words, shape: str) -> str:
    """The caption with its exact tempo added in its own shape: a sentence, a clause or a tag."""
    bpm = w.attrs.tempo_bpm
    if shape == "tags":
        return f"{caption}, {bpm} bpm"
    if shape == "sentence":
        return f"{caption[:-1]}, {w.pick((f'at {bpm} BPM', f'at {bpm} beats per minute'))}."
    said = w.pick((f"The tempo is {bpm} BPM.", f"It runs at {bpm} BPM.", f"It is played at {bpm} beats per minute."))
    return f"{caption} {said}"


def make_caption(attrs: PieceAttributes, rng: np.random.Generator, bpm_captions: float = 0.0) -> str:
    """One caption for the piece: prose (60%), one sentence (25%) or tags (15%). With `bpm_captions`
    > 0, that share of the captions that give no BPM get the exact one added. Its draw comes after
    every other, so the rest of the caption is what it always was for its seed, and at 0 nothing
    changes."""
    words = _Words(attrs, rng)
    shape = rng.random()
    kind = "prose" if shape < 0.6 else "sentence" if shape < 0.85 else "tags"
    caption = {"prose": _prose, "sentence": _one_sentence, "tags": _tags}[kind](words)
    if bpm_captions > 0 and not STATED_BPM.search(caption) and rng.random() < bpm_captions:
        caption = _add_bpm(caption, words, kind)
    return caption
