"""The Mamba-1 selective scan: a chunked parallel form for training and prefill, a recurrent step.

The recurrence, per channel d with state h (N,) and a decay per (d, n):

    h_t = exp(dt_t A_d) * h_{t-1} + dt_t u_t B_t          y_t = h_t . C_t

Unlike Mamba-2 the decay differs per state entry, so the SSD matrix trick would need a
(Q, Q, d, n) tensor per chunk. Instead each chunk is scanned with a log-depth doubling scan
(Hillis-Steele), whose combine step only multiplies by decays <= 1, and the chunk boundary states
are carried by the same doubling scan over chunks. No Python loop runs over positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def doubling_scan(log_a: Tensor, b: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """h_t = sum_{s<=t} exp(log_a_{s+1} + ... + log_a_t) b_s along `dim`, in log2(L) steps.

    Returns h and the cumulative sum of `log_a` along `dim`.
    """
    length = b.size(dim)
    h, la = b, log_a
    offset = 1
    while offset < length:
        head_h, tail_h = h.split([offset, length - offset], dim)
        head_a, tail_a = la.split([offset, length - offset], dim)
        prev_h = h.narrow(dim, 0, length - offset)
        prev_a = la.narrow(dim, 0, length - offset)
        h = torch.cat([head_h, tail_h + torch.exp(tail_a) * prev_h], dim)
        la = torch.cat([head_a, tail_a + prev_a], dim)
        offset *= 2
    return h, la


def selective_scan_chunked(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Parallel selective scan.

    u, dt (b, T, d), dt already positive; A (d, n), negative; B, C (b, T, n);
    initial_state (b, d, n) or None.
    Returns y (b, T, d) without the D skip and gate, and the final state (b, d, n).
    """
    b, length, d = u.shape
    n = A.shape[-1]
    q = chunk_size
    pad = (-length) % q
    if pad:  # dt = 0 on the padding: no decay, no input
        u, dt, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, dt, B, C))
    c = (length + pad) // q

    log_a = (dt[..., None] * A).view(b, c, q, d, n)
    inputs = ((dt * u)[..., None] * B[:, :, None, :]).view(b, c, q, d, n)
    local, la_cum = doubling_scan(log_a, inputs, dim=2)  # each chunk scanned from a zero state

    chunk_end = local[:, :, -1]  # (b, c, d, n)
    chunk_decay = la_cum[:, :, -1]
    if initial_state is not None:
        chunk_end = torch.cat(
            [chunk_end[:, :1] + torch.exp(chunk_decay[:, :1]) * initial_state[:, None], chunk_end[:, 1:]],
            dim=1,
        )
    after, _ = doubling_scan(chunk_decay, chunk_end, dim=1)  # state after each chunk
    first = initial_state if initial_state is not None else after.new_zeros(b, d, n)
    entering = torch.cat([first[:, None], after[:, :-1]], dim=1)  # (b, c, d, n)

    h = local + torch.exp(la_cum) * entering[:, :, None]  # (b, c, q, d, n)
    y = (h @ C.view(b, c, q, n, 1)).squeeze(-1)  # (b, c, q, d)
    return y.reshape(b, c * q, d)[:, :length], after[:, -1]


def selective_scan_step(state: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """One recurrent step, updating `state` (b, d, n) in place; u, dt (b, d); B, C (b, n).

    Returns y (b, d) without the D skip and gate. A state stored in a lower precision than u
    (bf16) is updated and read out in u's precision and rounded once when stored.
    """
    decay, inputs = torch.exp(dt[..., None] * A), (dt * u)[..., None] * B[:, None, :]
    if state.dtype != u.dtype:
        wide = state.to(u.dtype) * decay + inputs
        state.copy_(wide)
        return (wide @ C[..., None]).squeeze(-1)
    state.mul_(decay).add_(inputs)
    return (state @ C[..., None]).squeeze(-1)
