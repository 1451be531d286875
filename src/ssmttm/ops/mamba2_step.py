"""The Mamba-2 decoding step between in_proj and out_proj: a PyTorch reference and a fused CPU kernel.

Both take the in_proj output of one position and the layer's state, update the state in place and
return the gated, normalised output that out_proj reads. The fused kernel lives in cpu_kernels.cpp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmttm.ops import cpu_kernels
from ssmttm.ops.conv import causal_conv1d_step
from ssmttm.ops.ssd import ssd_step


def gated_rms_norm(x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float) -> Tensor:
    """mamba_ssm's RMSNormGated with norm_before_gate=False: rmsnorm(x * silu(z)) per group."""
    x = x * F.silu(z)
    groups = x.unflatten(-1, (-1, group_size))
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return groups.flatten(-2) * weight


def check_rows(rows: int, conv_state: Tensor, ssm_state: Tensor) -> None:
    """Raise ValueError unless a step's `rows` inputs match the state's rows, one each.

    Both decoding paths check first, so that a mismatch is the same error on either: the PyTorch ops
    would broadcast one row over the other's batch, and the kernels would index past the smaller one.
    Shape comparisons only: the step is the decoding loop."""
    if not rows == conv_state.shape[0] == ssm_state.shape[0]:
        raise ValueError(
            f"decoding step: {rows} input rows on a state of {conv_state.shape[0]} (conv_state) and "
            f"{ssm_state.shape[0]} (ssm_state); a step takes one input row per state row"
        )


def check_step(zxbcdt: Tensor, conv_state: Tensor, conv_weight: Tensor, ssm_state: Tensor) -> None:
    """`check_rows`, and that the convolution window (B, conv_dim, W) fits conv_weight (conv_dim, 1, W)."""
    check_rows(zxbcdt.shape[0], conv_state, ssm_state)
    if conv_state.shape[1:] != (conv_weight.shape[0], conv_weight.shape[-1]):
        raise ValueError(
            f"decoding step: conv_state {tuple(conv_state.shape)} does not fit conv_weight "
            f"{tuple(conv_weight.shape)}: (batch, channels, width) against (channels, 1, width)"
        )


def mamba2_step_ref(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor,
    dt_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    norm_weight: Tensor,
    ssm_state: Tensor,
    ngroups: int,
    eps: float,
) -> Tensor:
    """zxbcdt (B, 2 d_inner + 2 g n + H) -> (B, d_inner); conv_state (B, conv_dim, W) and
    ssm_state (B, H, P, N), fp32 or bf16 (`ssd_step`), are updated in place."""
    check_step(zxbcdt, conv_state, conv_weight, ssm_state)
    _, heads, headdim, d_state = ssm_state.shape
    d_inner = heads * headdim
    z, xBC, dt = zxbcdt.split([d_inner, conv_state.shape[1], heads], dim=-1)
    conv = F.silu(causal_conv1d_step(xBC, conv_state, conv_weight, conv_bias))
    x, B, C = conv.split([d_inner, ngroups * d_state, ngroups * d_state], dim=-1)
    x = x.unflatten(-1, (heads, headdim))  # (B, H, P)
    y = ssd_step(
        ssm_state,
        x,
        F.softplus(dt + dt_bias),
        -torch.exp(A_log.float()),
        B.unflatten(-1, (ngroups, d_state)),
        C.unflatten(-1, (ngroups, d_state)),
    )
    y = (y + x * D[:, None]).flatten(-2)
    return gated_rms_norm(y, z, norm_weight, d_inner // ngroups, eps)


def mamba2_step_fused(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor,
    dt_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    norm_weight: Tensor,
    ssm_state: Tensor,
    ngroups: int,
    eps: float,
) -> Tensor:
    """Same contract as `mamba2_step_ref`, in one C++ call with one pass over the SSM state. The
    kernel checks every size it indexes with; this checks the batch and window first, as the
    reference does, so that both paths raise the same ValueError for those."""
    check_step(zxbcdt, conv_state, conv_weight, ssm_state)
    return cpu_kernels.extension().mamba2_step(
        zxbcdt=zxbcdt.contiguous(),
        conv_state=conv_state,
        conv_weight=conv_weight,
        conv_bias=conv_bias,
        dt_bias=dt_bias,
        A_log=A_log,
        D=D,
        norm_weight=norm_weight,
        ssm_state=ssm_state,
        ngroups=ngroups,
        eps=eps,
    )
