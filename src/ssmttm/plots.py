"""Figures written to files, atomically, without a display: matplotlib's object API, so drawing one
changes no process-wide state (pyplot's backend, its open figures) of a notebook or app around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssmttm.files import atomic_write


def save_spectrograms(path: str | Path, panels: list[tuple[str, np.ndarray, int]], fmax: float = 11025.0) -> None:
    """One log-mel spectrogram per (title, wav (N,), sample rate), stacked, on a shared dB scale."""
    import librosa
    import librosa.display
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state to touch

    fig = Figure(figsize=(10, 2.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    mels = [librosa.feature.melspectrogram(y=wav, sr=rate, n_mels=128, fmax=fmax) for _, wav, rate in panels]
    top = max(float(m.max()) for m in mels) or 1.0
    for ax, (title, _, rate), mel in zip(axes[:, 0], panels, mels, strict=True):
        db = librosa.power_to_db(mel, ref=top, top_db=80.0)
        image = librosa.display.specshow(db, sr=rate, x_axis="time", y_axis="mel", fmax=fmax, ax=ax, vmin=-80, vmax=0)
        ax.set_title(title)
        ax.set_xlabel("")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), format="%+2.0f dB")
    atomic_write(Path(path), lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=110))
