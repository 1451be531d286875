"""KL divergence between a tagger's label distributions on generated clips and on their references.

AudioCraft's definition (audiocraft/metrics/kld.py), which MusicGen's and the paper's KL follow:
- a clip's label distribution is the softmax over the tagger's logits, per window of audio the
  tagger reads, averaged over the clip's windows;
- for each pair (a generated clip and the reference clip of the same caption), the KL divergence
  of the reference's distribution q from the generated one's p, with p smoothed by 1e-6:
  sum_j q_j (log q_j - log(p_j + 1e-6));
- the metric is its mean over pairs. AudioCraft reports the reverse direction too, and the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON = 1e-6  # AudioCraft's smoothing of the generated clip's probabilities


class KLError(ValueError):
    """Label distributions that cannot be compared."""


def label_distribution(window_logits: np.ndarray) -> np.ndarray:
    """window_logits (windows, labels) of one clip -> its label distribution (labels,): the softmax
    of each window's logits, averaged over windows."""
    logits = np.asarray(window_logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise KLError(f"a clip's logits must be (windows >= 1, labels), got shape {logits.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return (probs / probs.sum(axis=1, keepdims=True)).mean(axis=0)


def kl_divergence(generated: np.ndarray, reference: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """generated p (N, labels) and reference q (N, labels) distributions -> (N,) KL(q || p + eps)."""
    p, q = np.asarray(generated, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise KLError(f"paired distributions must have one shape (pairs, labels), got {p.shape} and {q.shape}")
    # 0 log 0 = 0: a label the reference gives no mass adds nothing, as in torch's kl_div.
    terms = np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - np.log(p + epsilon)), 0.0)
    return terms.sum(axis=1)


@dataclass(frozen=True)
class PairedKL:
    """Means over N pairs: `kl` = KL(reference || generated), AudioCraft's `kld`; `reverse` the other
    direction; `both` their sum."""

    kl: float
    reverse: float
    pairs: int

    @property
    def both(self) -> float:
        return self.kl + self.reverse


def paired_kl(generated: np.ndarray, reference: np.ndarray) -> PairedKL:
    """The KL metric over pairs of label distributions, generated (N, labels) against reference."""
    forward = kl_divergence(generated, reference)
    if forward.shape[0] == 0:
        raise KLError("no pairs of clips to compare")
    reverse = kl_divergence(reference, generated)
    return PairedKL(float(forward.mean()), float(reverse.mean()), int(forward.shape[0]))
