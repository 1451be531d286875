"""The Mamba-3 mixer, with mamba_ssm `Mamba3`'s parameter names and layout, in pure PyTorch.

Mamba-3 (Lahoti et al. 2026) changes three things in Mamba-2: a trapezoidal rule feeds each input
to the state twice (ops/ssd3.py says how), B and C are turned by a data-dependent rotation whose
phase accumulates over positions (the "angle" state), and with `is_mimo` each head reads and writes
its state through R ranks. There is no convolution; B and C get an RMSNorm and a bias per head.

Tested against fixtures that mamba_ssm's module produced (tests/golden/mamba3*_golden.json), whose
JSON also spells out the equations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.base import BatchState, Context, Mixer, matmul_flops, padded_length
from ssmttm.backbones.mamba2 import inverse_softplus_dt
from ssmttm.ops.linear import linear
from ssmttm.ops.ssd3 import ssd3_chunked, trapezoid_weights

TWO_PI = 2 * math.pi


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
        if not rows == self.ssm.shape[0] == self.k.shape[0]:
            raise ValueError(
                f"decoding step: {rows} input rows on a state of {self.ssm.shape[0]} rows; a step takes "
                "one input row per state row"
            )


class Projected(NamedTuple):
    """One or more positions' in_proj output, split and activated; `...` is (B, T) or (B,)."""

    z: Tensor  # (..., H, P)
    x: Tensor  # (..., H, P)
    q: Tensor  # (..., R, H, N): C_norm(C) + C_bias, not yet rotated
    k: Tensor  # (..., R, H, N): B_norm(B) + B_bias, not yet rotated
    dt: Tensor  # (..., H)
    log_decay: Tensor  # (..., H): A_t dt_t
    trap: Tensor  # (..., H)
    turn: Tensor  # (..., H, S): the phase this position adds, pi tanh(angles) dt


class GatedHeadNorm(nn.Module):
    """mamba_ssm's `RMSNormGated` with norm_before_gate=True and one group per head:
    rmsnorm(y) * weight * silu(z)."""

    def __init__(self, nheads: int, headdim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(nheads * headdim))
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        """y, z (..., H, P) -> (..., H, P)."""
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight.view(y.shape[-2:]) * F.silu(z)


def heavy_tail(x: Tensor) -> Tensor:
    """1 + x for x >= 0, 1 / (1 - x) below: positive, continuous and smooth at 0. Written with
    clamps, not `where`, so that neither branch is ever evaluated where it blows up (a `where`
    would still backpropagate 0 * inf = nan through the unused one)."""
    return x.clamp(min=0) + 1 / (1 - x.clamp(max=0))


def rotate(t: Tensor, theta: Tensor, pairwise: bool) -> Tensor:
    """Turn pairs of t's entries (..., N) by the angles theta (..., S); the others pass through.

    pairwise: pairs (2i, 2i + 1), i < S, as mamba_ssm's SISO kernels. Otherwise "halved" pairs
    (i, i + N/2), as its MIMO (TileLang) kernels; either way the dot products q . k agree.
    """
    s = theta.shape[-1]
    cos, sin = torch.cos(theta), torch.sin(theta)
    if pairwise:
        pairs = t[..., : 2 * s].unflatten(-1, (s, 2))  # (..., S, 2)
        t0, t1 = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([t0 * cos - t1 * sin, t0 * sin + t1 * cos], dim=-1).flatten(-2)  # (..., 2S)
        return torch.cat([turned, t[..., 2 * s :]], dim=-1)
    half = t.shape[-1] // 2
    t0, t1 = t[..., :s], t[..., half : half + s]
    return torch.cat([t0 * cos - t1 * sin, t[..., s:half], t0 * sin + t1 * cos, t[..., half + s :]], dim=-1)


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
        p = self._project(linear(x, self.in_proj), keep)
        # The phase accumulates over the whole sequence: summed in float64, so a long sequence
        # does not lose the low bits of each position's turn, and reduced mod 2 pi like step's.
        theta = torch.remainder(p.turn.double().cumsum(1), TWO_PI).to(p.turn.dtype)  # (B, T, H, S)
        q = rotate(p.q, theta[:, :, None], pairwise=not self.cfg.is_mimo)  # (B, T, R, H, N)
        k = rotate(p.k, theta[:, :, None], pairwise=not self.cfg.is_mimo)  # (B, T, R, H, N)
        v = self._up(p.x)  # (B, T, R, H, P)
        w, gamma = trapezoid_weights(p.dt, p.trap, keep)  # (B, T, H) each
        y, ssm = ssd3_chunked(v, q, k, p.log_decay, w, gamma, self.cfg.chunk_size)  # (B, T, R, H, P)
        y = y + v * self.D[:, None]
        out = linear(self._gate(y, p.z), self.out_proj)  # (B, T, D)
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
        state.check_rows(x.shape[0])
        p = self._project(linear(x, self.in_proj), None)
        theta = torch.remainder(state.angle + p.turn, TWO_PI)  # (B, H, S)
        q = rotate(p.q, theta[:, None], pairwise=not self.cfg.is_mimo)  # (B, R, H, N)
        k = rotate(p.k, theta[:, None], pairwise=not self.cfg.is_mimo)  # (B, R, H, N)
        alpha = torch.exp(p.log_decay)  # (B, H)
        beta = (1 - p.trap) * p.dt * alpha  # (B, H): the previous input's second share
        gamma = p.trap * p.dt  # (B, H)
        v = self._up(p.x)  # (B, R, H, P)
        # Both inputs in one product of inner size 2R: [beta v_prev, gamma v] (P, 2R) x [k_prev; k] (2R, N)
        vs = torch.cat([self._up(state.v) * beta[:, None, :, None], v * gamma[:, None, :, None]], dim=1)
        ks = torch.cat([state.k, k], dim=1)  # (B, 2R, H, N)
        inputs = vs.permute(0, 2, 3, 1) @ ks.transpose(1, 2)  # (B, H, P, N)
        if state.ssm.dtype == inputs.dtype:  # in place: no fresh state per layer and step
            ssm = state.ssm.mul_(alpha[..., None, None]).add_(inputs)
        else:  # a state stored narrower is updated in the inputs' precision and rounded once
            ssm = torch.addcmul(inputs, state.ssm.to(inputs.dtype), alpha[..., None, None])
            state.ssm.copy_(ssm)
        y = (ssm @ q.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, H, P, R) -> (B, R, H, P)
        y = y + v * self.D[:, None]
        state.angle.copy_(theta)
        state.k.copy_(k)
        state.v.copy_(p.x)
        return linear(self._gate(y, p.z), self.out_proj), state

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

    def _project(self, zxbc: Tensor, keep: Tensor | None) -> Projected:
        """in_proj's output (..., d_in_proj) split and activated; keep (B, T) zeroes dt where False,
        so that a masked position neither decays nor turns the state nor feeds it."""
        cfg = self.cfg
        z, x, B, C, dd_dt, dd_A, trap, angles = zxbc.split(self.split, dim=-1)
        dt = F.softplus(dd_dt + self.dt_bias)  # (..., H)
        if keep is not None:
            dt = dt * keep[..., None].to(dt.dtype)
        A = -heavy_tail(dd_A.float()).clamp(min=cfg.a_floor)  # (..., H)
        return Projected(
            z=z.unflatten(-1, (self.nheads, cfg.headdim)),
            x=x.unflatten(-1, (self.nheads, cfg.headdim)),
            q=self._per_head(self.C_norm, C, self.C_bias),
            k=self._per_head(self.B_norm, B, self.B_bias),
            dt=dt,
            log_decay=A * dt,
            trap=torch.sigmoid(trap),
            turn=math.pi * torch.tanh(angles.float())[..., None, :] * dt[..., None],  # shared by heads, scaled per head
        )

    def _per_head(self, norm: nn.RMSNorm, bc: Tensor, bias: Tensor) -> Tensor:
        """B or C (..., R G N), laid out rank outermost, -> (..., R, H, N), normed, with the heads' biases."""
        groups = norm(bc.unflatten(-1, (self.rank, self.cfg.ngroups, self.cfg.d_state)))  # (..., R, G, N)
        return groups.repeat_interleave(self.nheads // self.cfg.ngroups, dim=-2) + bias.transpose(0, 1)

    def _up(self, x: Tensor) -> Tensor:
        """x (..., H, P) -> its R ranks (..., R, H, P): x^r = x * mimo_x[:, r]; SISO adds a rank dim."""
        return x.unsqueeze(-3) * self.mimo_x.transpose(0, 1) if self.cfg.is_mimo else x.unsqueeze(-3)

    def _gate(self, y: Tensor, z: Tensor) -> Tensor:
        """y (..., R, H, P) and z (..., H, P) -> (..., H P): gated (and normed) per rank, then the
        ranks summed with mimo_o."""
        z = z.unsqueeze(-3) * self.mimo_z.transpose(0, 1) if self.cfg.is_mimo else z.unsqueeze(-3)  # (..., R, H, P)
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z)
        y = (y * self.mimo_o.transpose(0, 1)).sum(-3) if self.cfg.is_mimo else y.squeeze(-3)  # (..., H, P)
        return y.flatten(-2)


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
