"""ssmttm: text-to-music generation with state-space language models."""

from ssmttm._allocator import tune_allocator

tune_allocator()

__version__ = "0.1.0"
