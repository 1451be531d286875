"""The Mamba-3 scan: SSD with a trapezoidal input rule and R input/output ranks (MIMO), chunked.

The recurrence, per head with state S (P, N), log-decay a_t = A_t dt_t <= 0 and trap_t in (0, 1):

    S_t = exp(a_t) S_{t-1} + exp(a_t) (1 - trap_t) dt_t sum_r v_{t-1}^r k_{t-1}^rT + trap_t dt_t sum_r v_t^r k_t^rT
    y_t^r = S_t q_t^r

(SISO is R = 1.) The input of position s thus arrives twice: at s with weight gamma_s = trap_s dt_s,
and at the next position with (1 - trap) dt of that position, where both have decayed by the same
exp(a). Seen from any later t, s carries weight

    w_s = gamma_s + (1 - trap_{s+1}) dt_{s+1}      and decay exp(a_{s+1} + ... + a_t),

so the scan is Mamba-2's SSD (ssd.py) with input weight w in place of dt, except on the diagonal
t = s, where only gamma_s has arrived yet. The state at the end of a chunk then includes the
(1 - trap) dt share that its last input only receives at the next position, which is exactly what
the next chunk must see; at the end of the sequence that share is zero, so the final state is S_T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmttm.ops.ssd import segsum


def trapezoid_weights(dt: Tensor, trap: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The input weights of the trapezoidal rule: w (as seen from later positions) and gamma (at
    the position itself), both (b, T, h), from dt, trap (b, T, h) and keep (b, T) bool or None.

    A position with keep False is absent: it takes no input and its (1 - trap) dt share goes to
    nothing, so the previous real input's second share comes from the next real position.
    """
    gamma = trap * dt  # (b, T, h)
    lagged = (1 - trap) * dt  # (b, T, h): what each position gives the previous real input
    if keep is None:
        return gamma + F.pad(lagged[:, 1:], (0, 0, 0, 1)), gamma
    real = keep[..., None].to(dt.dtype)  # (b, T, 1)
    gamma, lagged = gamma * real, lagged * real
    length = keep.shape[1]
    index = torch.where(keep, torch.arange(length, device=keep.device), length)  # (b, T); T marks absent
    first_from = index.flip(1).cummin(1).values.flip(1)  # (b, T): first real position at or after t
    following = F.pad(first_from[:, 1:], (0, 1), value=length)  # (b, T): first real one after t
    lagged = F.pad(lagged, (0, 0, 0, 1))  # (b, T + 1, h): index T, no such position, gives 0
    after = lagged.gather(1, following[..., None].expand(-1, -1, lagged.shape[-1]))  # (b, T, h)
    return (gamma + after) * real, gamma


def ssd3_chunked(
    v: Tensor, q: Tensor, k: Tensor, log_decay: Tensor, weight: Tensor, diag: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """Parallel Mamba-3 scan from a zero state.

    v (b, T, r, h, p); q, k (b, T, r, h, n); log_decay a, weight w and diag gamma (b, T, h), as in
    the module docstring (`trapezoid_weights` gives w and gamma).
    Returns y (b, T, r, h, p) without the D skip, and the final state (b, h, p, n).
    """
    b, length, r, h, p = v.shape
    n = q.shape[-1]
    pad = (-length) % chunk_size
    if pad:  # zero decay and weights on the padding: the state passes through it unchanged
        v, q, k = (F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad)) for t in (v, q, k))
        log_decay, weight, diag = (F.pad(t, (0, 0, 0, pad)) for t in (log_decay, weight, diag))
    c, qr = (length + pad) // chunk_size, chunk_size * r

    def per_chunk(t: Tensor) -> Tensor:  # (b, T, r, h, d) -> (b, h, c, q r, d): ranks inside positions
        return t.reshape(b, c, chunk_size, r, h, -1).permute(0, 4, 1, 2, 3, 5).reshape(b, h, c, qr, -1)

    def per_head(t: Tensor) -> Tensor:  # (b, T, h) -> (b, h, c, q)
        return t.reshape(b, c, chunk_size, h).permute(0, 3, 1, 2)

    def over_ranks(t: Tensor, dim: int) -> Tensor:  # each position's value for each of its r ranks
        return t if r == 1 else t.repeat_interleave(r, dim=dim)

    v_c, q_c, k_c = per_chunk(v), per_chunk(q), per_chunk(k)  # (b, h, c, q r, p | n)
    a, w, gamma = per_head(log_decay), per_head(weight), per_head(diag)  # (b, h, c, q)
    a_cum = a.cumsum(dim=-1)  # (b, h, c, q)

    # 1. Within each chunk: y_t = sum_{s<=t} (q_t . k_s) L[t, s] v_s, with L[t, s] = exp(a_{s+1..t}) w_s
    #    below the diagonal and gamma_t on it. The diagonal is replaced, not corrected by gamma - w:
    #    w_t holds the next position's dt, and w + (gamma - w) would leak its rounding into y_t.
    diagonal = torch.eye(chunk_size, dtype=torch.bool, device=a.device)
    mix = (torch.exp(segsum(a)) * w[..., None, :]).masked_fill(diagonal, 0) + torch.diag_embed(gamma)  # (b, h, c, q, q)
    mix = over_ranks(over_ranks(mix, -1), -2)  # (b, h, c, q r, q r)
    y = ((q_c @ k_c.transpose(-1, -2)) * mix) @ v_c  # (b, h, c, q r, p)

    # 2. The state each chunk adds, as of its last position (its last input's second share included)
    to_end = over_ranks(torch.exp(a_cum[..., -1:] - a_cum) * w, -1)  # (b, h, c, q r)
    chunk_states = (v_c * to_end[..., None]).transpose(-1, -2) @ k_c  # (b, h, c, p, n)

    # 3. Carry the states across chunks: a loop over chunks, one multiply-add on (b, h, p, n) each
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]  # (b, h, c, 1, 1)
    entering = torch.empty_like(chunk_states)
    state = v.new_zeros(b, h, p, n)
    for z in range(c):
        entering[:, :, z] = state
        state = torch.addcmul(chunk_states[:, :, z], chunk_decay[:, :, z], state)

    # 4. What the entering state contributes to each position of its chunk
    y = y + (q_c @ entering.transpose(-1, -2)) * over_ranks(torch.exp(a_cum), -1)[..., None]  # (b, h, c, q r, p)

    y = y.reshape(b, h, c, chunk_size, r, p).permute(0, 2, 3, 4, 1, 5).reshape(b, c * chunk_size, r, h, p)
    return y[:, :length], state
