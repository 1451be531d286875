"""Backbones: one residual stack around one of four mixers; six kinds, registered in registry.py.

- `simba`: Mamba-2 mixer plus an MLP channel mixer per block (the paper's best; the release's
  layout when `final_norm` is off).
- `mamba2`: Mamba-2 mixer only. `mamba`: Mamba-1 selective-scan mixer only.
- `simba3`, `mamba3`: the same two layouts with the Mamba-3 mixer (mamba3.py).
- `transformer`: pre-norm causal self-attention plus MLP, MusicGen-like, decoded with a KV cache.

SSM stacks use RMSNorm, the transformer LayerNorm. Any of them can add cross-attention to the text.
"""

from __future__ import annotations

from ssmttm.backbones.base import Backbone, BatchState, Context
from ssmttm.backbones.blocks import StackBackbone, StackState
from ssmttm.backbones.registry import MIXERS, BackboneConfig, MixerSpec, build_backbone, mixer_spec

__all__ = [
    "MIXERS",
    "Backbone",
    "BackboneConfig",
    "BatchState",
    "Context",
    "MixerSpec",
    "StackBackbone",
    "StackState",
    "build_backbone",
    "mixer_spec",
]
