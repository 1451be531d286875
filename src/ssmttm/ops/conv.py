"""Causal depthwise convolution, as Mamba uses it: parallel form and a rolling-window step."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, C, T), weight (C, 1, W) -> (B, C, T); position t sees inputs t-W+1 .. t."""
    width = weight.shape[-1]
    return F.conv1d(F.pad(x, (width - 1, 0)), weight, bias, groups=x.shape[1])


def conv_window(x: Tensor, width: int) -> Tensor:
    """The decoding state after x (B, C, T): its last `width` inputs, zero-filled on the left."""
    length = x.shape[-1]
    if length >= width:
        return x[..., length - width :].contiguous()
    return F.pad(x, (width - length, 0))


def causal_conv1d_step(x: Tensor, window: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (B, C) enters the window (B, C, W), updated in place; returns the conv output (B, C)."""
    window[..., :-1] = window[..., 1:].clone()
    window[..., -1] = x
    out = (window * weight[:, 0]).sum(-1)
    return out if bias is None else out + bias
