"""The Mamba-3 decoding step between in_proj and out_proj: a PyTorch reference and a fused CPU kernel.

Both take the in_proj output of one position and the layer's state (the phase, the SSM state, and
the previous position's k and v), update the state in place and return the gated output that
out_proj reads. The fused kernel lives in cpu_kernels.cpp. The pieces of the reference (`project`,
`rotate`, `up`, `gate`) are also the parallel path's (backbones/mamba3.py), so the two paths cannot
drift apart.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmttm.ops import cpu_kernels

TWO_PI = 2 * math.pi


class Mamba3Weights(NamedTuple):
    """A Mamba-3 layer's parameters between in_proj and out_proj (the Parameters themselves), in the
    order the kernels take them after the state."""

    ngroups: int
    dt_bias: Tensor  # (H,)
    a_floor: float
    B_norm: Tensor  # (N,) B's RMSNorm weight
    B_eps: float
    C_norm: Tensor  # (N,) C's RMSNorm weight
    C_eps: float
    B_bias: Tensor  # (H, R, N)
    C_bias: Tensor  # (H, R, N)
    D: Tensor  # (H,)
    mimo_x: Tensor | None  # (H, R, P); the three are None for a SISO layer
    mimo_z: Tensor | None  # (H, R, P)
    mimo_o: Tensor | None  # (H, R, P)
    norm_weight: Tensor | None  # (H P,): the per-head RMSNorm before the gate, or None
    norm_eps: float

    @property
    def mimo(self) -> bool:
        return self.mimo_x is not None


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


def project(zxbc: Tensor, w: Mamba3Weights, headdim: int, angles: int, keep: Tensor | None = None) -> Projected:
    """in_proj's output (..., d_in_proj) split and activated; keep (B, T) zeroes dt where False,
    so that a masked position neither decays nor turns the state nor feeds it."""
    heads, rank, d_state = w.B_bias.shape
    bc = rank * w.ngroups * d_state
    split = [heads * headdim] * 2 + [bc] * 2 + [heads] * 3 + [angles]
    z, x, B, C, dd_dt, dd_A, trap, turn = zxbc.split(split, dim=-1)
    dt = F.softplus(dd_dt + w.dt_bias)  # (..., H)
    if keep is not None:
        dt = dt * keep[..., None].to(dt.dtype)
    A = -heavy_tail(dd_A.float()).clamp(min=w.a_floor)  # (..., H)
    return Projected(
        z=z.unflatten(-1, (heads, headdim)),
        x=x.unflatten(-1, (heads, headdim)),
        q=_per_head(C, w.C_norm, w.C_eps, w.C_bias, w.ngroups),
        k=_per_head(B, w.B_norm, w.B_eps, w.B_bias, w.ngroups),
        dt=dt,
        log_decay=A * dt,
        trap=torch.sigmoid(trap),
        turn=math.pi * torch.tanh(turn.float())[..., None, :] * dt[..., None],  # shared by heads, scaled per head
    )


def _per_head(bc: Tensor, weight: Tensor, eps: float, bias: Tensor, ngroups: int) -> Tensor:
    """B or C (..., R G N), laid out rank outermost, -> (..., R, H, N), normed, with the heads' biases."""
    heads, rank, d_state = bias.shape
    groups = F.rms_norm(bc.unflatten(-1, (rank, ngroups, d_state)), (d_state,), weight, eps)  # (..., R, G, N)
    return groups.repeat_interleave(heads // ngroups, dim=-2) + bias.transpose(0, 1)


def up(x: Tensor, w: Mamba3Weights) -> Tensor:
    """x (..., H, P) -> its R ranks (..., R, H, P): x^r = x * mimo_x[:, r]; SISO adds a rank dim."""
    return x.unsqueeze(-3) * w.mimo_x.transpose(0, 1) if w.mimo_x is not None else x.unsqueeze(-3)


def gated_head_norm(y: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """mamba_ssm's `RMSNormGated` with norm_before_gate=True and one group per head:
    rmsnorm(y) * weight * silu(z), y and z (..., H, P), weight (H P,)."""
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    return y * weight.view(y.shape[-2:]) * F.silu(z)


def gate(y: Tensor, z: Tensor, w: Mamba3Weights) -> Tensor:
    """y (..., R, H, P) and z (..., H, P) -> (..., H P): gated (and normed) per rank, then the
    ranks summed with mimo_o."""
    z = z.unsqueeze(-3) * w.mimo_z.transpose(0, 1) if w.mimo_z is not None else z.unsqueeze(-3)  # (..., R, H, P)
    y = gated_head_norm(y, z, w.norm_weight, w.norm_eps) if w.norm_weight is not None else y * F.silu(z)
    y = (y * w.mimo_o.transpose(0, 1)).sum(-3) if w.mimo_o is not None else y.squeeze(-3)  # (..., H, P)
    return y.flatten(-2)


def check_rows(rows: int, ssm: Tensor, k: Tensor) -> None:
    """Raise ValueError unless a step's `rows` inputs match the state's rows, one each (both paths
    check first, so that a mismatch is the same error on either; shape comparisons only)."""
    if not rows == ssm.shape[0] == k.shape[0]:
        raise ValueError(
            f"decoding step: {rows} input rows on a state of {ssm.shape[0]} rows; a step takes one input row per "
            "state row"
        )


def mamba3_step_ref(zxbc: Tensor, angle: Tensor, ssm: Tensor, k: Tensor, v: Tensor, weights: Mamba3Weights) -> Tensor:
    """zxbc (B, d_in_proj) -> (B, H P); the state is updated in place: angle (B, H, S) fp32, ssm
    (B, H, P, N) fp32 or bf16, k (B, R, H, N) and v (B, H, P)."""
    check_rows(zxbc.shape[0], ssm, k)
    w = weights
    p = project(zxbc, w, ssm.shape[2], angle.shape[-1])
    theta = torch.remainder(angle + p.turn, TWO_PI)  # (B, H, S)
    q_t = rotate(p.q, theta[:, None], pairwise=not w.mimo)  # (B, R, H, N)
    k_t = rotate(p.k, theta[:, None], pairwise=not w.mimo)  # (B, R, H, N)
    alpha = torch.exp(p.log_decay)  # (B, H)
    beta = (1 - p.trap) * p.dt * alpha  # (B, H): the previous input's second share
    gamma = p.trap * p.dt  # (B, H)
    v_t = up(p.x, w)  # (B, R, H, P)
    k_prev, v_prev = k, v
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
        k_prev, v_prev = k.clone(), v.clone()  # autograd keeps what it reads: the writes below would change it
    # Both inputs in one product of inner size 2R: [beta v_prev, gamma v] (P, 2R) x [k_prev; k] (2R, N)
    vs = torch.cat([up(v_prev, w) * beta[:, None, :, None], v_t * gamma[:, None, :, None]], dim=1)
    ks = torch.cat([k_prev, k_t], dim=1)  # (B, 2R, H, N)
    inputs = vs.permute(0, 2, 3, 1) @ ks.transpose(1, 2)  # (B, H, P, N)
    if ssm.dtype == inputs.dtype:  # in place: no fresh state per layer and step
        new = ssm.mul_(alpha[..., None, None]).add_(inputs)
    else:  # a state stored narrower is updated in the inputs' precision and rounded once
        new = torch.addcmul(inputs, ssm.to(inputs.dtype), alpha[..., None, None])
        ssm.copy_(new)
    y = (new @ q_t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, H, P, R) -> (B, R, H, P)
    y = y + v_t * w.D[:, None]
    angle.copy_(theta)
    k.copy_(k_t)
    v.copy_(p.x)
    return gate(y, p.z, w)


def mamba3_step_fused(zxbc: Tensor, angle: Tensor, ssm: Tensor, k: Tensor, v: Tensor, weights: Mamba3Weights) -> Tensor:
    """Same contract as `mamba3_step_ref`, in one C++ call with one pass over the SSM state, SISO or
    MIMO. The kernel checks every size it indexes with; this checks the batch first, as the
    reference does, so that both paths raise the same ValueError for it."""
    check_rows(zxbc.shape[0], ssm, k)
    return cpu_kernels.extension().mamba3_step(zxbc.contiguous(), angle, ssm, k, v, *weights)
