"""Linear layers for decoding, where a step multiplies a few rows by every weight matrix.

At batch 1-16 a decoding step is bound by reading the weights, and how fast a CPU streams them
depends on the call and the CPU: on an AMD EPYC `F.linear(x, W)` read fp32 weights several times
slower than `W @ x.T` with a contiguous x, on an Intel Xeon it is the faster of the two. At 1-8
rows (1-4 without AVX-512) our C++ loop (cpu_kernels.cpp) reads fp32 weights as fast as the best
of them on both, and bf16 weights faster (benchmarks/README.md). Every Linear of the models goes
through `linear`, so training, prefill and decoding share one code path, in fp32 or with bf16
weights. Packed int8 and int4 weights (ops/quantize.py) go to their own kernel, or its twin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.ops import cpu_kernels
from ssmttm.ops.quantize import is_quantized, quantized_linear


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """layer(x) for x (..., in); the output keeps x's dtype whatever the weight dtype."""
    weight, bias = layer.weight, layer.bias
    if is_quantized(weight):  # int8 or int4 (ops/quantize.py)
        if x.dim() == 2 and _kernel_applies(x, weight):
            return cpu_kernels.extension().linear_rows(x, weight, bias)
        return quantized_linear(x, weight, bias, layer.in_features)
    if x.dim() == 2:  # a decoding step: a few rows against every weight
        if _kernel_applies(x, weight):
            return cpu_kernels.extension().linear_rows(x, weight, bias).to(x.dtype)
        if weight.dtype == x.dtype == torch.float32:
            # A transposed x makes MKL's W @ x.T several times slower: hence the contiguous().
            out = (weight @ x.contiguous().T).T
            return out if bias is None else out + bias
    if weight.dtype == x.dtype:
        return F.linear(x, weight, bias)
    return F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype)).to(x.dtype)


def _kernel_applies(x: Tensor, weight: Tensor) -> bool:
    """fp32 rows on the CPU, no autograd, weights the kernel reads: fp32 or bf16 up to its row limit,
    packed ones at any number of rows."""
    packed = is_quantized(weight)
    return (
        x.dtype == torch.float32
        and (packed or weight.dtype in (torch.float32, torch.bfloat16))
        and x.is_cpu
        and weight.is_cpu
        and weight.is_contiguous()
        and not torch.is_grad_enabled()
        and cpu_kernels.available()
        and (packed or x.shape[0] <= cpu_kernels.linear_max_rows())
    )


def cast_linear_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store every Linear's weights in `dtype` (decoding with bf16 weights reads half the bytes).

    Norms, convolutions, SSM parameters and the decoding state stay in fp32.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return model
