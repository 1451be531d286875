"""Residual blocks and the stack they form; the mixer inside is what tells backbones apart.

Block = norm -> mixer -> dropout -> residual, then optionally norm -> cross-attention -> dropout
-> residual, then optionally norm -> MLP -> residual (the MLP has its own dropouts). This is the
release's SiMBA block when the mixer is Mamba-2 and the norms are RMSNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.attention import CrossAttention, CrossState
from ssmttm.backbones.base import Backbone, BatchState, Context, Mixer
from ssmttm.ops.linear import linear

if TYPE_CHECKING:  # annotations only: the registry, which defines the config, builds blocks
    from ssmttm.backbones.registry import BackboneConfig

# A mixer's fused step of a whole block (registry.py): made once per block, then called with
# (x, state, training); it returns the block's output, or None where it does not apply.
FusedBlockStep = Callable[[Tensor, "BlockState", bool], "Tensor | None"]


class MLP(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, with biases (the release's `feed_forward`)."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(F.gelu(linear(x, self.fc1)), self.dropout, self.training)
        return F.dropout(linear(h, self.fc2), self.dropout, self.training)


@dataclass
class BlockState(BatchState):
    mixer: Any  # the mixer's own state: Mamba2State, Mamba3State, MambaState or KVCache
    cross: CrossState | None


class Block(nn.Module):
    def __init__(
        self,
        cfg: BackboneConfig,
        mixer: Mixer,
        make_norm: Callable[[int], nn.Module],
        cross_attention: bool,
        fused_step_for: Callable[[Block], FusedBlockStep | None] | None = None,
    ) -> None:
        super().__init__()
        self._fused_step_for = fused_step_for
        d = cfg.d_model
        self.dropout = cfg.dropout
        self.mixer_norm = make_norm(d)
        self.mixer = mixer
        self.cross_norm = make_norm(d) if cross_attention else None
        self.cross = CrossAttention(d, cfg.num_heads) if cross_attention else None
        self.mlp_norm = make_norm(d) if cfg.mlp_hidden else None
        self.mlp = MLP(d, cfg.mlp_hidden, cfg.dropout) if cfg.mlp_hidden else None

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        x = x + self._drop(self.mixer(self.mixer_norm(x), ctx))
        return self._rest(x, self.cross.memory(ctx) if self.cross else None)

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, BlockState]:
        y, mixer_state = self.mixer.prefill(self.mixer_norm(x), ctx)
        cross = self.cross.memory(ctx) if self.cross else None
        return self._rest(x + self._drop(y), cross), BlockState(mixer_state, cross)

    def step(self, x: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        fused = self._fused_step
        if fused is not None:
            y = fused(x, state, self.training)
            if y is not None:
                return y, state
        return self._step_modules(x, state)

    def _step_modules(self, x: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        self.check_rows(x, state)
        y, mixer_state = self.mixer.step(self.mixer_norm(x), state.mixer)
        return self._rest(x + self._drop(y), state.cross), BlockState(mixer_state, state.cross)

    @cached_property
    def _fused_step(self) -> FusedBlockStep | None:
        """The mixer's fused CPU step for this block (registry.py), or None. Cached: the step is the
        decoding loop, and each nn.Module attribute lookup costs about a microsecond."""
        return None if self._fused_step_for is None else self._fused_step_for(self)

    def check_rows(self, x: Tensor, state: BlockState) -> None:
        """Raise ValueError unless x has one row per row of the mixer's state and of the text memory.

        Every step path checks first, with the same words: the modules would broadcast one row over
        the other's batch (and a kernel read past the smaller). Shape comparisons only, in the
        decoding loop."""
        rows = x.shape[0]
        state.mixer.check_rows(rows)
        memory = state.cross
        if memory is None:
            return
        if not rows == memory.k.shape[0] == memory.v.shape[0]:
            raise ValueError(
                f"decoding step: {rows} input rows against text keys of {memory.k.shape[0]} rows and values of "
                f"{memory.v.shape[0]}; a step takes one input row per text row"
            )
        if memory.mask is not None and memory.mask.shape != (rows, memory.k.shape[2]):
            raise ValueError(
                f"decoding step: a text mask {tuple(memory.mask.shape)} for {rows} rows of {memory.k.shape[2]} "
                f"text keys; it must be ({rows}, {memory.k.shape[2]})"
            )

    def _rest(self, x: Tensor, cross: CrossState | None) -> Tensor:
        """Cross-attention and MLP: per position, the same in every path."""
        if self.cross is not None and cross is not None:
            x = x + self._drop(self.cross(self.cross_norm(x), cross))
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training)


@dataclass
class StackState(BatchState):
    layers: list[BlockState]


class StackBackbone(Backbone[StackState]):
    def __init__(self, cfg: BackboneConfig, blocks: list[Block], final_norm: nn.Module | None) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        self.layers = nn.ModuleList(blocks)
        self.final_norm = final_norm

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        for block in self.layers:
            x = block(x, ctx)
        return self._finish(x)

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, StackState]:
        states = []
        for block in self.layers:
            x, state = block.prefill(x, ctx)
            states.append(state)
        return self._finish(x), StackState(states)

    def step(self, x: Tensor, state: StackState) -> tuple[Tensor, StackState]:
        states = []
        for block, layer_state in zip(self.layers, state.layers, strict=True):
            x, layer_state = block.step(x, layer_state)
            states.append(layer_state)
        return self._finish(x), StackState(states)

    def _finish(self, x: Tensor) -> Tensor:
        return x if self.final_norm is None else self.final_norm(x)


def build_stack(
    cfg: BackboneConfig,
    make_mixer: Callable[[], Mixer],
    make_norm: Callable[[int], nn.Module],
    cross_attention: bool,
    fused_step_for: Callable[[Block], FusedBlockStep | None] | None = None,
) -> StackBackbone:
    blocks = [Block(cfg, make_mixer(), make_norm, cross_attention, fused_step_for) for _ in range(cfg.n_layers)]
    return StackBackbone(cfg, blocks, make_norm(cfg.d_model) if cfg.final_norm else None)
