"""The embedded offline codec: semitone partials + noise bands, residual k-means codebooks."""

from ssmttm.codecs.spectral.codec import EMBEDDED_WEIGHTS, SpectralCodec, load_embedded
from ssmttm.codecs.spectral.features import SpectralConfig, SpectralModel

__all__ = ["EMBEDDED_WEIGHTS", "SpectralCodec", "SpectralConfig", "SpectralModel", "load_embedded"]
