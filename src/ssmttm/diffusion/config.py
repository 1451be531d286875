"""Stage 2's configs: the denoiser's shape, and the objective, normalisation and sampling around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ssmttm.config import ConfigError


@dataclass
class DenoiserConfig:
    """A non-causal DiT over frames: noisy latent plus coarse token in, velocity out."""

    latent_dim: int = 89  # D: the continuous latent's channels (the embedded codec's)
    cardinality: int = 1024  # the coarse tokens' vocabulary: the codec's first codebook
    text_dim: int = 768  # width of the text encoder's embeddings
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    caption_dropout: float = 0.1  # the probability a training row's text becomes the null condition (CFG)
    # No max_frames: positions are rotary in self-attention, so a window of any length works.

    def __post_init__(self) -> None:
        if min(self.latent_dim, self.cardinality, self.text_dim, self.d_model, self.n_layers, self.n_heads) < 1:
            raise ConfigError("latent_dim, cardinality, text_dim, d_model, n_layers and n_heads must be positive")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model {self.d_model} must split into {self.n_heads} heads of even width (rotary)")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio:g} must be positive")
        if not (0 <= self.dropout < 1 and 0 <= self.caption_dropout <= 1):
            raise ConfigError("dropout must be in [0, 1) and caption_dropout in [0, 1]")

    @property
    def mlp_hidden(self) -> int:
        return int(self.d_model * self.mlp_ratio)


@dataclass
class Stage2Config:
    """The denoiser, its objective (rectified flow) and the sampling defaults. The latent statistics
    are the model's buffers (model.py), measured on the training data."""

    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    objective: Literal["flow"] = "flow"  # rectified flow: x_t = (1 - t) x0 + t noise, target noise - x0
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"  # SD3's, mean 0 std 1
    # Training rows that get a known prefix (up to overlap_frames long), as every window after the
    # first has at sampling: the model learns to continue it.
    context_probability: float = 0.5
    steps: int = 25  # a placeholder: the caller chooses the step count by measurement
    cfg_scale: float = 2.0  # classifier-free guidance on the text; 1 means none
    window_frames: int = 430  # 10 s at 43 frames/s
    overlap_frames: int = 86  # 2 s: each window after the first is inpainted from the previous one's last frames

    def __post_init__(self) -> None:
        check_sampling(self.steps, self.cfg_scale)
        if not 0 <= self.context_probability <= 1:
            raise ConfigError(f"context_probability {self.context_probability:g} must be in [0, 1]")
        check_windows(self.window_frames, self.overlap_frames)


def check_sampling(steps: int, cfg_scale: float) -> None:
    """A clear ValueError (ConfigError) for a step count or guidance scale that sampling cannot use."""
    if steps <= 0:
        raise ConfigError(f"steps {steps} must be a positive integer")
    if not cfg_scale >= 0 or cfg_scale == float("inf"):  # `not >=` also catches NaN
        raise ConfigError(f"cfg_scale {cfg_scale:g} must be finite and >= 0 (1 = no guidance)")


def check_windows(window_frames: int, overlap_frames: int) -> None:
    """A clear ValueError (ConfigError) for a window layout that cannot advance."""
    if window_frames <= 0 or overlap_frames < 0:
        raise ConfigError(f"window_frames {window_frames} must be positive and overlap_frames {overlap_frames} >= 0")
    if overlap_frames >= window_frames:
        raise ConfigError(f"overlap_frames {overlap_frames} must be smaller than window_frames {window_frames}")
