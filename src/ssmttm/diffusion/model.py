"""Stage 2 as one module: the denoiser, and the per-channel statistics of the latents it models.

The statistics are buffers, not config: they are measured on the training data when a run starts
(`set_statistics`), so they ship in the weights, resume with the checkpoint, and a model can
never be paired with statistics of other data. The denoiser sees normalised latents; everything
outside this package sees the codec's own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssmttm.config import ConfigError
from ssmttm.diffusion.config import Stage2Config
from ssmttm.diffusion.denoiser import Denoiser
from ssmttm.diffusion.flow import FlowLoss, flow_loss


class Stage2Model(nn.Module):
    def __init__(self, cfg: Stage2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.denoiser = Denoiser(cfg.denoiser)
        dim = cfg.denoiser.latent_dim
        self.register_buffer("latent_mean", torch.zeros(dim))  # (D,): identity until measured
        self.register_buffer("latent_std", torch.ones(dim))  # (D,)

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """The training latents' per-channel mean and std (D,); every std must be positive."""
        dim = self.cfg.denoiser.latent_dim
        if mean.shape != (dim,) or std.shape != (dim,):
            raise ConfigError(f"latent statistics must be ({dim},), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ConfigError("latent statistics must be finite, with every std positive")
        with torch.no_grad():
            self.latent_mean.copy_(mean)
            self.latent_std.copy_(std)

    def normalise(self, x: Tensor) -> Tensor:
        """Codec latents x (B, D, T) -> what the denoiser models."""
        return (x - self.latent_mean[:, None].to(x.dtype)) / self.latent_std[:, None].to(x.dtype)

    def denormalise(self, x: Tensor) -> Tensor:
        """The denoiser's space x (B, D, T) -> codec latents."""
        return x * self.latent_std[:, None].to(x.dtype) + self.latent_mean[:, None].to(x.dtype)

    def forward(self, *args, **kwargs) -> Tensor:
        """The denoiser's forward, in normalised space (see `Denoiser.forward`)."""
        return self.denoiser(*args, **kwargs)

    def training_loss(
        self,
        latents: Tensor,
        coarse: Tensor,
        text: Tensor,
        text_mask: Tensor | None,
        frame_mask: Tensor | None = None,
    ) -> FlowLoss:
        """The flow loss of codec latents (B, D, T) (not normalised): what training minimises."""
        return flow_loss(self.denoiser, self.normalise(latents), coarse, text, text_mask, self.cfg, frame_mask)
