"""The rectified-flow objective: x_t = (1 - t) x0 + t noise, and the model regresses v = noise - x0.

Time runs from data (t = 0) to noise (t = 1), the convention of SD3 and of diffusers'
FlowMatchEulerDiscreteScheduler, whose sigma is our t. Every random draw (caption dropout, t,
noise) comes from torch's global RNG, which the trainer seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmttm.diffusion.config import Stage2Config
from ssmttm.diffusion.denoiser import Denoiser


@dataclass
class FlowLoss:
    loss: Tensor  # scalar: the mean squared velocity error over real frames and every channel
    t: Tensor  # (B,) the diffusion times drawn


def sample_timesteps(batch: int, cfg: Stage2Config, device: torch.device | str = "cpu") -> Tensor:
    """t (B,) in (0, 1): logit-normal (mean 0, std 1, SD3's) or uniform."""
    if cfg.timestep_sampling == "logit_normal":
        return torch.sigmoid(torch.randn(batch, device=device))
    return torch.rand(batch, device=device)


def drop_captions(text_mask: Tensor, probability: float) -> Tensor:
    """Classifier-free guidance training: each row's text becomes the null condition (all False) with `probability`."""
    keep = torch.rand(text_mask.shape[0], 1, device=text_mask.device) >= probability  # (B, 1)
    return text_mask & keep


def draw_context(x0: Tensor, probability: float, max_frames: int) -> tuple[Tensor, Tensor]:
    """Known prefixes for training: each row, with `probability`, gets its first n frames as context,
    n uniform in 1..max_frames (and short of the whole window). -> context (B, D, T), mask (B, T)."""
    batch, _, frames = x0.shape
    longest = min(max_frames, frames - 1)
    chosen = torch.rand(batch, device=x0.device) < probability  # (B,)
    if longest < 1:
        chosen = torch.zeros_like(chosen)
    length = torch.randint(1, max(longest, 1) + 1, (batch,), device=x0.device) * chosen  # (B,) 0 = none
    mask = torch.arange(frames, device=x0.device)[None] < length[:, None]  # (B, T)
    return x0 * mask[:, None].to(x0.dtype), mask


def flow_loss(
    model: Denoiser,
    x0: Tensor,
    coarse: Tensor,
    text: Tensor,
    text_mask: Tensor | None,
    cfg: Stage2Config,
    frame_mask: Tensor | None = None,
) -> FlowLoss:
    """x0 (B, D, T) normalised latents (Stage2Model.training_loss normalises codec latents); coarse
    (B, T); text (B, L, E) with text_mask (B, L) (None = all real); frame_mask (B, T) True on real
    frames (None = all). In training mode captions are dropped and known prefixes drawn
    (`draw_context`); evaluation scores every frame with no context, so that it is the same sum."""
    if text_mask is None:
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    if model.training:
        text_mask = drop_captions(text_mask, cfg.denoiser.caption_dropout)
    t = sample_timesteps(x0.shape[0], cfg, x0.device).to(x0.dtype)  # (B,)
    noise = torch.randn_like(x0)  # (B, D, T)
    context, context_mask = draw_context(x0, cfg.context_probability if model.training else 0.0, cfg.overlap_frames)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise  # (B, D, T)
    v = model(x_t, t, coarse, text, text_mask, frame_mask, context, context_mask)  # (B, D, T)
    error = (v - (noise - x0)).square()  # (B, D, T)
    # The known frames are given, not generated: only the others count.
    scored = ~context_mask if frame_mask is None else frame_mask & ~context_mask  # (B, T)
    weight = scored[:, None, :].to(error.dtype)  # (B, 1, T)
    return FlowLoss((error * weight).sum() / (weight.sum() * error.shape[1]).clamp(min=1), t)
