"""Causal depthwise convolution, as Mamba uses it: parallel form and a rolling-window step.

The parallel form works on (B, T, C), the layout the mixers produce, as W shifted multiply-adds:
for kernel widths of 4 that beats a depthwise `conv1d` (which needs (B, C, T) and two transposes)
several times over on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, T, C), weight (C, 1, W) -> (B, T, C); position t sees inputs t-W+1 .. t."""
    length, width = x.shape[1], weight.shape[-1]
    padded = F.pad(x, (0, 0, width - 1, 0))  # (B, T + W - 1, C)
    taps = weight[:, 0].T  # (W, C)
    out = padded[:, :length] * taps[0] if bias is None else torch.addcmul(bias, padded[:, :length], taps[0])
    for k in range(1, width):
        out = out.addcmul_(padded[:, k : k + length], taps[k])
    return out


def conv_window(x: Tensor, width: int) -> Tensor:
    """The decoding state after x (B, T, C): its last `width` inputs as (B, C, width), zero-filled."""
    length = x.shape[1]
    window = x[:, max(0, length - width) :].transpose(1, 2)
    return F.pad(window, (width - window.shape[-1], 0)).contiguous()


def causal_conv1d_step(x: Tensor, window: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, C) enters the window (B, C, W), updated in place; returns the conv output (B, C)."""
    window[..., :-1] = window[..., 1:].clone()
    window[..., -1] = x
    out = torch.einsum("bcw,cw->bc", window, weight[:, 0])
    return out if bias is None else out + bias
