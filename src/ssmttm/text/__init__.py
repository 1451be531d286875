"""Frozen text encoders behind one interface (`TextEncoder`), built by short name, hub id or local path
(`load_text_encoder`, text/registry.py), and the on-disk cache of their caption embeddings.

Importing the package imports neither torch nor transformers: each name loads its module when it
is first used, so that light modules in here (stated_tempo.py, which the synthetic corpus's
caption writer uses) stay light to import.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["EmbeddingCache", "TextEncoder", "TextEncoderError", "Tokens", "load_text_encoder", "pad_left"]

# Where each exported name lives.
_HOMES = {
    "EmbeddingCache": "ssmttm.text.cache",
    "TextEncoder": "ssmttm.text.base",
    "TextEncoderError": "ssmttm.text.base",
    "Tokens": "ssmttm.text.base",
    "pad_left": "ssmttm.text.base",
    "load_text_encoder": "ssmttm.text.registry",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'ssmttm.text' has no attribute {name!r}")
