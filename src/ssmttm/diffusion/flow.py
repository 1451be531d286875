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
    frames (None = all). Caption dropout applies in training mode."""
    if text_mask is None:
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    if model.training:
        text_mask = drop_captions(text_mask, cfg.denoiser.caption_dropout)
    t = sample_timesteps(x0.shape[0], cfg, x0.device).to(x0.dtype)  # (B,)
    noise = torch.randn_like(x0)  # (B, D, T)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise  # (B, D, T)
    error = (model(x_t, t, coarse, text, text_mask, frame_mask) - (noise - x0)).square()  # (B, D, T)
    if frame_mask is None:
        return FlowLoss(error.mean(), t)
    weight = frame_mask[:, None, :].to(error.dtype)  # (B, 1, T)
    return FlowLoss((error * weight).sum() / (weight.sum() * error.shape[1]).clamp(min=1), t)
