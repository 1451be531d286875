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

    # 2. The state each chunk adds, as of its last position: (b, c, g, r, p, n)
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, c, g, r, q)
    chunk_states = (x_c * decay_to_end[..., None]).transpose(-1, -2) @ B_c[:, :, :, None]

    # 3. Carry states across chunks: entering[z] = sum_{c<z} exp(decay c+1..z-1) chunk_states[c]
    if initial_state is None:
        initial_state = x.new_zeros(b, h, p, n)
    states = torch.cat([initial_state.view(b, 1, g, r, p, n), chunk_states], dim=1)  # (b, c+1, ...)
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1].permute(0, 2, 3, 1), (1, 0))))  # (b, g, r, c+1, c+1)
    states = (chunk_decay @ states.permute(0, 2, 3, 1, 4, 5).flatten(-2)).view(b, g, r, c + 1, p, n)
    entering, final_state = states[:, :, :, :-1], states[:, :, :, -1]

    # 4. What the entering state contributes to each position of its chunk
    entering = entering.permute(0, 3, 1, 2, 4, 5)  # (b, c, g, r, p, n)
    y = y + (C_c[:, :, :, None] @ entering.transpose(-1, -2)) * torch.exp(a_cum)[..., None]

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * q, h, p)[:, :length]
    return y, final_state.reshape(b, h, p, n)


def ssd_step_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """One recurrent step, updating `state` in place (the decoding hot path).

    state (b, h, p, n); x (b, h, p); dt (b, h) positive; A (h,); B, C (b, g, n).
    Returns y (b, h, p) without the D skip.
    """
    h = state.shape[1]
    g = B.shape[1]
    dA = torch.exp(dt * A)  # (b, h)
    Bh = B.repeat_interleave(h // g, dim=1)  # (b, h, n)
    Ch = C.repeat_interleave(h // g, dim=1)
    # In place: a fresh 4 MB state per layer and step costs page faults, not just bandwidth.
    state.mul_(dA[:, :, None, None]).add_((dt[:, :, None] * x)[..., None] * Bh[:, :, None, :])
    return (state @ Ch[..., None]).squeeze(-1)
