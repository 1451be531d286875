"""Decoding: the generator (prefill, then step), classifier-free guidance and sampling, and the
text-to-music pipeline (`TextToMusic`) on top of them."""

from ssmttm.generation.generator import Generator
from ssmttm.generation.sampling import SamplingConfig

__all__ = ["Generator", "SamplingConfig"]
