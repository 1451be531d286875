"""Backbones: one residual stack, four mixers.

- `simba`: Mamba-2 mixer plus an MLP channel mixer per block (the paper's best; the release's
  layout when `final_norm` is off).
- `mamba2`: Mamba-2 mixer only. `mamba`: Mamba-1 selective-scan mixer only.
- `transformer`: pre-norm causal self-attention plus MLP, MusicGen-like, decoded with a KV cache.

SSM stacks use RMSNorm, the transformer LayerNorm. Any of them can add cross-attention to the text.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ssmttm.backbones.attention import SelfAttention
from ssmttm.backbones.base import Backbone, BatchState, Context
from ssmttm.backbones.blocks import StackBackbone, StackState, build_stack
from ssmttm.backbones.mamba import Mamba
from ssmttm.backbones.mamba2 import Mamba2
from ssmttm.config import BackboneConfig, ConfigError

__all__ = ["Backbone", "BatchState", "Context", "StackBackbone", "StackState", "build_backbone"]


def build_backbone(cfg: BackboneConfig, cross_attention: bool, rope: bool) -> StackBackbone:
    make_mixer: Callable[[], nn.Module]
    if cfg.kind in ("simba", "mamba2"):
        if cfg.kind == "simba" and not cfg.mlp_hidden:
            raise ConfigError("a simba backbone needs backbone.mlp_hidden > 0 (its MLP channel mixer)")
        make_mixer = partial(Mamba2, cfg.d_model, cfg.mamba2)
    elif cfg.kind == "mamba":
        make_mixer = partial(Mamba, cfg.d_model, cfg.mamba)
    elif cfg.kind == "transformer":
        make_mixer = partial(SelfAttention, cfg.d_model, cfg.num_heads, rope)
    else:
        raise ConfigError(f"unknown backbone kind {cfg.kind!r}")
    norm = nn.LayerNorm if cfg.kind == "transformer" else nn.RMSNorm
    return build_stack(cfg, make_mixer, partial(norm, eps=cfg.norm_eps), cross_attention)
