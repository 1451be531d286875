"""PrettyMIDI -> mono float32 audio, in-process with tinysoundfont and pretty_midi's General MIDI
SoundFont (TimGM6mb.sf2), then levelled to a loudness that follows the piece's dynamics.

We drive tinysoundfont's binding (`tinysoundfont._tinysoundfont.SoundFont`) rather than its
`Synth` wrapper: the wrapper always renders interleaved stereo and cannot clone a parsed
SoundFont; the binding does both.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi

from ssmttm.data.synth.compose import Score

PEAK_CEILING = 10 ** (-1 / 20)  # -1 dBFS: no clipping, with headroom for FLAC's 16-bit rounding
FADE_S = 0.05  # a piece cut mid-note ends with a short fade instead of a click


class RendererMissingError(ImportError):
    """tinysoundfont is not installed."""


def soundfont_path() -> Path:
    """The General MIDI SoundFont that ships inside the pretty_midi package."""
    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"


def require_renderer() -> None:
    """Raise RendererMissingError now, rather than in a worker halfway through a corpus."""
    _loaded_soundfont()


@functools.lru_cache(maxsize=1)
def _loaded_soundfont() -> Any:  # tinysoundfont._tinysoundfont.SoundFont
    try:
        from tinysoundfont import _tinysoundfont
    except ImportError:
        raise RendererMissingError(
            "the synthetic corpus renders with tinysoundfont; run `pip install --no-deps tinysoundfont`"
        ) from None
    return _tinysoundfont.SoundFont(str(soundfont_path()))


def _fresh_synth(sample_rate: int) -> Any:  # tinysoundfont._tinysoundfont.SoundFont
    """A clone of the parsed SoundFont with clean channel state: pieces never share voices or
    controllers, so a piece sounds the same whatever was rendered before it in this process
    (cloning takes microseconds, parsing the file about 10 ms)."""
    from tinysoundfont import _tinysoundfont

    synth = _tinysoundfont.SoundFont(_loaded_soundfont())
    synth.set_output(_tinysoundfont.OutputMode.Mono, sample_rate, 0.0)
    synth.set_max_voices(256)
    return synth


def _events(tracks: list[pretty_midi.Instrument], sample_rate: int) -> list[tuple[int, int, int, int, int]]:
    """(sample, order, channel, a, b) sorted by time; order 0 control, 1 note off, 2 note on.

    A note is cut where the next note of the same pitch on its channel starts, so a late note-off
    never silences the note that follows it.
    """
    events = []
    melodic = iter(c for c in range(16) if c != 9)
    for inst in tracks:
        channel = 9 if inst.is_drum else next(melodic)
        events.append((0, 0, channel, -1, inst.program))  # program change
        for cc in inst.control_changes:
            events.append((round(cc.time * sample_rate), 0, channel, cc.number, cc.value))
        by_pitch: dict[int, list[pretty_midi.Note]] = {}
        for note in inst.notes:
            by_pitch.setdefault(note.pitch, []).append(note)
        for notes in by_pitch.values():
            notes.sort(key=lambda n: n.start)
            for note, following in zip(notes, [*notes[1:], None], strict=True):
                start = round(note.start * sample_rate)
                end = round(note.end * sample_rate)
                if following is not None:
                    end = min(end, round(following.start * sample_rate))
                events.append((start, 2, channel, note.pitch, note.velocity))
                events.append((max(end, start + 1), 1, channel, note.pitch, 0))
    return sorted(events)


def render_midi(midi: pretty_midi.PrettyMIDI, sample_rate: int, duration_s: float) -> np.ndarray:
    """Synthesize exactly `duration_s` seconds -> (N,) float32, as the SoundFont plays it (unlevelled)."""
    return _render_tracks(midi.instruments, sample_rate, duration_s)


def render_score(score: Score, sample_rate: int, duration_s: float) -> np.ndarray:
    """Render each track alone, bring it to its level in the score, and sum -> (N,) float32.

    The SoundFont's programs differ in loudness by 15 dB and more (a synth bass drowns a
    sawtooth lead at equal velocity), so the mix is set on the rendered audio, not on MIDI volume.
    """
    mix = np.zeros(round(duration_s * sample_rate), dtype=np.float32)
    for track, level_db in zip(score.midi.instruments, score.levels_db, strict=True):
        part = _render_tracks([track], sample_rate, duration_s)
        loudness = _active_rms(part, sample_rate)
        if loudness > 0:
            mix += part * np.float32(10 ** (level_db / 20) / loudness)
    return mix


def _active_rms(audio: np.ndarray, sample_rate: int) -> float:
    """RMS over the loudest quarter of 50 ms frames: a part's level while it plays, so a sparse
    part (a skank on 2 and 4) is not pushed up for the silence between its hits."""
    frame = max(1, round(0.05 * sample_rate))
    frames = len(audio) // frame
    if frames == 0:
        return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    energy = np.mean(np.square(audio[: frames * frame].reshape(frames, frame), dtype=np.float64), axis=1)
    loudest = np.sort(energy)[-max(1, frames // 4) :]
    return float(np.sqrt(loudest.mean()))


def _render_tracks(tracks: list[pretty_midi.Instrument], sample_rate: int, duration_s: float) -> np.ndarray:
    synth = _fresh_synth(sample_rate)
    audio = np.zeros(round(duration_s * sample_rate), dtype=np.float32)
    position = 0
    for sample, order, channel, a, b in _events(tracks, sample_rate):
        if sample >= len(audio):
            break
        if sample > position:
            synth.render(audio[position:sample].view(np.uint8))
            position = sample
        if order == 2:
            synth.channel_note_on(channel, a, b / 127.0)
        elif order == 1:
            synth.channel_note_off(channel, a)
        elif a < 0:
            synth.channel_set_preset_number(channel, b, channel == 9)
        else:
            synth.channel_midi_control(channel, a, b)
    if position < len(audio):
        synth.render(audio[position:].view(np.uint8))
    return audio


def level(audio: np.ndarray, rms_dbfs: float, sample_rate: int) -> np.ndarray:
    """Scale (N,) audio to `rms_dbfs` RMS, or lower if that would put a peak above -1 dBFS, and fade
    out the last 50 ms. A soft piece stays quieter than a loud one; nothing clips."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    peak = float(np.max(np.abs(audio)))
    if rms == 0.0:
        raise ValueError("the rendered piece is silent")
    gain = min(10 ** (rms_dbfs / 20) / rms, PEAK_CEILING / peak)
    out = audio * np.float32(gain)
    fade = min(len(out), round(FADE_S * sample_rate))
    out[len(out) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out
