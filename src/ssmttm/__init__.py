"""ssmttm: text-to-music generation with state-space language models."""

from pathlib import Path

from ssmttm._allocator import tune_allocator
from ssmttm.provenance import SOURCE_VERSION as __version__

# The model shipped inside the package, which `ssmttm generate` and `make demo` use by default.
DEMO_MODEL = Path(__file__).resolve().parent / "models" / "demo"

__all__ = ["DEMO_MODEL", "TextToMusic", "__version__", "tune_allocator"]


def __getattr__(name: str):
    """`from ssmttm import TextToMusic` without importing torch and transformers for every `import ssmttm`."""
    if name == "TextToMusic":
        from ssmttm.generation.pipeline import TextToMusic

        return TextToMusic
    raise AttributeError(f"module 'ssmttm' has no attribute {name!r}")
