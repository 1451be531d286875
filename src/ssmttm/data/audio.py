"""Audio files in and out (soundfile), resampling (soxr), channel mixing; writes are atomic."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ssmttm.files import atomic_write


class AudioError(ValueError):
    """A file that is not readable audio, or audio we cannot use."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any format soundfile knows (wav, flac, mp3, ogg) -> (wav (C, N) float32, sample rate).

    Raises AudioError for empty, unreadable or truncated files.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"not readable audio ({err})") from None
    if _truncated(info.extra_info):
        raise AudioError("truncated: the file is shorter than its header says")
    return np.ascontiguousarray(data.T), int(rate)


def _truncated(extra_info: str) -> bool:
    """libsndfile reads a cut-off WAV/AIFF without error but notes `data : N (should be M)`, M < N."""
    match = re.search(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE)
    return bool(match) and int(match.group(2)) < int(match.group(1))


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration in seconds, sample rate, channels) without decoding the samples."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"not readable audio ({err})") from None
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def save_audio(path: str | Path, wav: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    """Write wav (C, N) or (N,) atomically: a temporary file beside the target, then a rename.

    The format follows the extension (.wav, .flac, .mp3, .ogg).
    """
    path = Path(path)
    data = np.asarray(wav, dtype=np.float32)
    data = data.T if data.ndim == 2 else data
    fmt = audio_format(path)
    atomic_write(path, lambda f: sf.write(f, data, sample_rate, subtype=subtype, format=fmt))


def audio_format(path: Path) -> str:
    formats = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "OGG"}
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        raise AudioError(f"{path.name}: unsupported audio extension; use one of {', '.join(formats)}") from None


def to_mono(wav: np.ndarray) -> np.ndarray:
    """(C, N) -> (1, N) by averaging the channels."""
    return wav.mean(axis=0, keepdims=True) if wav.shape[0] > 1 else wav


def resample(wav: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(C, N) float32 at rate_in -> (C, M) at rate_out, with soxr's high-quality filter."""
    if rate_in == rate_out:
        return wav
    out = soxr.resample(np.ascontiguousarray(wav.T), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)
