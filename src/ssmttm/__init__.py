"""ssmttm: text-to-music generation with state-space language models."""

from ssmttm._allocator import tune_allocator

__version__ = "0.1.0"

__all__ = ["TextToMusic", "__version__", "tune_allocator"]


def __getattr__(name: str):
    """`from ssmttm import TextToMusic` without importing torch and transformers for every `import ssmttm`."""
    if name == "TextToMusic":
        from ssmttm.generation.pipeline import TextToMusic

        return TextToMusic
    raise AttributeError(f"module 'ssmttm' has no attribute {name!r}")
