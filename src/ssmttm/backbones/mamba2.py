"""The Mamba-2 mixer, with mamba_ssm `Mamba2`'s parameter names and layout, in pure PyTorch.

Also what the registry (registry.py) asks of it: its FLOPs, its state's size, and the fused CPU
step of a whole Mamba-2 block (`Mamba2BlockKernel`: one C++ call per block and position).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.base import BatchState, Context, Mixer, matmul_flops, padded_length, real_positions
from ssmttm.ops import cpu_kernels
from ssmttm.ops.conv import causal_conv1d, conv_window
from ssmttm.ops.linear import linear
from ssmttm.ops.mamba2_step import check_rows, gated_rms_norm, mamba2_step_fused, mamba2_step_ref
from ssmttm.ops.ssd import ssd_chunked

if TYPE_CHECKING:  # annotations only: blocks.py builds blocks from the registry, which imports this file
    from ssmttm.backbones.attention import CrossState
    from ssmttm.backbones.blocks import Block, BlockState


@dataclass
class Mamba2Config:
    """The Mamba-2 mixer; defaults are mamba_ssm's `Mamba2` defaults."""

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    # Chunk length of the SSD scan: longer chunks do more (dense) intra-chunk work and less
    # inter-chunk bookkeeping; 64 is a good CPU trade-off at d_state 512 (benchmarks/).
    chunk_size: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    a_init_min: float = 1.0
    a_init_max: float = 16.0


@dataclass
class Mamba2State(BatchState):
    recurrent_fields = ("ssm",)

    conv: Tensor  # (B, conv_dim, d_conv): the convolution's last d_conv inputs, as mamba_ssm keeps them
    ssm: Tensor  # (B, nheads, headdim, d_state)

    def check_rows(self, rows: int) -> None:
        check_rows(rows, self.conv, self.ssm)


class GatedRMSNorm(nn.Module):
    """mamba_ssm's `RMSNormGated` with norm_before_gate=False: rmsnorm(x * silu(z)) per group."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return gated_rms_norm(x, z, self.weight, self.group_size, self.eps)


def inverse_softplus_dt(size: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """mamba_ssm's dt initialisation: log-uniform in [dt_min, dt_max], stored before softplus."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba2(Mixer[Mamba2State]):
    def __init__(self, d_model: int, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_inner = cfg.expand * d_model
        if self.d_inner % cfg.headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not divisible by headdim {cfg.headdim}")
        self.nheads = self.d_inner // cfg.headdim
        if self.nheads % cfg.ngroups:
            raise ValueError(f"{self.nheads} heads do not split into {cfg.ngroups} groups")
        self.conv_dim = self.d_inner + 2 * cfg.ngroups * cfg.d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, padding=cfg.d_conv - 1)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.nheads, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(cfg.a_init_min, cfg.a_init_max)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // cfg.ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self._parallel(x, ctx)[0]

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, Mamba2State]:
        y, conv_inputs, ssm = self._parallel(x, ctx)
        return y, Mamba2State(conv=conv_window(conv_inputs, self.cfg.d_conv), ssm=ssm.contiguous())

    def _parallel(self, u: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, T, D) -> output (B, T, D), the raw conv inputs (B, T, conv_dim), final SSM state."""
        batch, length, _ = u.shape
        cfg = self.cfg
        keep = real_positions(ctx, u)
        z, xBC, dt = linear(u, self.in_proj).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if keep is not None:  # masked positions: zero input to the convolution ...
            xBC = xBC * keep
        conv = F.silu(causal_conv1d(xBC, self.conv1d.weight, self.conv1d.bias))
        x, B, C = conv.split([self.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        if keep is not None:  # ... and dt = 0, so the state neither decays nor takes input
            dt = dt * keep
        x = x.unflatten(-1, (self.nheads, cfg.headdim))  # (B, T, H, P)
        y, final = ssd_chunked(
            x,
            dt,
            -torch.exp(self.A_log.float()),
            B.unflatten(-1, (cfg.ngroups, cfg.d_state)),
            C.unflatten(-1, (cfg.ngroups, cfg.d_state)),
            cfg.chunk_size,
        )
        y = (y + x * self.D[:, None]).reshape(batch, length, self.d_inner)
        return linear(self.norm(y, z), self.out_proj), xBC, final

    def step(self, u: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """u (B, D) -> (B, D); updates `state` in place."""
        zxbcdt = linear(u, self.in_proj)
        # The fused CPU kernel (ops/cpu_kernels.cpp) wherever it runs; the PyTorch twin elsewhere,
        # and wherever autograd records the step: the kernel's output has no gradient.
        fused = zxbcdt.dtype == torch.float32 and zxbcdt.is_cpu and not zxbcdt.requires_grad and cpu_kernels.available()
        inner = mamba2_step_fused if fused else mamba2_step_ref
        y = inner(
            zxbcdt,
            state.conv,
            self.conv1d.weight,
            self.conv1d.bias,
            self.dt_bias,
            self.A_log,
            self.D,
            self.norm.weight,
            state.ssm,
            self.cfg.ngroups,
            self.norm.eps,
        )
        return linear(y, self.out_proj), state


def mamba2_flops(d_model: int, cfg: Mamba2Config, length: int) -> float:
    """One Mamba-2 mixer over `length` positions (training/flops.py says what is counted)."""
    d_inner = cfg.expand * d_model
    nheads = d_inner // cfg.headdim
    bc = 2 * cfg.ngroups * cfg.d_state  # B and C, one (d_state) pair per group
    conv_dim = d_inner + bc
    q, n, padded = cfg.chunk_size, cfg.d_state, padded_length(length, cfg.chunk_size)
    ssd = (
        matmul_flops(padded, n, q) * cfg.ngroups  # C B^T inside each chunk: (q, n) x (n, q) per group
        + matmul_flops(padded, q, d_inner)  # (C B^T * decay) x (x dt) inside each chunk: (q, q) x (q, p) per head
        + matmul_flops(padded, d_inner, n)  # chunk states: (h p, q) x (q, n) per chunk
        + matmul_flops(padded, d_inner, n)  # entering state read out by C: (h p, n) x (n, q) per chunk
    )
    return (
        matmul_flops(length, d_model, d_inner + conv_dim + nheads)  # in_proj: z, x B C, dt
        + 2.0 * length * conv_dim * cfg.d_conv  # depthwise causal conv over x B C
        + ssd
        + matmul_flops(length, d_inner, d_model)  # out_proj
    )


def mamba2_state_bytes(d_model: int, cfg: Mamba2Config, state_dtype: torch.dtype) -> int:
    """One row's `Mamba2State` in one layer: the fp32 convolution window and the SSM state."""
    d_inner = cfg.expand * d_model
    conv = (d_inner + 2 * cfg.ngroups * cfg.d_state) * cfg.d_conv * 4
    return conv + d_inner * cfg.d_state * state_dtype.itemsize


# -- the fused CPU step of a whole block ------------------------------------------------------------

# Linear weights the block kernels read: fp32, bf16, and int8 and int4 packed (ops/quantize.py)
_KERNEL_WEIGHTS = (torch.float32, torch.bfloat16, torch.int8, torch.uint8)


class Mamba2BlockKernel(NamedTuple):
    """What `block_step` (ops/cpu_kernels.cpp) reads of one Mamba-2 or SiMBA block: norm -> Mamba-2
    -> residual, then any cross-attention and MLP, in one C++ call per position.

    It holds the Parameters themselves, so a later cast of their data (`.to`, `cast_linear_weights`)
    is seen; replacing a submodule afterwards is not."""

    cross: bool  # whether the block attends to the text
    linear_weights: tuple[Tensor, ...]  # each in _KERNEL_WEIGHTS
    fp32_weights: tuple[Tensor, ...]  # each must be fp32: the norms'
    weights: tuple  # block_step's arguments after the state's
    check_rows: Callable[[Tensor, BlockState], None]  # the block's own row check, shared with its modules' step

    @classmethod
    def for_block(cls, block: Block) -> Mamba2BlockKernel | None:
        """The kernel's view of `block`, or None if its layout is not one the kernel takes (a Mamba-2
        mixer and RMSNorms with weights)."""
        mixer = block.mixer
        if not isinstance(mixer, Mamba2) or not kernel_norms(block):
            return None
        rest, rest_linears = rest_of_block(block)
        weights = (
            block.mixer_norm.weight,
            rms_eps(block.mixer_norm),
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
            *rest,
        )
        linears = [mixer.in_proj, mixer.out_proj, *rest_linears]
        return cls(
            block.cross is not None,
            tuple(layer.weight for layer in linears),
            tuple(n.weight for n in kernel_norms(block)),
            weights,
            block.check_rows,
        )

    def __call__(self, x: Tensor, block_state: BlockState, training: bool) -> Tensor | None:
        """The block's output for x (B, D), the mixer's state updated in place; None where the
        kernel does not apply, for the block's modules to step instead."""
        return self.step(x, block_state) if self.applies(x, block_state, training) else None

    def applies(self, x: Tensor, block_state: BlockState, training: bool) -> bool:
        """fp32 rows on a CPU with the C++ kernels built, no autograd, weights in dtypes it reads."""
        return block_state.mixer.conv.dtype == torch.float32 and block_kernel_applies(self, x, block_state, training)

    def step(self, x: Tensor, block_state: BlockState) -> Tensor:
        """The block's step in one C++ call (ops/cpu_kernels.cpp); the mixer's state is updated in place."""
        state, memory = block_state.mixer, block_state.cross
        self.check_rows(x, block_state)  # first: a batch mismatch is the modules' ValueError, not the kernel's
        text = (None, None, None) if memory is None else (memory.k, memory.v, memory.mask)
        return cpu_kernels.extension().block_step(x.contiguous(), state.conv, state.ssm, *text, *self.weights)


# -- what the block kernels of Mamba-2 and Mamba-3 share ----------------------------------------------


def kernel_norms(block: Block) -> list[nn.RMSNorm] | None:
    """The block's norms if all are RMSNorms with weights (what the block kernels take), else None."""
    norms = [norm for norm in (block.mixer_norm, block.cross_norm, block.mlp_norm) if norm is not None]
    return norms if all(isinstance(n, nn.RMSNorm) and n.weight is not None for n in norms) else None


def rest_of_block(block: Block) -> tuple[tuple, list[nn.Linear]]:
    """What the block kernels take after the mixer's weights: the cross-attention's (None where the
    block has none), then the MLP's; and those parts' Linears."""
    cross, mlp = block.cross, block.mlp
    linears: list[nn.Linear] = []
    cross_weights: tuple = (None, 0.0, None, None)
    if cross is not None:
        cross_norm = block.cross_norm
        cross_weights = (cross_norm.weight, rms_eps(cross_norm), cross.q_proj.weight, cross.out_proj.weight)
        linears += [cross.q_proj, cross.out_proj]
    mlp_weights: tuple = (None, 0.0, None, None, None, None)
    if mlp is not None:
        norm = block.mlp_norm
        mlp_weights = (norm.weight, rms_eps(norm), mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
        linears += [mlp.fc1, mlp.fc2]
    return (*cross_weights, *mlp_weights), linears


class _BlockKernel(Protocol):
    cross: bool
    linear_weights: tuple[Tensor, ...]
    fp32_weights: tuple[Tensor, ...]


def block_kernel_applies(kernel: _BlockKernel, x: Tensor, block_state: BlockState, training: bool) -> bool:
    """What every block kernel needs, its mixer's state aside: fp32 rows on a CPU with the C++
    kernels built, no autograd, the text as the kernel reads it, weights in dtypes it reads."""
    memory = block_state.cross
    return (
        kernel.cross == (memory is not None)
        and (memory is None or _kernel_reads_memory(memory))
        and not training
        and not torch.is_grad_enabled()
        and x.dim() == 2
        and x.dtype == torch.float32
        and x.is_cpu
        and all(w.dtype in _KERNEL_WEIGHTS for w in kernel.linear_weights)
        and all(w.dtype == torch.float32 for w in kernel.fp32_weights)
        and cpu_kernels.available()
        and x.shape[0] <= cpu_kernels.linear_max_rows()
    )


def _kernel_reads_memory(memory: CrossState) -> bool:
    """Text keys and values in fp32 on the CPU (any strides), and a bool mask or none."""
    mask_ok = memory.mask is None or (memory.mask.dtype == torch.bool and memory.mask.dim() == 2)
    return memory.k.dtype == memory.v.dtype == torch.float32 and memory.k.is_cpu and mask_ok


def rms_eps(norm: nn.RMSNorm) -> float:
    """The epsilon nn.RMSNorm adds: its own, or fp32's machine epsilon when it has none."""
    return norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
