"""The Fréchet distance and the KL divergence against closed forms, scipy and hand-made taggers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.special import rel_entr

from ssmttm.eval.frechet import FrechetError, GaussianStats, fad_inf, frechet_distance
from ssmttm.eval.kl import EPSILON, KLError, kl_divergence, label_distribution, paired_kl


def _rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


def test_commuting_covariances_match_the_closed_form():
    """With shared eigenvectors, FD = |mu_a - mu_b|^2 + sum (sqrt(d_a) - sqrt(d_b))^2."""
    q, dim = _rotation(6, 0), 6
    d_a, d_b = np.linspace(0.5, 3.0, dim), np.linspace(2.0, 0.1, dim)
    mu_a, mu_b = np.arange(dim, dtype=float), np.ones(dim)
    a = GaussianStats(mu_a, q @ np.diag(d_a) @ q.T, 100)
    b = GaussianStats(mu_b, q @ np.diag(d_b) @ q.T, 100)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(d_a) - np.sqrt(d_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-10)


def test_samples_estimate_the_distance_between_their_gaussians():
    rng = np.random.default_rng(1)
    cov = np.diag([1.0, 2.0, 0.5, 4.0])
    x = rng.multivariate_normal(np.zeros(4), cov, size=40000)
    y = rng.multivariate_normal(np.full(4, 0.5), np.eye(4), size=40000)
    expected = 4 * 0.25 + np.sum((np.sqrt(np.diag(cov)) - 1.0) ** 2)
    assert frechet_distance(GaussianStats.of(x), GaussianStats.of(y)) == pytest.approx(expected, rel=0.03)


def test_it_agrees_with_scipy_sqrtm_on_full_rank_covariances():
    rng = np.random.default_rng(2)
    a, b = GaussianStats.of(rng.normal(size=(300, 16))), GaussianStats.of(rng.normal(size=(300, 16)) * 1.5 + 0.2)
    root = scipy.linalg.sqrtm(a.cov @ b.cov).real
    diff = a.mean - b.mean
    expected = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_fewer_clips_than_dimensions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 64))  # a covariance of rank 9
    stats = GaussianStats.of(x)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-9)
    shift = rng.normal(size=64)
    moved = GaussianStats.of(x + shift)  # the same covariance: FD is the squared shift
    assert frechet_distance(stats, moved) == pytest.approx(shift @ shift, rel=1e-8)
    other = GaussianStats.of(rng.normal(size=(12, 64)))
    assert np.isfinite(frechet_distance(stats, other)) and frechet_distance(stats, other) > 0


def test_fad_inf_removes_the_finite_sample_bias():
    rng = np.random.default_rng(4)
    reference = GaussianStats.of(rng.normal(size=(60000, 8)))
    x = rng.normal(size=(2000, 8))  # the same distribution: its FD is bias alone
    biased = frechet_distance(GaussianStats.of(x), reference)
    intercept, slope = fad_inf(x, reference, steps=10, min_clips=200, seed=0)
    assert slope > 0 and abs(intercept) < biased / 3


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (np.zeros((1, 4)), "at least 2 clips"),
        (np.zeros(4), r"\(clips, dimensions\)"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or infinite"),
    ],
)
def test_embeddings_without_a_gaussian_are_refused(embeddings, message):
    with pytest.raises(FrechetError, match=message):
        GaussianStats.of(embeddings)


def test_different_dimensions_are_refused():
    with pytest.raises(FrechetError, match="4 and 3 dimensions"):
        frechet_distance(GaussianStats.of(np.eye(4)), GaussianStats.of(np.eye(3)))


def test_kl_matches_scipy_on_known_distributions():
    rng = np.random.default_rng(5)
    p, q = rng.dirichlet(np.ones(7), size=5), rng.dirichlet(np.ones(7), size=5)
    expected = rel_entr(q, p + EPSILON).sum(axis=1)
    np.testing.assert_allclose(kl_divergence(p, q), expected, rtol=1e-12)
    result = paired_kl(p, q)
    assert result.kl == pytest.approx(expected.mean()) and result.pairs == 5
    assert result.reverse == pytest.approx(rel_entr(p, q + EPSILON).sum(axis=1).mean())
    assert result.both == pytest.approx(result.kl + result.reverse)


def test_a_clips_distribution_is_the_mean_of_its_windows_softmax():
    """A hand-made tagger: window 1 is sure of label 0, window 2 of label 2."""
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    dist = label_distribution(logits)
    soft = np.exp(10.0) / (np.exp(10.0) + 2)
    rest = (1 - soft) / 2  # each of the other two labels in one window
    np.testing.assert_allclose(dist, [(soft + rest) / 2, rest, (soft + rest) / 2], rtol=1e-12)
    assert dist.sum() == pytest.approx(1.0)
    same = paired_kl(dist[None], dist[None])
    assert abs(same.kl) < 1e-5  # only the smoothing separates a clip from itself
    flipped = label_distribution(logits[:, ::-1])
    assert paired_kl(flipped[None], np.array([[0.98, 0.01, 0.01]])).kl > same.kl


def test_kl_needs_pairs_of_one_shape():
    with pytest.raises(KLError, match="one shape"):
        kl_divergence(np.ones((2, 3)) / 3, np.ones((3, 3)) / 3)
    with pytest.raises(KLError, match="windows >= 1"):
        label_distribution(np.zeros((0, 5)))
