"""A metronome for the LM: where each frame falls in the beat, for captions that state a tempo.

The tempo position of `text/tempo.py` tells the model *which* tempo; it still has to invent a
steady pulse at that period, frame after frame, and on style/lead pairs it never heard it drifts.
The clock gives every frame its place in the bar instead: sines and cosines of the beat count at a
few multiples of the beat (the 4/4 bar, half bar, beat, eighth, sixteenth), so placing a drum hit
on the beat becomes a matter of reading the input. A row's clock is two numbers, beats per frame
and the beat count at frame 0 (a clip cut from the middle of a piece starts part-way into a
beat); NaN means "no tempo stated", which gives a silent clock (zeros), as does the null condition.

The synthetic corpus starts every piece on a downbeat (`data/synth/timeline.py`), so in training
the clock is exact; at generation the piece starts on a downbeat by construction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Cycles per beat: the bar of 4/4, half a bar, the beat, eighths and sixteenths (2^-2 .. 2^2).
OCTAVES = range(-2, 3)
HARMONICS = tuple(2.0**octave for octave in OCTAVES)
FEATURES = 2 * len(HARMONICS)


def tempo_clock(bpm: float | None, frame_rate: float, start_s: float = 0.0) -> tuple[float, float]:
    """(beats per frame, beats at frame 0) of a clip at `bpm` whose frame 0 is `start_s` seconds
    into the piece; (nan, nan) when no tempo is stated."""
    if bpm is None or not math.isfinite(bpm):
        return math.nan, math.nan
    beats_per_second = bpm / 60.0
    return beats_per_second / frame_rate, beats_per_second * start_s


def no_clock(batch: int, device: torch.device | str = "cpu") -> Tensor:
    """(batch, 2) rows of NaN: the clock of captions that state no tempo, and of the null condition."""
    return torch.full((batch, 2), math.nan, dtype=torch.float64, device=device)


def clock_features(clock: Tensor, columns: Tensor) -> Tensor:
    """clock (B, 2), columns (T,) frame indices -> (B, T, FEATURES) float32: cos and sin of
    2 pi h beats(t) for each harmonic h; zeros for rows without a tempo. Clocks are float64 and the
    beat count is formed in float64, so that frame 10^6 keeps its phase (in float32 the rate alone
    would be off by 1e-8 of a beat per frame)."""
    rate, start = clock.double().unbind(-1)  # (B,)
    beats = start[:, None] + rate[:, None] * columns.double()[None]  # (B, T)
    # Built on the device, not copied from a Python list: a decoding step captured in a CUDA graph
    # (generation/cuda_graph.py) cannot copy from the host.
    octaves = torch.arange(OCTAVES.start, OCTAVES.stop, dtype=torch.float64, device=clock.device)
    harmonics = torch.exp2(octaves)
    turns = torch.frac(beats[..., None] * harmonics)  # (B, T, H): the phase, reduced before the float32 cast
    angle = (2 * math.pi * turns).float()
    out = torch.cat([angle.cos(), angle.sin()], dim=-1)
    silent = ~torch.isfinite(clock).all(dim=-1)  # (B,)
    return out.masked_fill(silent[:, None, None], 0.0)
