"""The latent normalisation: per-channel statistics from Stage2Config, identity when empty."""

from __future__ import annotations

import torch
from torch import Tensor

from ssmttm.diffusion.config import Stage2Config, channels


def _stats(cfg: Stage2Config, like: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std (1, D, 1) in the dtype and device of `like`."""
    dim = cfg.denoiser.latent_dim
    mean, std = channels(cfg.latent_mean) or [0.0] * dim, channels(cfg.latent_std) or [1.0] * dim
    as_tensor = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device)[None, :, None]  # noqa: E731
    return as_tensor(mean), as_tensor(std)


def normalise(x: Tensor, cfg: Stage2Config) -> Tensor:
    """Codec latents x (B, D, T) -> what the denoiser models."""
    mean, std = _stats(cfg, x)
    return (x - mean) / std


def denormalise(x: Tensor, cfg: Stage2Config) -> Tensor:
    """The denoiser's space x (B, D, T) -> codec latents."""
    mean, std = _stats(cfg, x)
    return x * std + mean
