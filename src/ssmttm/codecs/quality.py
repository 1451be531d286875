"""What a codec round trip must keep of music, measured the same way on the original and the copy:
the tempo (librosa's beat tracker), the harmony (the strongest pitch classes of the mean chroma)
and the spectrum (a multi-resolution log-mel distance)."""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np

MEL_FFTS = (512, 1024, 2048)


def tempo_bpm(wav: np.ndarray, rate: int) -> float:
    """librosa's beat-tracker tempo estimate, default settings."""
    tempo, _ = librosa.beat.beat_track(y=wav, sr=rate)
    return float(np.atleast_1d(tempo)[0])


def mean_chroma(wav: np.ndarray, rate: int) -> np.ndarray:
    """(12,) librosa's constant-Q chroma (each frame scaled to max 1), averaged over time."""
    return librosa.feature.chroma_cqt(y=wav, sr=rate).mean(axis=1)


def top_pitch_classes(wav: np.ndarray, rate: int, count: int = 3) -> frozenset[int]:
    """The `count` strongest pitch classes (0 = C) of the time-averaged constant-Q chroma."""
    return _top(mean_chroma(wav, rate), count)


def _top(chroma: np.ndarray, count: int = 3) -> frozenset[int]:
    return frozenset(np.argsort(chroma)[-count:].tolist())


def third_fourth_gap(chroma: np.ndarray) -> float:
    """How clearly a clip has a top 3: the gap between its 3rd and 4th strongest pitch classes,
    relative to the 3rd. Near 0, any change at all can swap them."""
    strongest = np.sort(chroma)[::-1]
    return float((strongest[2] - strongest[3]) / max(strongest[2], 1e-12))


def mel_distance(reference: np.ndarray, other: np.ndarray, rate: int) -> float:
    """Mean |log10 mel power difference| over 80 mel bands, averaged over FFT sizes 512, 1024, 2048
    (hop a quarter of each): 0 for identical audio, about 1 for a 10 dB error everywhere."""
    length = min(len(reference), len(other))
    distances = []
    for n_fft in MEL_FFTS:
        mels = [
            librosa.feature.melspectrogram(y=x[:length], sr=rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=80)
            for x in (reference, other)
        ]
        distances.append(float(np.mean(np.abs(np.log10(mels[0] + 1e-5) - np.log10(mels[1] + 1e-5)))))
    return float(np.mean(distances))


@dataclass(frozen=True)
class Comparison:
    tempo_before: float
    tempo_after: float
    pitch_classes_before: frozenset[int]
    pitch_classes_after: frozenset[int]
    mel_distance: float
    gap_before: float  # third_fourth_gap of the reference

    @property
    def tempo_kept(self) -> bool:
        """Within 3 BPM."""
        return abs(self.tempo_before - self.tempo_after) <= 3.0

    @property
    def harmony_kept(self) -> bool:
        return self.pitch_classes_before == self.pitch_classes_after


def compare(
    reference: np.ndarray, other: np.ndarray, rate: int, before: tuple[float, np.ndarray] | None = None
) -> Comparison:
    """Both (N,) mono at `rate`; `other` is cut or zero-padded to the reference's length. `before`,
    the reference's (tempo, mean chroma) from an earlier call, spares measuring it again."""
    other = np.pad(other[: len(reference)], (0, max(0, len(reference) - len(other))))
    tempo, chroma = before or (tempo_bpm(reference, rate), mean_chroma(reference, rate))
    return Comparison(
        tempo,
        tempo_bpm(other, rate),
        _top(chroma),
        top_pitch_classes(other, rate),
        mel_distance(reference, other, rate),
        third_fourth_gap(chroma),
    )
