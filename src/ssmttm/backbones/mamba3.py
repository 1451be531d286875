"""The Mamba-3 mixer, with mamba_ssm `Mamba3`'s parameter names and layout, in pure PyTorch.

Mamba-3 (Lahoti et al. 2026) changes three things in Mamba-2: a trapezoidal rule feeds each input
to the state twice (ops/ssd3.py says how), B and C are turned by a data-dependent rotation whose
phase accumulates over positions (the "angle" state), and with `is_mimo` each head reads and writes
its state through R ranks. There is no convolution; B and C get an RMSNorm and a bias per head.

Tested against fixtures that mamba_ssm's module produced (tests/golden/mamba3*_golden.json), whose
JSON also spells out the equations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from ssmttm.backbones.base import BatchState, Context, Mixer, matmul_flops, padded_length
from ssmttm.backbones.mamba2 import block_kernel_applies, inverse_softplus_dt, kernel_norms, rest_of_block, rms_eps
from ssmttm.ops import cpu_kernels
from ssmttm.ops.linear import linear
from ssmttm.ops.mamba3_step import (
    TWO_PI,
    Mamba3Weights,
    Projected,
    check_rows,
    gate,
    gated_head_norm,
    mamba3_step_fused,
    mamba3_step_ref,
    project,
    rotate,
    up,
)
from ssmttm.ops.ssd3 import ssd3_chunked, trapezoid_weights

if TYPE_CHECKING:  # annotations only: blocks.py builds blocks from the registry, which imports this file
    from ssmttm.backbones.blocks import Block, BlockState


@dataclass
class Mamba3Config:
    """The Mamba-3 mixer; defaults are mamba_ssm's `Mamba3` defaults (SISO).

    The presets (configs/simba3-*, mamba3-*, tiny-*3) are SISO with d_state half their Mamba-2
    counterparts': 256 against 512, 32 against tiny-simba's 64. The paper suggests this: it reports
    Mamba-2's perplexity at half the state, and a decoding step then reads half the SSM state.
    """

    d_state: int = 128
    """N, the state's size per head channel; B and C have N entries per group and rank."""
    expand: int = 2
    """d_inner = expand * d_model."""
    headdim: int = 64
    """P, the channels per head; nheads = d_inner / headdim."""
    ngroups: int = 1
    """B/C groups, each shared by nheads / ngroups heads (before the per-head biases)."""
    rope_fraction: float = 0.5
    """The share of B's and C's entries that the rotation turns: 0.5 or 1.0."""
    dt_min: float = 0.001
    """The initial dt is log-uniform in [dt_min, dt_max] (it shapes dt_bias only)."""
    dt_max: float = 0.1
    """See dt_min."""
    dt_init_floor: float = 1e-4
    """The initial dt is at least this."""
    a_floor: float = 1e-4
    """A_t <= -a_floor: every position decays the state a little (mamba_ssm's `A_floor`)."""
    is_outproj_norm: bool = False
    """A per-head RMSNorm (parameter `norm.weight`) on the output before the z gate."""
    is_mimo: bool = False
    """Read and write each head's state through `mimo_rank` ranks (parameters `mimo_x/z/o`)."""
    mimo_rank: int = 4
    """R, used only with is_mimo; a SISO mixer has rank 1, as in mamba_ssm."""
    chunk_size: int = 64
    """Positions per chunk of the parallel scan; mamba_ssm recommends 64 for SISO and 64 / R for
    MIMO, whose intra-chunk products are (chunk_size R) square."""


@dataclass
class Mamba3State(BatchState):
    """What mamba_ssm's inference cache holds, under shorter names."""

    recurrent_fields = ("ssm",)

    angle: Tensor  # (B, H, S) fp32: the rotary phase at the latest position, kept in [0, 2 pi)
    ssm: Tensor  # (B, H, P, N) fp32: the state, [b, h, p, n] pairing x channel p with state entry n
    k: Tensor  # (B, R, H, N): the latest real position's rotated k (B_norm(B) + B_bias)
    v: Tensor  # (B, H, P): the latest real position's x, before any MIMO up-projection

    def check_rows(self, rows: int) -> None:
        check_rows(rows, self.ssm, self.k)


class GatedHeadNorm(nn.Module):
    """mamba_ssm's `RMSNormGated` with norm_before_gate=True and one group per head:
    rmsnorm(y) * weight * silu(z)."""

    def __init__(self, nheads: int, headdim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(nheads * headdim))
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        """y, z (..., H, P) -> (..., H, P)."""
        return gated_head_norm(y, z, self.weight, self.eps)


def rope_angles(d_state: int, rope_fraction: float) -> int:
    """S, the number of rotated pairs (and of angles in_proj produces): mamba_ssm's rounding."""
    rotated = int(d_state * rope_fraction)
    return (rotated - rotated % 2) // 2


class Mamba3(Mixer[Mamba3State]):
    """mamba_ssm's `Mamba3(d_model, **cfg)`: the same parameters, outputs and decoding state."""

    def __init__(self, d_model: int, cfg: Mamba3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_inner = cfg.expand * d_model
        if self.d_inner % cfg.headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not divisible by headdim {cfg.headdim}")
        self.nheads = self.d_inner // cfg.headdim
        if self.nheads % cfg.ngroups:
            raise ValueError(f"{self.nheads} heads do not split into {cfg.ngroups} groups")
        if cfg.rope_fraction not in (0.5, 1.0) or cfg.d_state % 2:
            raise ValueError(f"Mamba-3 takes rope_fraction 0.5 or 1.0 and an even d_state, not {cfg}")
        self.rank = cfg.mimo_rank if cfg.is_mimo else 1
        self.num_rope_angles = rope_angles(cfg.d_state, cfg.rope_fraction)
        if self.num_rope_angles == 0:
            raise ValueError(f"d_state {cfg.d_state} at rope_fraction {cfg.rope_fraction} rotates nothing")
        heads_rn = (self.nheads, self.rank, cfg.d_state)
        self.split = [self.d_inner, self.d_inner, *[cfg.d_state * cfg.ngroups * self.rank] * 2]
        self.split += [self.nheads] * 3 + [self.num_rope_angles]  # z, x, B, C, dt, A, trap, angles
        self.in_proj = nn.Linear(d_model, sum(self.split), bias=False)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.nheads, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.B_bias = nn.Parameter(torch.ones(heads_rn))
        self.C_bias = nn.Parameter(torch.ones(heads_rn))
        self.B_norm = nn.RMSNorm(cfg.d_state, eps=1e-5)
        self.C_norm = nn.RMSNorm(cfg.d_state, eps=1e-5)
        if cfg.is_mimo:  # mamba_ssm's initial values: x and output averaged over the ranks, z as it is
            heads_rp = (self.nheads, self.rank, cfg.headdim)
            self.mimo_x = nn.Parameter(torch.full(heads_rp, 1 / self.rank))
            self.mimo_z = nn.Parameter(torch.ones(heads_rp))
            self.mimo_o = nn.Parameter(torch.full(heads_rp, 1 / self.rank))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedHeadNorm(self.nheads, cfg.headdim) if cfg.is_outproj_norm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.prefill(x, ctx)[0]

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, Mamba3State]:
        """x (B, T, D) -> (B, T, D) and the state after the last position."""
        batch, length, _ = x.shape
        if length == 0:
            return x.new_zeros(x.shape), self.empty_state(batch, x)
        keep = ctx.mask  # (B, T) bool or None
        w = self.weights()
        p = project(linear(x, self.in_proj), w, self.cfg.headdim, self.num_rope_angles, keep)
        # The phase accumulates over the whole sequence: summed in float64, so a long sequence
        # does not lose the low bits of each position's turn, and reduced mod 2 pi like step's.
        theta = torch.remainder(p.turn.double().cumsum(1), TWO_PI).to(p.turn.dtype)  # (B, T, H, S)
        q = rotate(p.q, theta[:, :, None], pairwise=not self.cfg.is_mimo)  # (B, T, R, H, N)
        k = rotate(p.k, theta[:, :, None], pairwise=not self.cfg.is_mimo)  # (B, T, R, H, N)
        v = up(p.x, w)  # (B, T, R, H, P)
        weight, gamma = trapezoid_weights(p.dt, p.trap, keep)  # (B, T, H) each
        y, ssm = ssd3_chunked(v, q, k, p.log_decay, weight, gamma, self.cfg.chunk_size)  # (B, T, R, H, P)
        y = y + v * self.D[:, None]
        out = linear(gate(y, p.z, w), self.out_proj)  # (B, T, D)
        last = _last_real(length, keep, x.device)  # (B,)
        rows = torch.arange(batch, device=x.device)
        state = Mamba3State(
            angle=theta[:, -1].float().contiguous(),
            ssm=ssm.float().contiguous(),
            k=_or_zero(k[rows, last.clamp(min=0)], last),
            v=_or_zero(p.x[rows, last.clamp(min=0)], last),
        )
        return out, state

    def step(self, x: Tensor, state: Mamba3State) -> tuple[Tensor, Mamba3State]:
        """x (B, D) -> (B, D); updates `state` in place."""
        zxbc = linear(x, self.in_proj)
        # The fused CPU kernel (ops/cpu_kernels.cpp) wherever it runs, as Mamba-2's step; the
        # PyTorch twin elsewhere, and wherever autograd records the step (the kernel's output has no
        # gradient). The kernel reads an fp32 phase, k and v, as empty_state makes them.
        fused = (
            zxbc.dtype == state.k.dtype == torch.float32
            and zxbc.is_cpu
            and not zxbc.requires_grad
            and cpu_kernels.available()
        )
        inner = mamba3_step_fused if fused else mamba3_step_ref
        y = inner(zxbc, state.angle, state.ssm, state.k, state.v, self.weights())
        return linear(y, self.out_proj), state

    def empty_state(self, batch: int, like: Tensor) -> Mamba3State:
        """The state before any position (mamba_ssm's `allocate_inference_cache`), on like's device;
        k and v in like's dtype, the phase and the SSM state in fp32."""
        cfg, h = self.cfg, self.nheads
        return Mamba3State(
            angle=torch.zeros(batch, h, self.num_rope_angles, device=like.device),
            ssm=torch.zeros(batch, h, cfg.headdim, cfg.d_state, device=like.device),
            k=like.new_zeros(batch, self.rank, h, cfg.d_state),
            v=like.new_zeros(batch, h, cfg.headdim),
        )

    def weights(self) -> Mamba3Weights:
        """The parameters between in_proj and out_proj, as ops/mamba3_step.py takes them."""
        mimo = (self.mimo_x, self.mimo_z, self.mimo_o) if self.cfg.is_mimo else (None, None, None)
        norm = self.norm
        return Mamba3Weights(
            self.cfg.ngroups,
            self.dt_bias,
            self.cfg.a_floor,
            self.B_norm.weight,
            rms_eps(self.B_norm),
            self.C_norm.weight,
            rms_eps(self.C_norm),
            self.B_bias,
            self.C_bias,
            self.D,
            *mimo,
            None if norm is None else norm.weight,
            0.0 if norm is None else norm.eps,
        )

    def _project(self, zxbc: Tensor, keep: Tensor | None) -> Projected:
        """in_proj's output (..., d_in_proj) split and activated (ops/mamba3_step.py's `project`)."""
        return project(zxbc, self.weights(), self.cfg.headdim, self.num_rope_angles, keep)


def _last_real(length: int, keep: Tensor | None, device: torch.device) -> Tensor:
    """(B,) the index of each row's last real position, -1 where there is none; keep (B, T)."""
    if keep is None:
        return torch.full((1,), length - 1, device=device)
    return torch.where(keep, torch.arange(length, device=device), -1).amax(dim=1)


def _or_zero(t: Tensor, last: Tensor) -> Tensor:
    """Rows of t (B, ...) zeroed where last is -1: a row with no real position keeps the empty state."""
    return (t * (last >= 0).view(-1, *[1] * (t.dim() - 1)).to(t.dtype)).contiguous()


def mamba3_flops(d_model: int, cfg: Mamba3Config, length: int) -> float:
    """One Mamba-3 mixer over `length` positions (training/flops.py says what is counted).

    The scan's four products run per head, at the length padded to a multiple of chunk_size, with
    every position standing for its R ranks; the rotation, norms, gates and rank sums are
    elementwise and not counted."""
    d_inner = cfg.expand * d_model
    nheads = d_inner // cfg.headdim
    r = cfg.mimo_rank if cfg.is_mimo else 1
    n = cfg.d_state
    in_proj = 2 * d_inner + 2 * n * cfg.ngroups * r + 3 * nheads + rope_angles(n, cfg.rope_fraction)
    rows, q = padded_length(length, cfg.chunk_size) * r, cfg.chunk_size * r
    scan = (
        matmul_flops(rows, n, q) * nheads  # q k^T inside each chunk: (q r, n) x (n, q r) per head
        + matmul_flops(rows, q, d_inner)  # (q k^T * mix) x v inside each chunk: (q r, q r) x (q r, p) per head
        + matmul_flops(rows, d_inner, n)  # chunk states: (p, q r) x (q r, n) per head and chunk
        + matmul_flops(rows, n, d_inner)  # entering state read out by q: (q r, n) x (n, p) per head and chunk
    )
    return matmul_flops(length, d_model, in_proj) + scan + matmul_flops(length, d_inner, d_model)


def mamba3_state_bytes(d_model: int, cfg: Mamba3Config, state_dtype: torch.dtype) -> int:
    """One row's `Mamba3State` in one layer: the fp32 phase, the SSM state, and k and v in fp32."""
    d_inner = cfg.expand * d_model
    nheads = d_inner // cfg.headdim
    r = cfg.mimo_rank if cfg.is_mimo else 1
    angle = nheads * rope_angles(cfg.d_state, cfg.rope_fraction) * 4
    kv = (r * nheads * cfg.d_state + d_inner) * 4
    return angle + d_inner * cfg.d_state * state_dtype.itemsize + kv


# -- the fused CPU step of a whole block ------------------------------------------------------------


class Mamba3BlockKernel(NamedTuple):
    """What `mamba3_block_step` (ops/cpu_kernels.cpp) reads of one Mamba-3 or SiMBA-3 block: norm ->
    Mamba-3 -> residual, then any cross-attention and MLP, in one C++ call per position; Mamba-2's
    `Mamba2BlockKernel` for this mixer, SISO or MIMO.

    It holds the Parameters themselves, so a later cast of their data (`.to`, `cast_linear_weights`)
    is seen; replacing a submodule afterwards is not."""

    cross: bool  # whether the block attends to the text
    linear_weights: tuple[Tensor, ...]  # each in mamba2._KERNEL_WEIGHTS
    fp32_weights: tuple[Tensor, ...]  # each must be fp32: the norms' and the mixer's vectors
    weights: tuple  # mamba3_block_step's arguments after the state's
    check_rows: Callable[[Tensor, BlockState], None]  # the block's own row check, shared with its modules' step

    @classmethod
    def for_block(cls, block: Block) -> Mamba3BlockKernel | None:
        """The kernel's view of `block`, or None if its layout is not one the kernel takes (a Mamba-3
        mixer and RMSNorms with weights)."""
        mixer = block.mixer
        norms = kernel_norms(block)
        if not isinstance(mixer, Mamba3) or not norms:
            return None
        rest, rest_linears = rest_of_block(block)
        mixer_weights = mixer.weights()
        weights = (
            block.mixer_norm.weight,
            rms_eps(block.mixer_norm),
            mixer.in_proj.weight,
            mixer.in_proj.bias,
            *mixer_weights,
            mixer.out_proj.weight,
            mixer.out_proj.bias,
            *rest,
        )
        linears = [mixer.in_proj, mixer.out_proj, *rest_linears]
        vectors = [w for w in mixer_weights if isinstance(w, Tensor)]
        return cls(
            block.cross is not None,
            tuple(layer.weight for layer in linears),
            tuple([n.weight for n in norms] + vectors),
            weights,
            block.check_rows,
        )

    def __call__(self, x: Tensor, block_state: BlockState, training: bool) -> Tensor | None:
        """The block's output for x (B, D), the mixer's state updated in place; None where the
        kernel does not apply, for the block's modules to step instead."""
        return self.step(x, block_state) if self.applies(x, block_state, training) else None

    def applies(self, x: Tensor, block_state: BlockState, training: bool) -> bool:
        """As Mamba-2's block kernel: fp32 rows on a CPU with the C++ kernels built, no autograd,
        weights in dtypes it reads; and the fp32 phase, k and v that empty_state makes."""
        state = block_state.mixer
        fp32 = state.k.dtype == state.v.dtype == state.angle.dtype == torch.float32
        return fp32 and block_kernel_applies(self, x, block_state, training)

    def step(self, x: Tensor, block_state: BlockState) -> Tensor:
        """The block's step in one C++ call (ops/cpu_kernels.cpp); the mixer's state is updated in place."""
        state, memory = block_state.mixer, block_state.cross
        self.check_rows(x, block_state)  # first: a batch mismatch is the modules' ValueError, not the kernel's
        text = (None, None, None) if memory is None else (memory.k, memory.v, memory.mask)
        return cpu_kernels.extension().mamba3_block_step(
            x.contiguous(), state.angle, state.ssm, state.k, state.v, *text, *self.weights
        )
