"""Decoding: the generator (prefill, then step), classifier-free guidance and sampling."""

from ssmttm.generation.generator import Generator, SamplingConfig

__all__ = ["Generator", "SamplingConfig"]
