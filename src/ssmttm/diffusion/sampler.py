"""Sampling the denoiser with diffusers' FlowMatchEulerDiscreteScheduler, classifier-free guidance
on the text, and inpainting of known leading frames.

Our convention is flow.py's: x = (1 - sigma) x0 + sigma noise, sigma from 1 (noise) down to 0
(data), and the model's time t is that sigma. We hand the scheduler our sigmas, so with shift 1 it
keeps them exactly (its timesteps are sigma * 1000, and it appends the final 0), and we feed the
model the scheduler's own sigmas, not its timesteps divided back. Everything here works in the
normalised latent space; windows.py denormalises what it emits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ssmttm.diffusion.config import check_sampling
from ssmttm.diffusion.denoiser import Denoiser

if TYPE_CHECKING:
    from diffusers import FlowMatchEulerDiscreteScheduler


def flow_sigmas(steps: int) -> Tensor:
    """The steps + 1 noise levels from 1 down to 0, evenly spaced (float32)."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)


def make_scheduler(steps: int, device: torch.device | str = "cpu") -> FlowMatchEulerDiscreteScheduler:
    """An Euler flow scheduler whose sigmas are exactly `flow_sigmas(steps)`."""
    from diffusers import FlowMatchEulerDiscreteScheduler  # here: importing diffusers takes seconds

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=flow_sigmas(steps)[:-1].tolist(), device=device)
    return scheduler


def guided_velocity(
    model: Denoiser,
    x: Tensor,
    sigma: Tensor,
    coarse: Tensor,
    text: Tensor,
    text_mask: Tensor,
    cfg_scale: float,
    context: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """v = v_uncond + s (v_cond - v_uncond), both branches in one batch; at s = 1 only the conditional
    rows run. The null condition is the same text with an all-False mask; both branches see the
    `context` (latents (B, D, T), mask (B, T)): it is audio, not text. x (B, D, T) -> (B, D, T)."""
    t = sigma.to(x.dtype).expand(x.shape[0])  # (B,)
    known, known_mask = (None, None) if context is None else context
    if cfg_scale == 1:
        return model(x, t, coarse, text, text_mask, None, known, known_mask)
    null_mask = torch.zeros_like(text_mask)
    twice = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731
    v = model(  # (2B, D, T)
        twice(x), twice(t), twice(coarse), twice(text), torch.cat([text_mask, null_mask]), None,
        twice(known), twice(known_mask),
    )  # fmt: skip
    cond, uncond = v.chunk(2)  # 2 x (B, D, T)
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def sample(
    model: Denoiser,
    coarse: Tensor,
    text: Tensor,
    text_mask: Tensor | None,
    *,
    steps: int,
    cfg_scale: float,
    generator: torch.Generator,
    known: Tensor | None = None,
) -> Tensor:
    """x0 (B, D, T) in the normalised latent space, for coarse (B, T) and text (B, L, E) with text_mask
    (B, L) (None = all real). The noise is one Gaussian draw from `generator` (on its device, then moved).
    known (B, D, T0), T0 <= T: normalised latents of the first T0 frames. The model is given them as
    context (what it was trained to continue), and before every step they are also replaced by
    `known` noised to the step's sigma with the same noise draw; the result holds them exactly."""
    check_sampling(steps, cfg_scale)
    batch, frames = coarse.shape
    dim, device = model.cfg.latent_dim, coarse.device
    if text_mask is None:
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
    if known is not None and (known.shape[:2] != (batch, dim) or known.shape[2] > frames):
        raise ValueError(f"known {tuple(known.shape)} does not fit a window of {(batch, dim, frames)}")
    noise = torch.randn(batch, dim, frames, generator=generator, device=generator.device).to(device)  # (B, D, T)
    context = None
    if known is not None:  # the model is told what is known, and the known frames are also pasted in
        context_mask = (torch.arange(frames, device=device) < known.shape[-1]).expand(batch, -1)  # (B, T)
        context = (torch.nn.functional.pad(known, (0, frames - known.shape[-1])), context_mask)
    scheduler = make_scheduler(steps, device)
    x = noise
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i]
        if known is not None:
            x = _inpaint(x, known, noise, sigma)
        v = guided_velocity(model, x, sigma, coarse, text, text_mask, cfg_scale, context)  # (B, D, T)
        x = scheduler.step(v, timestep, x, return_dict=False)[0]  # x + (sigma_next - sigma) v
    return x if known is None else _inpaint(x, known, noise, torch.zeros(()))


def _inpaint(x: Tensor, known: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x (B, D, T) with its first T0 frames set to `known` (B, D, T0) at noise level sigma."""
    length = known.shape[-1]
    head = known if float(sigma) == 0 else (1 - sigma) * known + sigma * noise[..., :length]  # (B, D, T0)
    return torch.cat([head.to(x.dtype), x[..., length:]], dim=-1)
