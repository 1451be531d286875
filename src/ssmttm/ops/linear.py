"""Linear layers for decoding, where a step multiplies a few rows by every weight matrix.

At batch 1-16 a decoding step is bound by reading the weights. On the CPUs we measured,
PyTorch's `F.linear(x, W)` streams fp32 weights at about a third of the speed of `W @ x.T`,
while for bf16 weights `F.linear` is the fast one (benchmarks/README.md). Every Linear of the
models goes through `linear`, so the same code serves training, prefill and decoding, in fp32
or with bf16 weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """layer(x) for x (..., in); the output keeps x's dtype whatever the weight dtype."""
    weight = layer.weight
    if x.dim() == 2 and weight.dtype == x.dtype == torch.float32:
        # MKL is fast only for a contiguous x: W @ x.T on a transposed x streams at a quarter of the speed.
        out = (weight @ x.contiguous().T).T
        return out if layer.bias is None else out + layer.bias
    if weight.dtype == x.dtype:
        return F.linear(x, weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.to(weight.dtype)
    return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


def cast_linear_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store every Linear's weights in `dtype` (decoding with bf16 weights reads half the bytes).

    Norms, convolutions, SSM parameters and the decoding state stay in fp32.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return model
