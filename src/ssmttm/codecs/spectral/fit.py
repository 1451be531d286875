"""Fit the embedded codec on a folder of audio: calibrate, analyse every file, k-means the codebooks.

`ssmttm codec fit CORPUS --out FILE` runs this; the shipped `embedded.safetensors` came from it on
the synthetic corpus (see the README for the exact commands).
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ssmttm.audio import load_audio, resample, to_mono
from ssmttm.codecs.spectral.codec import SpectralCodec
from ssmttm.codecs.spectral.features import SpectralConfig, SpectralModel
from ssmttm.codecs.spectral.rvq import fit_residual_codebooks

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}


@dataclass(frozen=True)
class FitConfig:
    max_frames: int = 120_000  # frames sampled for k-means: over 100 per entry, two minutes on 2 cores
    iterations: int = 25
    seed: int = 0
    workers: int = 1


def audio_files(folder: Path) -> list[Path]:
    """Every audio file under `folder`, sorted, hidden files skipped."""
    files = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.parts)
    ]
    return sorted(files)


def fit_spectral_codec(
    corpus: str | Path, out: str | Path, config: SpectralConfig | None = None, fit: FitConfig | None = None
) -> SpectralCodec:
    """Fit codebooks on every audio file under `corpus` and write them to `out`; returns the codec."""
    config, fit = config or SpectralConfig(), fit or FitConfig()
    files = audio_files(Path(corpus))
    if not files:
        raise ValueError(f"no audio files (wav, flac, mp3, ogg) under {corpus}")
    model = SpectralModel.calibrate(config)
    features = _analyze_all(model, files, fit.workers)  # (N, dim)
    generator = torch.Generator().manual_seed(fit.seed)
    if len(features) > fit.max_frames:
        features = features[torch.randperm(len(features), generator=generator)[: fit.max_frames]]
    log.info("fitting %d x %d codebooks on %d frames", config.num_codebooks, config.codebook_size, len(features))
    books = fit_residual_codebooks(features, config.num_codebooks, config.codebook_size, fit.iterations, fit.seed)
    codec = SpectralCodec(model, books, str(out))
    codec.save(out)
    return codec


def _analyze_all(model: SpectralModel, files: list[Path], workers: int) -> torch.Tensor:
    jobs = [(model, path) for path in files]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(tqdm(pool.map(_analyze_file, jobs), total=len(jobs), desc="analyse", unit="file"))
    else:
        parts = [_analyze_file(job) for job in tqdm(jobs, desc="analyse", unit="file")]
    return torch.from_numpy(np.concatenate(parts))


def _analyze_file(job: tuple[SpectralModel, Path]) -> np.ndarray:
    model, path = job
    wav, rate = load_audio(path)
    mono = resample(to_mono(wav), rate, model.config.sample_rate)[0]  # (N,)
    hop = model.config.hop_length
    mono = np.pad(mono, (0, -len(mono) % hop))
    return model.analyze(mono)
