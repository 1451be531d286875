"""The embedded codec's signal model: semitone partials plus high-frequency noise bands.

Analysis measures, per frame, the amplitude of a sinusoid at every semitone from C1 to B7 (a
constant-Q transform whose neighbouring semitones fall on each other's first spectral zero), and
the mean power of a few noise bands above B7. Synthesis plays those sinusoids back, with their
phase taken from absolute time, plus noise of that power. Both sides keep what the codec must
preserve: which pitch classes sound (harmony), and how loudness moves from frame to frame (rhythm).

Synthesis is frame-local: sample n depends only on the frames whose windows cover it (one on each
side), and a frame's phase depends only on its absolute index. So any window of frames decodes to
exactly the samples a whole decode gives there, which is what chunked and streaming decoding need.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from dataclasses import asdict, dataclass
from functools import cached_property

import librosa
import numpy as np
import torch
from torch import Tensor


@contextlib.contextmanager
def _short_input_is_fine():
    """librosa warns when a clip is shorter than a filter and pads it with zeros: that is the
    analysis we want (the codec pads the signal with silence anyway), so the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_fft=.* is too large for input signal")
        yield


@dataclass(frozen=True)
class SpectralConfig:
    sample_rate: int = 22050
    hop_length: int = 512  # 43.07 frames/s
    n_fft: int = 2048  # analysis frame of the noise bands
    # Synthesis frame: two hops, the shortest Hann overlap-add that covers every sample. A longer
    # one smears every amplitude change over more frames and blurs onsets, which the beat tracker
    # noticed on the development clips.
    synthesis_fft: int = 1024
    fmin_midi: int = 24  # C1
    num_semitones: int = 84  # C1 .. B7
    # CQT filters twice the usual length: the neighbouring semitone then falls on the Hann
    # window's first zero, so a note does not leak into the next pitch class.
    filter_scale: float = 2.0
    num_noise_bands: int = 5  # geometric bands from B7's upper edge to Nyquist
    compression: float = 0.3  # codebooks quantize amplitude ** compression: loud partials get the precision
    noise_period: int = 4096  # frames before the noise phases repeat (95 s)
    num_codebooks: int = 4
    codebook_size: int = 1024

    @property
    def dim(self) -> int:
        return self.num_semitones + self.num_noise_bands

    def to_dict(self) -> dict:
        return asdict(self)


class SpectralModel:
    """Analysis (audio -> compressed features (T, dim)) and synthesis (features -> audio).

    `partial_gain` (num_semitones,) turns CQT magnitudes into sinusoid amplitudes and `noise_gain`
    (num_noise_bands,) turns the band power of synthesized noise into the analysed one; both are
    measured once by `calibrate` and shipped with the codebooks.
    """

    def __init__(self, config: SpectralConfig, partial_gain: np.ndarray, noise_gain: np.ndarray):
        self.config = config
        self.partial_gain = np.asarray(partial_gain, dtype=np.float64)  # (S,)
        self.noise_gain = np.asarray(noise_gain, dtype=np.float64)  # (E,)

    @classmethod
    def calibrate(cls, config: SpectralConfig) -> SpectralModel:
        """Measure both gains: the CQT response to a unit sinusoid at each semitone, and the analysed
        power of unit-power synthesized noise in each band."""
        sr = config.sample_rate
        seconds = 3.0
        t = np.arange(int(sr * seconds)) / sr
        model = cls(config, np.ones(config.num_semitones), np.ones(config.num_noise_bands))
        edge = int(0.8 * sr / config.hop_length)  # frames whose CQT window reaches past the signal
        gains = np.empty(config.num_semitones)
        for k, freq in enumerate(model.frequencies):
            response = model._cqt(np.cos(2 * np.pi * freq * t).astype(np.float32))  # (S, T)
            gains[k] = np.median(response[k, edge:-edge])
        model.partial_gain = gains
        frames = 400
        silent = torch.zeros(frames, config.dim)
        silent[:, config.num_semitones :] = 1.0  # unit power in every band, no partials
        noise = model.synthesize(silent).numpy()
        model.noise_gain = model._band_power(noise)[:, 20:-20].mean(axis=1)
        return model

    @cached_property
    def frequencies(self) -> np.ndarray:
        """(S,) semitone centre frequencies in Hz, equal temperament, A4 = 440 Hz."""
        midi = self.config.fmin_midi + np.arange(self.config.num_semitones)
        return 440.0 * 2.0 ** ((midi - 69) / 12)

    def band_masks(self, n_fft: int) -> np.ndarray:
        """(E, n_fft // 2 + 1) 0/1 masks of the noise bands over the rfft bins of an n_fft frame."""
        cfg = self.config
        top = self.frequencies[-1] * 2 ** (1 / 24)
        edges = np.geomspace(top, cfg.sample_rate / 2, cfg.num_noise_bands + 1)
        freqs = np.fft.rfftfreq(n_fft, 1 / cfg.sample_rate)
        masks = [(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(edges)]
        masks[-1] |= freqs == edges[-1]  # Nyquist belongs to the top band
        return np.stack(masks).astype(np.float32)

    # ---- analysis ----

    def analyze(self, wav: np.ndarray) -> np.ndarray:
        """wav (N,) at the codec rate, N a multiple of hop -> features (N / hop, dim) float32:
        partial amplitudes and band rms values, each raised to `compression`."""
        cfg = self.config
        frames = len(wav) // cfg.hop_length
        amplitude = self._cqt(wav) / self.partial_gain[:, None]  # (S, T + 1)
        rms = np.sqrt(self._band_power(wav))  # (E, T + 1)
        linear = np.concatenate([amplitude, rms], axis=0)[:, :frames].T  # (T, dim)
        return (linear**cfg.compression).astype(np.float32)

    def _cqt(self, wav: np.ndarray) -> np.ndarray:
        cfg = self.config
        with _short_input_is_fine():
            response = librosa.cqt(
                wav,
                sr=cfg.sample_rate,
                hop_length=cfg.hop_length,
                fmin=float(self.frequencies[0]),
                n_bins=cfg.num_semitones,
                bins_per_octave=12,
                filter_scale=cfg.filter_scale,
            )
        return np.abs(response)  # (S, T + 1): frame t centred on sample t * hop

    def _band_power(self, wav: np.ndarray) -> np.ndarray:
        """(E, T + 1) mean power per rfft bin of each band."""
        cfg = self.config
        with _short_input_is_fine():
            power = np.abs(librosa.stft(wav, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window="hann")) ** 2
        masks = self.band_masks(cfg.n_fft)
        return (masks @ power) / masks.sum(axis=1, keepdims=True)

    # ---- synthesis ----

    @cached_property
    def _partial_kernels(self) -> tuple[Tensor, Tensor]:
        """(S, F) complex spectra of a Hann-windowed cosine and sine at each semitone, phase zero at
        the frame centre; a partial of phase phi is cos(phi) * cos_kernel - sin(phi) * sin_kernel."""
        cfg = self.config
        n = np.arange(cfg.synthesis_fft) - cfg.synthesis_fft // 2
        window = torch.hann_window(cfg.synthesis_fft, dtype=torch.float64).numpy()
        angle = 2 * np.pi * self.frequencies[:, None] * n[None] / cfg.sample_rate  # (S, synthesis_fft)
        cos_kernel = np.fft.rfft(window * np.cos(angle), axis=-1)
        sin_kernel = np.fft.rfft(window * np.sin(angle), axis=-1)
        return torch.from_numpy(cos_kernel).to(torch.complex64), torch.from_numpy(sin_kernel).to(torch.complex64)

    @cached_property
    def _noise_phases(self) -> Tensor:
        """(noise_period, F) unit phasors, fixed by a seed: frame t uses row t mod period."""
        cfg = self.config
        rng = np.random.default_rng(0)
        phase = rng.random((cfg.noise_period, cfg.synthesis_fft // 2 + 1))
        return torch.polar(torch.ones(phase.shape), torch.from_numpy(2 * np.pi * phase).float())

    def synthesize(self, features: Tensor, start_frame: int = 0) -> Tensor:
        """features (T, dim) compressed, frames start_frame .. start_frame + T -> wav (T * hop,) float32."""
        cfg = self.config
        frames = features.shape[0]
        linear = features.float().clamp(min=0) ** (1 / cfg.compression)  # (T, dim)
        amplitude = linear[:, : cfg.num_semitones]  # (T, S)
        noise_rms = linear[:, cfg.num_semitones :] / torch.from_numpy(np.sqrt(self.noise_gain)).float()  # (T, E)
        index = torch.arange(start_frame, start_frame + frames, dtype=torch.float64)  # (T,)
        # Phase from absolute time, reduced in float64: frame 10^6 keeps its phase exact.
        cycles = torch.from_numpy(self.frequencies)[None] * (index[:, None] * cfg.hop_length / cfg.sample_rate)
        phase = (2 * math.pi * torch.frac(cycles)).float()  # (T, S)
        cos_kernel, sin_kernel = self._partial_kernels
        spectrum = (amplitude * phase.cos()).to(torch.complex64) @ cos_kernel  # (T, F)
        spectrum -= (amplitude * phase.sin()).to(torch.complex64) @ sin_kernel
        noise_mag = noise_rms @ torch.from_numpy(self.band_masks(cfg.synthesis_fft))  # (T, F)
        spectrum += noise_mag * self._noise_phases[index.long() % cfg.noise_period]
        window = torch.hann_window(cfg.synthesis_fft)
        return torch.istft(
            spectrum.T, cfg.synthesis_fft, cfg.hop_length, window=window, center=True, length=frames * cfg.hop_length
        )
