"""int8 and int4 Linear weights for decoding: fewer bytes for a step to read.

At batch 1-16 a decoding step's time is mostly its Linears reading their weights, so storing them
in 8 or 4 bits instead of 16 or 32 makes the step faster by about the ratio of bytes. The packed
weight replaces the Linear's own `weight` (the module stays an nn.Linear, so every path that holds
the Parameter, the block kernels' views included, sees it), in one of two layouts:

- int8, `(out, in + 4)` int8: each output row's `in` values, then its fp32 scale's four bytes
  (max |w| / 127, symmetric; llm.int8's row-wise absmax).
- int4, `(out, groups, 2 + g / 2)` uint8, g in GROUP_SIZES: each group of g consecutive inputs is
  a bf16 scale, then g / 2 bytes, byte j holding value j in its low nibble and value j + g / 2 in its
  high one, each stored + 8. The scale is the group's largest-magnitude weight over -8, so that one
  lands on -8 exactly and the other 15 levels cover the rest (GGML's Q4_0). The inputs are padded
  with zeros to a multiple of max(64, g), the kernel's unit.

The activations are quantized too, per row (per token) to int8 with scale max |x| / 127: the C++
kernel (cpu_kernels.cpp) then multiplies bytes with AVX512-VNNI, four products an instruction where
fp32 takes one, which at 16 rows is the difference between reading the weights at memory speed and
waiting on arithmetic. `quantized_linear` here is its PyTorch twin, used wherever the kernel is not
(prefill, training, CUDA, a machine without a compiler), with the same rounding at every step but
the last sum's order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP = 64
FORMATS = ("int8", "int4")
UNIT = 64  # the kernel reads weights and activations 64 bytes at a time


def is_quantized(weight: Tensor) -> bool:
    """Whether `weight` is one of the packed layouts above (a float weight is not)."""
    return weight.dtype in (torch.int8, torch.uint8)


def weight_format(weight: Tensor) -> str:
    """ "int8", "int4-g<size>", or the float dtype's name: what a record says a Linear holds."""
    if weight.dtype == torch.int8:
        return "int8"
    if weight.dtype == torch.uint8:
        return f"int4-g{int_group(weight)}"
    return str(weight.dtype).removeprefix("torch.")


def int_group(packed: Tensor) -> int:
    """An int4 weight's group size, from its shape."""
    return 2 * (packed.shape[-1] - 2)


def pack_int8(weight: Tensor) -> Tensor:
    """(out, in) float -> (out, in + 4) int8: per output row, round(w / scale) then the fp32 scale."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True) / 127  # (out, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return torch.cat([q, scale.contiguous().view(torch.int8)], dim=1)


def pack_int4(weight: Tensor, group: int = DEFAULT_GROUP) -> Tensor:
    """(out, in) float -> (out, groups, 2 + group / 2) uint8, as the module docstring lays it out."""
    if group not in GROUP_SIZES:
        raise ValueError(f"int4 group size {group}: choose one of {', '.join(map(str, GROUP_SIZES))}")
    w = weight.detach().float()
    out, width = w.shape
    w = F.pad(w, (0, -width % max(UNIT, group))).view(out, -1, group)  # (out, G, g)
    peak = w.gather(2, w.abs().argmax(dim=2, keepdim=True))  # (out, G, 1): the signed extreme
    scale = (peak / -8).to(torch.bfloat16)
    scale = torch.where(scale != 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale.float()).clamp(-8, 7).to(torch.uint8) + 8  # (out, G, g) in 0..15
    half = group // 2
    nibbles = q[..., :half] | (q[..., half:] << 4)  # (out, G, g / 2)
    return torch.cat([scale.view(torch.uint8), nibbles], dim=2)


def pack(weight: Tensor, fmt: str, group: int = DEFAULT_GROUP) -> Tensor:
    """`weight` in `fmt` ("int8" or "int4")."""
    if fmt == "int8":
        return pack_int8(weight)
    if fmt == "int4":
        return pack_int4(weight, group)
    raise ValueError(f"weight format {fmt!r}: choose one of {', '.join(FORMATS)}")


def unpack(packed: Tensor, in_features: int) -> Tensor:
    """The fp32 weight (out, in_features) a packed one stands for: what the kernel multiplies by."""
    if packed.dtype == torch.int8:
        q, scale = packed[:, :in_features], packed[:, in_features:].contiguous().view(torch.float32)
        return q.float() * scale
    scale = packed[..., :2].contiguous().view(torch.bfloat16).float()  # (out, G, 1)
    nibbles = packed[..., 2:]
    q = torch.cat([nibbles & 15, nibbles >> 4], dim=2).float() - 8  # (out, G, g)
    return (q * scale).reshape(packed.shape[0], -1)[:, :in_features]


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (..., in) -> (q, scale): q integer-valued fp32 in [-127, 127], x ~ q * scale, one scale a row.

    The kernel computes the same numbers: 127 / max |x| in fp32, then round half to even. (A
    division, not `127 / peak`: torch computes that as 127 * (1 / peak), one ulp away at times, and
    a product that lands on a tie then rounds the other way.)"""
    x = x.float()
    peak = x.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(peak > 0, torch.full_like(peak, 127) / peak, torch.zeros_like(peak))
    return torch.round(x * inverse).clamp(-127, 127), peak / 127


def quantized_linear(x: Tensor, packed: Tensor, bias: Tensor | None, in_features: int) -> Tensor:
    """x (..., in) times a packed weight, activations quantized per row: the kernel's twin."""
    q, scale = quantize_rows(x)
    out = F.linear(q, unpack(packed, in_features).to(q.device)) * scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def quantize_linear_weights(model: nn.Module, fmt: str, group: int = DEFAULT_GROUP) -> nn.Module:
    """Replace every Linear's weight in `model` by its packed `fmt` form, in place (decoding only:
    the packed weights take no gradient). Biases, norms, embeddings and the SSM parameters stay as
    they are.

    The Parameter objects stay and take the packed data, as `cast_linear_weights` does, so the block
    kernels' views of a model (which hold its Parameters) read the packed weights."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not is_quantized(module.weight):
            packed = pack(module.weight, fmt, group).to(module.weight.device)
            module.weight.requires_grad_(False)
            module.weight.data = packed
    return model
