"""The Fréchet distance between two sets of embeddings (FAD when the embeddings are of audio).

Each set is summarised by a Gaussian (mean and covariance, in float64), and

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

The trace of the square root is computed with symmetric eigendecompositions only:
tr((S_a S_b)^(1/2)) = tr((A S_b A)^(1/2)) with A = S_a^(1/2), and A S_b A is symmetric and positive
semi-definite, so its eigenvalues are real and (up to rounding) non-negative. That stays exact when
a covariance is singular, as it is with fewer clips than dimensions, where scipy's general `sqrtm`
goes complex and, at 1024 dimensions, takes over a minute on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FrechetError(ValueError):
    """Embeddings from which no Gaussian, or no distance, can be had."""


@dataclass(frozen=True)
class GaussianStats:
    """The mean (D,) and covariance (D, D) of `count` embeddings, float64."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    @classmethod
    def of(cls, embeddings: np.ndarray) -> GaussianStats:
        """embeddings (N, D), N >= 2: the sample mean and the unbiased sample covariance."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2:
            raise FrechetError(f"embeddings must be (clips, dimensions), got shape {x.shape}")
        if x.shape[0] < 2:
            raise FrechetError(f"a covariance needs at least 2 clips, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise FrechetError("embeddings hold NaN or infinite values")
        return cls(x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), x.shape[0])

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """FD between two Gaussians of the same dimension; 0 for a Gaussian and itself, and symmetric."""
    if a.dim != b.dim:
        raise FrechetError(f"embeddings of {a.dim} and {b.dim} dimensions cannot be compared")
    root_a = _sqrt_psd(a.cov)
    cross = _drop_rounding(np.linalg.eigvalsh(_symmetric(root_a @ b.cov @ root_a)))
    trace_root = np.sqrt(cross).sum()
    diff = a.mean - b.mean
    distance = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_root
    return float(max(distance, 0.0))  # rounding can leave -1e-12 where the sets agree


def fad_inf(
    embeddings: np.ndarray,
    reference: GaussianStats,
    steps: int = 25,
    min_clips: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """fadtk's FAD-inf: FD of random subsets of `embeddings` (N, D) of `steps` sizes from
    `min_clips` (default min(500, N // 2)) to N, fitted as FD = intercept + slope / n; returns
    (intercept, slope). The intercept is the FD that infinitely many clips would give, free of
    the bias that a finite sample's covariance adds."""
    x = np.asarray(embeddings, dtype=np.float64)
    total = x.shape[0]
    low = min(500, total // 2) if min_clips is None else min_clips
    if low < 2 or total < 3:
        raise FrechetError(f"FAD-inf needs subsets of at least 2 clips from at least 3, got {total} clips")
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.linspace(low, total, steps).astype(int))
    distances = [frechet_distance(GaussianStats.of(x[rng.choice(total, n, replace=False)]), reference) for n in sizes]
    slope, intercept = np.polyfit(1.0 / sizes, distances, 1)
    return float(intercept), float(slope)


def _symmetric(m: np.ndarray) -> np.ndarray:
    return (m + m.T) / 2.0


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(_symmetric(m))
    return (vectors * np.sqrt(_drop_rounding(values))) @ vectors.T


def _drop_rounding(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those within rounding of 0 set to 0 (numpy's matrix_rank
    tolerance): a singular covariance's zeros come out as +-1e-16, and their square roots, 1e-8
    each, would add up over hundreds of dimensions."""
    tolerance = np.abs(values).max(initial=0.0) * values.shape[0] * np.finfo(np.float64).eps
    return np.where(values > tolerance, values, 0.0)
