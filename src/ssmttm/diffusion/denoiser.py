"""The stage-2 denoiser: a small non-causal DiT over frames (Peebles & Xie, 2023).

Each frame's input is its noisy latent, its coarse token from stage 1 and, where the frame is
already known (the overlap a window shares with the one before it), that frame's clean latent
and a flag: the model is trained to continue what was rendered, not only to have it pasted in
(flow.py draws such contexts). The diffusion time reaches every block through adaLN-Zero
modulation; the text reaches it by cross-attention. The
text memory always ends with a learned null token, so a row whose mask has no True (the null
condition, which caption dropout and CFG's unconditional branch use) attends to that token alone
and never to an empty set. Self-attention is non-causal with rotary positions, so a window of any
length works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.attention import CrossAttention, cross_attention_flops, rotary, self_attention_flops
from ssmttm.backbones.base import Context, matmul_flops
from ssmttm.diffusion.config import DenoiserConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """DiT's sinusoidal embedding of t (B,) in [0, 1], scaled to [0, 1000] as diffusers' timesteps are."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.to(torch.float32)[:, None] * freqs  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, T, D) shifted and scaled per row by (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    """Non-causal self-attention with rotary positions; masked frames are absent as keys."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, T, D), mask (B, T) bool or None -> (B, T, D)."""
        length = x.shape[1]
        heads = self.qkv(x).unflatten(-1, (3 * self.n_heads, -1)).transpose(1, 2)  # (B, 3H, T, hd)
        q, k, v = heads.chunk(3, dim=1)  # 3 x (B, H, T, hd)
        positions = torch.arange(length, device=x.device)
        q, k = rotary(q, positions), rotary(k, positions)
        allowed = None
        if mask is not None:  # a masked query still sees itself, so no row is empty
            allowed = mask[:, None, None, :] | torch.eye(length, dtype=torch.bool, device=x.device)  # (B, 1, T, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, T, hd)
        return self.out_proj(out.transpose(1, 2).flatten(-2))  # (B, T, D)


class Block(nn.Module):
    """adaLN-Zero self-attention and MLP, with pre-norm cross-attention to the text between them."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d, cfg.n_heads)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross = CrossAttention(d, cfg.n_heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_hidden, d)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.modulation = nn.Linear(d, 6 * d)  # shift, scale, gate for attention and MLP; zero-initialised

    def forward(self, x: Tensor, c: Tensor, memory: Context, mask: Tensor | None) -> Tensor:
        """x (B, T, D), c (B, D) the time embedding, memory the projected text -> (B, T, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, -1)  # 6 x (B, D)
        x = x + gate1[:, None] * self.dropout(self.attn(modulate(self.norm1(x), shift1, scale1), mask))
        x = x + self.dropout(self.cross(self.norm_cross(x), self.cross.memory(memory)))
        return x + gate2[:, None] * self.dropout(self.mlp(modulate(self.norm2(x), shift2, scale2)))


class Denoiser(nn.Module):
    """forward(x_t, t, coarse, text, text_mask) -> the velocity v = noise - x0, all in normalised latent space."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.coarse_embedding = nn.Embedding(cfg.cardinality, d)
        self.in_proj = nn.Linear(2 * cfg.latent_dim + 1 + d, d)  # x_t, the context and its flag, the token
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.text_norm = nn.LayerNorm(d)
        self.null_token = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(d, 2 * d)
        self.out_proj = nn.Linear(d, cfg.latent_dim)
        for layer in [*(block.modulation for block in self.blocks), self.final_modulation, self.out_proj]:
            nn.init.zeros_(layer.weight)  # adaLN-Zero: every block starts as the identity, the output as 0
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        coarse: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        frame_mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """x_t (B, D, T) float, t (B,) in [0, 1], coarse (B, T) int64, text (B, L, E), text_mask (B, L)
        bool (True = real; None = all real; a row with no True is the null condition), frame_mask
        (B, T) bool (True = real frame; None = all real), context (B, D, T) the clean latents of the
        frames already known, where context_mask (B, T) is True (None: none known) -> v (B, D, T)."""
        emb = self.coarse_embedding(coarse)  # (B, T, d)
        if context is None or context_mask is None:
            context, context_mask = torch.zeros_like(x_t), torch.zeros(x_t.shape[0], x_t.shape[2], dtype=torch.bool)
        flag = context_mask.to(device=x_t.device, dtype=x_t.dtype)[..., None]  # (B, T, 1)
        known = context.transpose(1, 2).to(x_t.dtype) * flag  # (B, T, D): zero where unknown
        x = self.in_proj(torch.cat([x_t.transpose(1, 2), known, flag, emb.to(x_t.dtype)], dim=-1))  # (B, T, d)
        c = self.time_mlp(timestep_embedding(t, self.cfg.d_model).to(x.dtype))  # (B, d)
        memory = self._memory(text, text_mask)
        for block in self.blocks:
            x = block(x, c, memory, frame_mask)  # (B, T, d)
        shift, scale = self.final_modulation(F.silu(c)).chunk(2, -1)  # 2 x (B, d)
        return self.out_proj(modulate(self.final_norm(x), shift, scale)).transpose(1, 2)  # (B, D, T)

    def _memory(self, text: Tensor, text_mask: Tensor | None) -> Context:
        """The projected text with the null token appended (B, L + 1, d), and its mask (B, L + 1)."""
        batch, length, _ = text.shape
        mask = torch.ones(batch, length, dtype=torch.bool, device=text.device) if text_mask is None else text_mask
        emb = self.text_norm(self.text_proj(text))  # (B, L, d)
        emb = emb * mask[..., None]  # masked positions carry nothing, whatever the padding held
        null = self.null_token.to(emb.dtype).expand(batch, 1, -1)  # (B, 1, d)
        memory_mask = F.pad(mask.bool(), (0, 1), value=True)  # (B, L + 1): the null token is always real
        return Context(memory=torch.cat([emb, null], dim=1), memory_mask=memory_mask)


def denoiser_flops(cfg: DenoiserConfig, frames: int, text_len: int) -> float:
    """Forward FLOPs of one row: `frames` frames, `text_len` text positions (plus the null token)."""
    d, hidden = cfg.d_model, cfg.mlp_hidden
    per_block = (
        self_attention_flops(d, frames)  # non-causal: the full (T, T) scores
        + cross_attention_flops(d, frames, text_len + 1)
        + matmul_flops(frames, d, hidden)
        + matmul_flops(frames, hidden, d)  # MLP
        + matmul_flops(1, d, 6 * d)  # adaLN modulation, once per row
    )
    return (
        matmul_flops(frames, 2 * cfg.latent_dim + 1 + d, d)  # in_proj
        + 2 * matmul_flops(1, d, d)  # time MLP
        + matmul_flops(text_len, cfg.text_dim, d)  # text_proj
        + cfg.n_layers * per_block
        + matmul_flops(1, d, 2 * d)  # final modulation
        + matmul_flops(frames, d, cfg.latent_dim)  # out_proj
    )
