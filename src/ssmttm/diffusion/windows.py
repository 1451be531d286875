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


class WindowStream:
    """Windows rendered as stage 1's frames arrive: `push(coarse (B, t))` returns the pieces of
    every window whose frames are all in, `flush()` the last, shorter one. A window is rendered the
    moment its W frames have arrived, and at the end only what `window_spans` would render, so a
    stream's pieces equal `render_windows`' whatever the pushes' sizes. It holds the coarse frames
    from the next window's start on (at most W + push size) and one overlap of latents."""

    def __init__(
        self,
        model: Stage2Model,
        text: Tensor,
        text_mask: Tensor | None,
        *,
        seed: int,
        steps: int | None = None,
        cfg_scale: float | None = None,
    ) -> None:
        cfg = model.cfg
        self.model, self.text, self.text_mask, self.seed = model, text, text_mask, seed
        self.steps = cfg.steps if steps is None else steps
        self.cfg_scale = cfg.cfg_scale if cfg_scale is None else cfg_scale
        self.window, self.overlap = cfg.window_frames, cfg.overlap_frames
        check_windows(self.window, self.overlap)
        self._coarse: Tensor | None = None  # (B, n): the frames from the next window's start on
        self._index = 0  # the next window's number
        self._tail: Tensor | None = None  # the last window's last O frames, normalised
        self._done = False

    def push(self, coarse: Tensor) -> list[Tensor]:
        """coarse (B, t) the next frames -> latents (B, D, n) of each window finished now."""
        if self._done:
            raise ValueError("this stream was flushed; start a new one")
        self._coarse = coarse if self._coarse is None else torch.cat([self._coarse, coarse], dim=-1)
        pieces = []
        while self._coarse.shape[-1] > self.window:  # a full window, and frames beyond it: not the last
            pieces.append(self._render(self.window))
        return pieces

    def flush(self) -> list[Tensor]:
        """The last window's latents (none when nothing was pushed); the stream is over."""
        self._done = True
        if (
            self._coarse is None
            or self._coarse.shape[-1] == 0
            or (self._index and self._coarse.shape[-1] <= self.overlap)
        ):
            return []
        return [self._render(self._coarse.shape[-1])]

    def _render(self, length: int) -> Tensor:
        x = sample(  # (B, D, length), normalised
            self.model.denoiser, self._coarse[:, :length], self.text, self.text_mask,
            steps=self.steps, cfg_scale=self.cfg_scale, generator=window_generator(self.seed, self._index),
            known=self._tail,
        )  # fmt: skip
        first = self._index == 0
        self._tail = x[..., -self.overlap :] if self.overlap else None
        hop = self.window - self.overlap
        self._coarse = self._coarse[:, hop:]
        self._index += 1
        return self.model.denormalise(x if first else x[..., self.overlap :])


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
    stream = WindowStream(model, text, text_mask, seed=seed, steps=steps, cfg_scale=cfg_scale)
    yield from stream.push(coarse)
    yield from stream.flush()


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
