"""Stage 2 of two-stage generation: from stage 1's coarse tokens and the text, the codec's
continuous latent, by a rectified-flow DiT sampled through diffusers' Euler flow scheduler.

- config.py: `DenoiserConfig`, `Stage2Config`. model.py: `Stage2Model`, the denoiser with the
  latents' per-channel statistics.
- denoiser.py: the model and its FLOPs. flow.py: the training objective.
- sampler.py: one window, with CFG and inpainting. windows.py: long sequences, window by window.
"""

from __future__ import annotations

from ssmttm.diffusion.config import DenoiserConfig, Stage2Config
from ssmttm.diffusion.denoiser import Denoiser, denoiser_flops
from ssmttm.diffusion.flow import FlowLoss, drop_captions, flow_loss, sample_timesteps
from ssmttm.diffusion.model import Stage2Model
from ssmttm.diffusion.sampler import flow_sigmas, guided_velocity, make_scheduler, sample
from ssmttm.diffusion.windows import WindowStream, render, render_windows, window_generator, window_spans

__all__ = [
    "Denoiser",
    "DenoiserConfig",
    "FlowLoss",
    "Stage2Config",
    "Stage2Model",
    "WindowStream",
    "denoiser_flops",
    "drop_captions",
    "flow_loss",
    "flow_sigmas",
    "guided_velocity",
    "make_scheduler",
    "render",
    "render_windows",
    "sample",
    "sample_timesteps",
    "window_generator",
    "window_spans",
]
