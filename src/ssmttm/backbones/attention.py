"""Attention: causal self-attention with a KV cache, and cross-attention to the text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.base import BatchState, Context, Mixer, matmul_flops
from ssmttm.ops.linear import linear


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (rotate-half form). x (B, H, T, hd), positions (T,)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * freqs  # (T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class KVCache(BatchState):
    """Keys and values of every position so far, in buffers that double when full."""

    k: Tensor  # (B, H, capacity, hd)
    v: Tensor  # (B, H, capacity, hd)
    mask: Tensor  # (B, capacity) bool: True for real positions
    length: int

    def check_rows(self, rows: int) -> None:
        if rows != self.k.shape[0]:
            raise ValueError(
                f"decoding step: {rows} input rows on a state of {self.k.shape[0]} rows (the key cache); a step "
                "takes one input row per state row"
            )

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        """Add one position, k and v (B, H, hd); returns the cache that holds it."""
        cache = self if self.length < self.k.shape[2] else self._grown()
        cache.k[:, :, cache.length] = k
        cache.v[:, :, cache.length] = v
        cache.mask[:, cache.length] = True
        return dataclasses.replace(cache, length=cache.length + 1)

    def _grown(self) -> KVCache:
        extra = max(self.k.shape[2], 16)
        pad = (0, 0, 0, extra)
        return KVCache(F.pad(self.k, pad), F.pad(self.v, pad), F.pad(self.mask, (0, extra)), self.length)


class SelfAttention(Mixer[KVCache]):
    def __init__(self, d_model: int, num_heads: int, rope: bool) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.rope = rope
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> q, k, v (B, H, T, hd), rotated when rope is on."""
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in linear(x, self.qkv).chunk(3, -1))
        if self.rope:
            q, k = rotary(q, positions), rotary(k, positions)
        return q, k, v

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self._attend(x, ctx)[0]

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, KVCache]:
        y, k, v = self._attend(x, ctx)
        batch, length, _ = x.shape
        mask = ctx.mask if ctx.mask is not None else torch.ones(batch, length, dtype=torch.bool, device=x.device)
        return y, KVCache(k.contiguous(), v.contiguous(), mask.clone(), length)

    def _attend(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """Causal attention over x (B, T, D); returns the output and the keys and values."""
        length = x.shape[1]
        q, k, v = self._heads(x, torch.arange(length, device=x.device))
        if ctx.mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Masked keys are invisible; a masked query still sees itself, so no row is empty.
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            allowed = (causal & ctx.mask[:, None, None, :]) | torch.eye(length, dtype=torch.bool, device=x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return linear(out.transpose(1, 2).flatten(-2), self.out_proj), k, v

    def step(self, x: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """x (B, D) -> (B, D), attending to every cached position."""
        q, k, v = self._heads(x[:, None], torch.tensor([state.length], device=x.device))
        state = state.append(k[:, :, 0], v[:, :, 0])
        n = state.length
        out = F.scaled_dot_product_attention(
            q, state.k[:, :, :n], state.v[:, :, :n], attn_mask=state.mask[:, None, None, :n]
        )
        return linear(out.flatten(1), self.out_proj), state


@dataclass
class CrossState(BatchState):
    """The text's keys and values, computed once at prefill."""

    k: Tensor  # (B, H, L, hd)
    v: Tensor  # (B, H, L, hd)
    mask: Tensor | None  # (B, L) bool, or None when every text position is real


class CrossAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def memory(self, ctx: Context) -> CrossState:
        if ctx.memory is None:
            raise ValueError("cross-attention needs the text memory in the context")
        k, v = (
            t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in linear(ctx.memory, self.kv_proj).chunk(2, -1)
        )
        return CrossState(k, v, ctx.memory_mask)

    def forward(self, x: Tensor, memory: CrossState) -> Tensor:
        """x (B, T, D) or (B, D) for one step."""
        single = x.dim() == 2
        q = linear(x, self.q_proj)  # a step's (B, D) rows: the decoding kernels' shape, where bf16 meets fp32
        q = (q[:, None] if single else q).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        mask = None if memory.mask is None else memory.mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, memory.k, memory.v, attn_mask=mask).transpose(1, 2).flatten(-2)
        return linear(out[:, 0] if single else out, self.out_proj)


def self_attention_flops(d_model: int, length: int) -> float:
    """Causal self-attention over `length` positions, scores at the full (T, T) cost SDPA computes."""
    return (
        matmul_flops(length, d_model, 3 * d_model)  # qkv
        + matmul_flops(length, d_model, length)  # scores Q K^T, summed over heads: the full (T, T) matrix
        + matmul_flops(length, length, d_model)  # weighted sum of values, likewise full
        + matmul_flops(length, d_model, d_model)  # out_proj
    )


def cross_attention_flops(d_model: int, length: int, memory: int) -> float:
    """Cross-attention of `length` positions to `memory` text positions."""
    return (
        matmul_flops(length, d_model, d_model)  # q_proj
        + matmul_flops(memory, d_model, 2 * d_model)  # kv_proj over the text, once per layer
        + matmul_flops(length, d_model, memory)  # scores
        + matmul_flops(length, memory, d_model)  # weighted sum of values
        + matmul_flops(length, d_model, d_model)  # out_proj
    )


def kv_cache_bytes(d_model: int, positions: int) -> int:
    """One row's keys, values (fp32) and mask (bool) for `positions` positions in one layer; the
    cache's buffers double when full, so it holds up to twice that."""
    return positions * (2 * d_model * 4 + 1)
