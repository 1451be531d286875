"""The Mamba-2 scan (SSD): a chunked parallel form for training and prefill, a recurrent step.

The recurrence, per head h (scalar decay) with head state S (P, N):

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T          y_t = S_t C_t

`ssd_chunked` evaluates it without a loop over time (Dao & Gu 2024, "minimal SSD"): dense
attention-like products inside chunks of `chunk_size` positions, a state per chunk, and one small
matrix product that carries the states across chunks. `dt = 0` leaves the state untouched, which
is how masked positions and right padding become no-ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segsum(x: Tensor) -> Tensor:
    """x (..., Q) -> (..., Q, Q) with out[i, j] = sum(x[j+1 : i+1]) for j <= i, -inf above.

    Built from masked cumulative sums, not differences of one cumsum, so it stays exact when the
    cumulative decay is large.
    """
    q = x.size(-1)
    x = x[..., None].expand(*x.shape, q)  # x_rep[..., i, j] = x[i]
    strict = torch.ones(q, q, dtype=torch.bool, device=x.device).tril(-1)
    out = x.masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~strict.logical_or(torch.eye(q, dtype=torch.bool, device=x.device)), -torch.inf)


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Parallel SSD scan.

    x (b, T, h, p); dt (b, T, h), already positive; A (h,), negative; B, C (b, T, g, n) with h
    divisible by g; initial_state (b, h, p, n) or None.
    Returns y (b, T, h, p) without the D skip, and the final state (b, h, p, n).
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    q = chunk_size
    pad = (-length) % q
    if pad:  # dt = 0 on the padding: no decay, no input, so the final state is the one at T-1
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = (length + pad) // q

    x_c = (x * dt[..., None]).view(b, c, q, g, r, p).permute(0, 1, 3, 4, 2, 5)  # (b, c, g, r, q, p)
    B_c = B.reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    C_c = C.reshape(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    a = (dt * A).view(b, c, q, g, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, q) log-decays <= 0
    a_cum = a.cumsum(dim=-1)  # (b, c, g, r, q)

    # 1. Within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1..l}) x_s dt_s
    CB = C_c @ B_c.transpose(-1, -2)  # (b, c, g, q, q)
    y = (CB[:, :, :, None] * torch.exp(segsum(a))) @ x_c  # (b, c, g, r, q, p)

    # 2. The state each chunk adds, as of its last position. Heads and head dims are merged into
    #    one axis (r p) so that B is shared by a plain batched matmul, with no broadcast copy.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, c, g, r, q)
    weighted = (x_c * decay_to_end[..., None]).transpose(-1, -2).reshape(b, c, g, r * p, q)
    chunk_states = weighted @ B_c  # (b, c, g, r p, n)

    # 3. Carry the states across chunks. A loop over chunks (not positions), as mamba_ssm's own
    #    state-passing kernel does: each pass is one fused multiply-add on a (b, h, p, n) state.
    chunk_decay = torch.exp(a_cum[..., -1]).repeat_interleave(p, dim=-1)[..., None]  # (b, c, g, r p, 1)
    entering = torch.empty_like(chunk_states)
    state = x.new_zeros(b, g, r * p, n) if initial_state is None else initial_state.reshape(b, g, r * p, n)
    for z in range(c):
        entering[:, z] = state
        state = torch.addcmul(chunk_states[:, z], chunk_decay[:, z], state)

    # 4. What the entering state contributes to each position of its chunk
    y_off = (entering @ C_c.transpose(-1, -2)).view(b, c, g, r, p, q).transpose(-1, -2)  # (b, c, g, r, q, p)
    y = y + y_off * torch.exp(a_cum)[..., None]

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * q, h, p)[:, :length]
    return y, state.reshape(b, h, p, n)


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """One recurrent step, updating `state` in place (the decoding hot path).

    state (b, h, p, n); x (b, h, p); dt (b, h) positive; A (h,); B, C (b, g, n).
    Returns y (b, h, p) without the D skip.

    A state stored in a lower precision than x (bf16) is updated and read out in x's precision
    and rounded once when stored, as mamba_ssm's selective_state_update does.
    """
    h = state.shape[1]
    g = B.shape[1]
    dA = torch.exp(dt * A)  # (b, h)
    Bh = B.repeat_interleave(h // g, dim=1)  # (b, h, n)
    Ch = C.repeat_interleave(h // g, dim=1)
    inputs = (dt[:, :, None] * x)[..., None]
    if state.dtype != x.dtype:
        wide = torch.addcmul(state.to(x.dtype) * dA[:, :, None, None], inputs, Bh[:, :, None, :])
        state.copy_(wide)
        return (wide @ Ch[..., None]).squeeze(-1)
    # In place: a fresh 4 MB state per layer and step costs page faults, not just bandwidth.
    state.mul_(dA[:, :, None, None]).addcmul_(inputs, Bh[:, :, None, :])
    return (state @ Ch[..., None]).squeeze(-1)
