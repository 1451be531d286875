"""Residual blocks and the stack they form; the mixer inside is what tells backbones apart.

Block = norm -> mixer -> dropout -> residual, then optionally norm -> cross-attention -> dropout
-> residual, then optionally norm -> MLP -> residual (the MLP has its own dropouts). This is the
release's SiMBA block when the mixer is Mamba-2 and the norms are RMSNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.attention import CrossAttention, CrossState
from ssmttm.backbones.base import Backbone, BatchState, Context, Mixer
from ssmttm.backbones.mamba2 import Mamba2, Mamba2State
from ssmttm.config import BackboneConfig
from ssmttm.ops import cpu_kernels
from ssmttm.ops.linear import linear
from ssmttm.ops.mamba2_step import check_rows


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
    mixer: Any  # the mixer's own state: Mamba2State, MambaState or KVCache
    cross: CrossState | None


class Block(nn.Module):
    def __init__(
        self,
        cfg: BackboneConfig,
        mixer: Mixer,
        make_norm: Callable[[int], nn.Module],
        cross_attention: bool,
    ) -> None:
        super().__init__()
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
        if self._fused_step_applies(x, state):
            return self._step_fused(x, state), state
        return self._step_modules(x, state)

    def _step_modules(self, x: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        _check_rows(x, state)
        y, mixer_state = self.mixer.step(self.mixer_norm(x), state.mixer)
        return self._rest(x + self._drop(y), state.cross), BlockState(mixer_state, state.cross)

    def _fused_step_applies(self, x: Tensor, state: BlockState) -> bool:
        """A Mamba-2 or SiMBA block (Mamba-2 mixer, RMSNorms, any cross-attention and MLP) decoding
        fp32 rows on a CPU with the C++ kernels: its whole step is one `block_step` call."""
        kernel = self._block_kernel
        return (
            kernel is not None
            and kernel.cross == (state.cross is not None)
            and (state.cross is None or _kernel_reads_memory(state.cross))
            and not self.training
            and not torch.is_grad_enabled()
            and x.dim() == 2
            and x.dtype == state.mixer.conv.dtype == torch.float32
            and x.is_cpu
            and all(w.dtype in _KERNEL_WEIGHTS for w in kernel.linear_weights)
            and all(w.dtype == torch.float32 for w in kernel.norm_weights)
            and cpu_kernels.available()
            and x.shape[0] <= cpu_kernels.linear_max_rows()
        )

    def _step_fused(self, x: Tensor, block_state: BlockState) -> Tensor:
        """`_step_modules` in one C++ call (ops/cpu_kernels.cpp); the mixer's state is updated in place."""
        kernel, state, memory = self._block_kernel, block_state.mixer, block_state.cross
        assert kernel is not None
        _check_rows(x, block_state)  # first: a batch mismatch is the modules' ValueError, not the kernel's RuntimeError
        text = (None, None, None) if memory is None else (memory.k, memory.v, memory.mask)
        return cpu_kernels.extension().block_step(x.contiguous(), state.conv, state.ssm, *text, *kernel.weights)

    @cached_property
    def _block_kernel(self) -> _BlockKernel | None:
        """What `block_step` reads of this block, or None if its layout is not one the kernel takes
        (a Mamba-2 mixer and RMSNorms with weights). Cached: the step is the decoding loop, and each
        nn.Module attribute lookup costs about a microsecond (looked up at every step, they came to
        more than the rest of the check). It holds the Parameters themselves, so a later cast of their data
        (`.to`, `cast_linear_weights`) is seen; replacing a submodule afterwards is not."""
        mixer, cross, mlp = self.mixer, self.cross, self.mlp
        norms = [norm for norm in (self.mixer_norm, self.cross_norm, self.mlp_norm) if norm is not None]
        if not isinstance(mixer, Mamba2) or not all(isinstance(n, nn.RMSNorm) and n.weight is not None for n in norms):
            return None
        linears = [mixer.in_proj, mixer.out_proj]
        cross_weights: tuple = (None, 0.0, None, None)
        if cross is not None:
            cross_weights = (self.cross_norm.weight, _eps(self.cross_norm), cross.q_proj.weight, cross.out_proj.weight)
            linears += [cross.q_proj, cross.out_proj]
        mlp_weights: tuple = (None, 0.0, None, None, None, None)
        if mlp is not None:
            norm = self.mlp_norm
            mlp_weights = (norm.weight, _eps(norm), mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
            linears += [mlp.fc1, mlp.fc2]
        weights = (
            self.mixer_norm.weight,
            _eps(self.mixer_norm),
            mixer.in_proj.weight,
            mixer.in_proj.bias,
            mixer.conv1d.weight,
            mixer.conv1d.bias,
            mixer.dt_bias,
            mixer.A_log,
            mixer.D,
            mixer.norm.weight,
            mixer.cfg.ngroups,
            mixer.norm.eps,
            mixer.out_proj.weight,
            mixer.out_proj.bias,
            *cross_weights,
            *mlp_weights,
        )
        return _BlockKernel(
            cross is not None, tuple(layer.weight for layer in linears), tuple(n.weight for n in norms), weights
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


_KERNEL_WEIGHTS = (torch.float32, torch.bfloat16)


class _BlockKernel(NamedTuple):
    cross: bool  # whether the block attends to the text
    linear_weights: tuple[Tensor, ...]  # each must be fp32 or bf16
    norm_weights: tuple[Tensor, ...]  # each must be fp32
    weights: tuple  # block_step's arguments after the state's


def _check_rows(x: Tensor, state: BlockState) -> None:
    """Raise ValueError unless x has one row per row of a Mamba-2 state and of the text memory.

    Both step paths check first, with the same words: the modules would broadcast one row over the
    other's batch (and the kernel read past the smaller). Shape comparisons only, in the decoding loop."""
    rows = x.shape[0]
    if isinstance(state.mixer, Mamba2State):
        check_rows(rows, state.mixer.conv, state.mixer.ssm)
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


def _kernel_reads_memory(memory: CrossState) -> bool:
    """Text keys and values in fp32 on the CPU (any strides), and a bool mask or none."""
    mask_ok = memory.mask is None or (memory.mask.dtype == torch.bool and memory.mask.dim() == 2)
    return memory.k.dtype == memory.v.dtype == torch.float32 and memory.k.is_cpu and mask_ok


def _eps(norm: nn.RMSNorm) -> float:
    """The epsilon nn.RMSNorm adds: its own, or fp32's machine epsilon when it has none."""
    return norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps


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
) -> StackBackbone:
    blocks = [Block(cfg, make_mixer(), make_norm, cross_attention) for _ in range(cfg.n_layers)]
    return StackBackbone(cfg, blocks, make_norm(cfg.d_model) if cfg.final_norm else None)
