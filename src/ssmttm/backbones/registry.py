"""The mixer registry: every backbone kind, and all that the rest of the library asks of it.

A kind is a residual stack (blocks.py) around one sequence mixer. Its `MixerSpec` says how to
build the mixer, which norm the stack uses, what a step costs in FLOPs and state bytes, which
dtypes its step takes, whether a CUDA graph can capture that step, and its fused CPU step, if any.
Generation, the CUDA graph, FLOP accounting and the CLI read the spec; none of them names a kind.

Adding a mixer (docs/contributing.md): a new file beside this one with its config dataclass,
its `Mixer` and state, and its FLOP and state-size formulas; then one `MixerSpec` in `MIXERS`
below and, if it has settings, one field of its config class in `BackboneConfig`. A fused CPU
kernel, if it has one, goes into ops/cpu_kernels.cpp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from ssmttm.backbones.attention import SelfAttention, kv_cache_bytes, self_attention_flops
from ssmttm.backbones.base import Mixer
from ssmttm.backbones.blocks import Block, FusedBlockStep, StackBackbone, build_stack
from ssmttm.backbones.mamba import Mamba, MambaConfig, mamba_flops, mamba_state_bytes
from ssmttm.backbones.mamba2 import Mamba2, Mamba2BlockKernel, Mamba2Config, mamba2_flops, mamba2_state_bytes
from ssmttm.backbones.mamba3 import Mamba3, Mamba3BlockKernel, Mamba3Config, mamba3_flops, mamba3_state_bytes
from ssmttm.config import ConfigError

# The dtypes a step's Linear weights may be stored in: every mixer's modules take both (ops/linear.py).
WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class BackboneConfig:
    """A stack of residual blocks: mixer (SSM or attention), optional cross-attention, optional MLP."""

    kind: str = "simba"  # a key of MIXERS
    d_model: int = 256
    n_layers: int = 4
    mlp_hidden: int = 0  # width of the MLP channel mixer; 0 means no MLP (plain Mamba / Mamba-2)
    dropout: float = 0.0
    final_norm: bool = True  # the release's SiMBA has none
    norm_eps: float = 1e-5
    num_heads: int = 8  # self-attention (transformer) and cross-attention heads
    # Each mixer's own settings, one field per mixer that has any.
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    mamba3: Mamba3Config = field(default_factory=Mamba3Config)
    mamba: MambaConfig = field(default_factory=MambaConfig)

    def __post_init__(self) -> None:
        mixer_spec(self.kind)  # an unknown kind fails where the config is read, naming the known ones


@dataclass(frozen=True)
class MixerSpec:
    """What one backbone kind is and what its decoding step takes."""

    description: str  # the block, in words, as `ssmttm model` prints it
    build: Callable[[BackboneConfig, bool], Mixer]  # (config, rope) -> one layer's mixer
    norm: type[nn.Module]  # the stack's norms: RMSNorm for the SSMs, LayerNorm for attention
    flops: Callable[[BackboneConfig, int], float]  # one mixer over `length` positions (training/flops.py)
    # One row's state in one layer after `positions` positions, its recurrent part in `state_dtype`.
    state_bytes: Callable[[BackboneConfig, int, torch.dtype], int]
    # A fixed-size state, updated in place by `step`: a CUDA graph can capture the step, and the
    # state stays the same size at any length. False for a cache that grows (attention).
    fixed_state: bool
    # Dtypes the recurrent state may be stored in between steps (`Generator(state_dtype=...)`).
    state_dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    weight_dtypes: tuple[torch.dtype, ...] = WEIGHT_DTYPES
    # The fused CPU step of a whole block: made once per block (None where the block's layout is
    # not the kernel's), then called at each step (blocks.py, FusedBlockStep).
    fused_cpu_step: Callable[[Block], FusedBlockStep | None] | None = None
    needs_mlp: bool = False  # the kind is defined with an MLP channel mixer in every block
    rotary: bool = False  # the mixer can take rotary positions (LMConfig.positions "rope")

    @property
    def cuda_graph(self) -> bool:
        """Whether a CUDA graph can capture this kind's step: only a fixed-size state can be."""
        return self.fixed_state


def _mamba2(cfg: BackboneConfig, rope: bool) -> Mixer:
    return Mamba2(cfg.d_model, cfg.mamba2)


def _mamba3(cfg: BackboneConfig, rope: bool) -> Mixer:
    return Mamba3(cfg.d_model, cfg.mamba3)


def _mamba(cfg: BackboneConfig, rope: bool) -> Mixer:
    return Mamba(cfg.d_model, cfg.mamba)


def _attention(cfg: BackboneConfig, rope: bool) -> Mixer:
    return SelfAttention(cfg.d_model, cfg.num_heads, rope)


_SSM_STATES = (torch.float32, torch.bfloat16)  # the kernels read and write a bf16 state; fp16 could overflow

_MAMBA2 = dict(
    build=_mamba2,
    norm=nn.RMSNorm,
    flops=lambda cfg, length: mamba2_flops(cfg.d_model, cfg.mamba2, length),
    state_bytes=lambda cfg, positions, dtype: mamba2_state_bytes(cfg.d_model, cfg.mamba2, dtype),
    fixed_state=True,
    state_dtypes=_SSM_STATES,
    fused_cpu_step=Mamba2BlockKernel.for_block,
)

_MAMBA3 = dict(
    build=_mamba3,
    norm=nn.RMSNorm,
    flops=lambda cfg, length: mamba3_flops(cfg.d_model, cfg.mamba3, length),
    state_bytes=lambda cfg, positions, dtype: mamba3_state_bytes(cfg.d_model, cfg.mamba3, dtype),
    fixed_state=True,
    state_dtypes=_SSM_STATES,
    fused_cpu_step=Mamba3BlockKernel.for_block,
)

MIXERS: dict[str, MixerSpec] = {
    "simba": MixerSpec(description="Mamba-2 + MLP", needs_mlp=True, **_MAMBA2),
    "mamba2": MixerSpec(description="Mamba-2", **_MAMBA2),
    "simba3": MixerSpec(description="Mamba-3 + MLP", needs_mlp=True, **_MAMBA3),
    "mamba3": MixerSpec(description="Mamba-3", **_MAMBA3),
    "mamba": MixerSpec(
        description="Mamba-1",
        build=_mamba,
        norm=nn.RMSNorm,
        flops=lambda cfg, length: mamba_flops(cfg.d_model, cfg.mamba, length),
        state_bytes=lambda cfg, positions, dtype: mamba_state_bytes(cfg.d_model, cfg.mamba, dtype),
        fixed_state=True,
        state_dtypes=_SSM_STATES,
    ),
    "transformer": MixerSpec(
        description="self-attention + MLP",
        build=_attention,
        norm=nn.LayerNorm,
        flops=lambda cfg, length: self_attention_flops(cfg.d_model, length),
        state_bytes=lambda cfg, positions, dtype: kv_cache_bytes(cfg.d_model, positions),
        fixed_state=False,
        rotary=True,
    ),
}


def mixer_spec(kind: str) -> MixerSpec:
    """The spec of backbone kind `kind`; a ConfigError naming the known kinds otherwise."""
    try:
        return MIXERS[kind]
    except KeyError:
        raise ConfigError(f"unknown backbone kind {kind!r}; choose one of: {', '.join(MIXERS)}") from None


def build_backbone(cfg: BackboneConfig, cross_attention: bool, rope: bool) -> StackBackbone:
    spec = mixer_spec(cfg.kind)
    if spec.needs_mlp and not cfg.mlp_hidden:
        raise ConfigError(f"a {cfg.kind} backbone needs backbone.mlp_hidden > 0 (its MLP channel mixer)")
    return build_stack(
        cfg, partial(spec.build, cfg, rope), partial(spec.norm, eps=cfg.norm_eps), cross_attention, spec.fused_cpu_step
    )
