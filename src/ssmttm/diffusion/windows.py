"""Rendering a long sequence in overlapping windows, one window in memory at a time.

Window w covers frames [w (W - O), w (W - O) + W), clipped to the sequence. Each window after the
first is sampled with its first O frames inpainted from the previous window's last O frames, and
emits its frames from O on (the first from 0): the emitted pieces concatenate to exactly the
sequence, and `render_windows` yields each piece as soon as its window is done, which streaming
uses. Window w's noise comes from a generator seeded by (seed, w), so streamed and whole renders
are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ssmttm.diffusion.config import check_windows
from ssmttm.diffusion.sampler import sample

if TYPE_CHECKING:
    from ssmttm.diffusion.model import Stage2Model

_SEED_STRIDE = 0x9E3779B97F4A7C15  # the golden-ratio constant: nearby (seed, window) pairs get distant seeds


def window_spans(frames: int, window_frames: int, overlap_frames: int) -> list[tuple[int, int]]:
    """(start, end) of every window over `frames` frames; the last is clipped to the sequence."""
    check_windows(window_frames, overlap_frames)
    hop, spans, start = window_frames - overlap_frames, [], 0
    while True:
        spans.append((start, min(start + window_frames, frames)))
        if start + window_frames >= frames:
            return spans
        start += hop


def window_generator(seed: int, window: int) -> torch.Generator:
    """The CPU generator of window `window` of a render seeded `seed`."""
    return torch.Generator().manual_seed((seed * _SEED_STRIDE + window) % 2**63)


def render_windows(
    model: Stage2Model,
    coarse: Tensor,
    text: Tensor,
    text_mask: Tensor | None,
    *,
    seed: int,
    steps: int | None = None,
    cfg_scale: float | None = None,
) -> Iterator[Tensor]:
    """Yield each window's new frames (B, D, n) as codec latents (denormalised), in order, for coarse
    (B, T) and text (B, L, E) with text_mask (B, L). steps and cfg_scale default to the model config's."""
    cfg = model.cfg
    overlap = cfg.overlap_frames
    tail: Tensor | None = None  # the previous window's last O frames, normalised: all that is kept
    for w, (start, end) in enumerate(window_spans(coarse.shape[1], cfg.window_frames, overlap)):
        x = sample(  # (B, D, end - start)
            model.denoiser, coarse[:, start:end], text, text_mask,
            steps=cfg.steps if steps is None else steps, cfg_scale=cfg.cfg_scale if cfg_scale is None else cfg_scale,
            generator=window_generator(seed, w), known=tail,
        )  # fmt: skip
        tail = x[..., -overlap:] if overlap else None
        yield model.denormalise(x if w == 0 else x[..., overlap:])


def render(
    model: Stage2Model,
    coarse: Tensor,
    text: Tensor,
    text_mask: Tensor | None,
    *,
    seed: int,
    steps: int | None = None,
    cfg_scale: float | None = None,
) -> Tensor:
    """The whole sequence's codec latents (B, D, T): `render_windows`' pieces, concatenated."""
    pieces = render_windows(model, coarse, text, text_mask, seed=seed, steps=steps, cfg_scale=cfg_scale)
    return torch.cat(list(pieces), dim=-1)
