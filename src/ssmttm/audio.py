"""Audio files in and out (soundfile), resampling (soxr), channel mixing: the leaf that codecs, data
and generation share. Whole files are written atomically; `GrowingWav` writes one that players can
open while it grows.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import wave
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ssmttm.files import atomic_write


class AudioError(ValueError):
    """A file that is not readable audio, or audio we cannot use."""


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any format soundfile knows (wav, flac, mp3, ogg) -> (wav (C, N) float32, sample rate).

    Raises AudioError, with a one-line reason, for anything that is not a readable audio file:
    missing, a directory, a symlink loop, empty, not audio, truncated.
    """
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(_unreadable(path, err)) from None
    if _truncated(info.extra_info):
        raise AudioError("truncated: the file is shorter than its header says")
    return np.ascontiguousarray(data.T), int(rate)


def _check_file(path: Path) -> None:
    """An AudioError unless `path` is a non-empty regular file (after symlinks).

    libsndfile says only "System error." for a missing file or a symlink loop and "Format not
    recognised" for a directory, and it would block forever reading a named pipe; say what it is.
    """
    try:
        info = path.stat()
    except OSError as err:
        raise AudioError(_stat_problem(path, err)) from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError("a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(f"not a regular file but {_file_kind(info.st_mode)}")
    if info.st_size == 0:
        raise AudioError("empty file (0 bytes)")


def _stat_problem(path: Path, err: OSError) -> str:
    target = f" ({path.name} -> {os.readlink(path)})" if path.is_symlink() else ""
    if err.errno == errno.ELOOP:
        return f"symlink loop{target}: following it never reaches a file"
    if err.errno == errno.ENOENT:
        return f"broken symlink{target}: the file it points to does not exist" if target else "file not found"
    if err.errno == errno.EACCES:
        return "permission denied"
    return f"cannot open ({err.strerror or err})"


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
    return next((name for test, name in kinds.items() if test(mode)), "a device or other special file")


def _unreadable(path: Path, err: Exception) -> str:
    """Why libsndfile could not read a regular file, in the terms of what the file holds."""
    kind = path.suffix.lower().lstrip(".") or "audio"
    try:
        with path.open("rb") as f:
            head = f.read(1024)
    except OSError as open_err:
        return _stat_problem(path, open_err)
    if _is_text(head):
        return f"not audio: a text file, not readable as {kind}"
    # libsndfile's message after "Error opening '...': "; for mp3 it wrongly blames a missing file
    message = str(err).rsplit("': ", 1)[-1].strip().rstrip(".")
    if "does not exist or is not a regular file" in message:
        message = "contents not recognised"
    return f"not readable as {kind} ({message[:1].lower() + message[1:]})"


def _is_text(head: bytes) -> bool:
    """The first bytes of a file decode as printable UTF-8 (a cut multi-byte character allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[: err.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\n\r" for c in text)


def _truncated(extra_info: str) -> bool:
    """libsndfile reads a cut-off WAV/AIFF without error but notes `data : N (should be M)`, M < N."""
    match = re.search(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE)
    return bool(match) and int(match.group(2)) < int(match.group(1))


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration in seconds, sample rate, channels) without decoding the samples."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(_unreadable(path, err)) from None
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


def partial_path(path: Path) -> Path:
    """Where audio streamed to `path` grows until it is complete: out.wav -> out.wav.partial, visible."""
    return path.with_name(path.name + ".partial")


class GrowingWav:
    """A mono 16-bit WAV written chunk by chunk whose header counts every sample written so far, so
    that a player or another reader can open it at any time, and it stays valid wherever it stops.

    libsndfile writes a WAV's sizes only when the file is closed (its own reader repairs that; readers
    that trust the header, such as Python's `wave`, see no samples), so the header is written by
    `wave`, which patches the sizes after each chunk. The samples are still converted by libsndfile,
    so the finished file is byte for byte what `sf.write` writes of the same audio.
    """

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path, self.sample_rate, self.frames = path, sample_rate, 0
        # Both stay open across write() calls; close() closes them.
        self._file = open(path, "wb")  # noqa: SIM115
        self._wav = wave.open(self._file, "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    def write(self, audio: np.ndarray) -> None:
        """Append audio (N,) float, in [-1, 1], and flush it, header included, to the file."""
        pcm = io.BytesIO()
        sf.write(pcm, np.asarray(audio, np.float32), self.sample_rate, subtype="PCM_16", format="RAW", endian="LITTLE")
        self._wav.writeframes(pcm.getvalue())  # patches the RIFF and data sizes
        self._file.flush()
        self.frames += len(audio)

    def close(self) -> None:
        self._wav.close()  # leaves a file object it did not open to us
        self._file.close()

    def __enter__(self) -> GrowingWav:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
