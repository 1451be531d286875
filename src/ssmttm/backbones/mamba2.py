"""The Mamba-2 mixer, with mamba_ssm `Mamba2`'s parameter names and layout, in pure PyTorch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.base import BatchState, Context, Mixer, real_positions
from ssmttm.config import Mamba2Config
from ssmttm.ops import cpu_kernels
from ssmttm.ops.conv import causal_conv1d, conv_window
from ssmttm.ops.linear import linear
from ssmttm.ops.mamba2_step import gated_rms_norm, mamba2_step_fused, mamba2_step_ref
from ssmttm.ops.ssd import ssd_chunked


@dataclass
class Mamba2State(BatchState):
    recurrent_fields = ("ssm",)

    conv: Tensor  # (B, conv_dim, d_conv): the convolution's last d_conv inputs, as mamba_ssm keeps them
    ssm: Tensor  # (B, nheads, headdim, d_state)


class GatedRMSNorm(nn.Module):
    """mamba_ssm's `RMSNormGated` with norm_before_gate=False: rmsnorm(x * silu(z)) per group."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return gated_rms_norm(x, z, self.weight, self.group_size, self.eps)


def inverse_softplus_dt(size: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """mamba_ssm's dt initialisation: log-uniform in [dt_min, dt_max], stored before softplus."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba2(Mixer[Mamba2State]):
    def __init__(self, d_model: int, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_inner = cfg.expand * d_model
        if self.d_inner % cfg.headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not divisible by headdim {cfg.headdim}")
        self.nheads = self.d_inner // cfg.headdim
        if self.nheads % cfg.ngroups:
            raise ValueError(f"{self.nheads} heads do not split into {cfg.ngroups} groups")
        self.conv_dim = self.d_inner + 2 * cfg.ngroups * cfg.d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, padding=cfg.d_conv - 1)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.nheads, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(cfg.a_init_min, cfg.a_init_max)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // cfg.ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self._parallel(x, ctx)[0]

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, Mamba2State]:
        y, conv_inputs, ssm = self._parallel(x, ctx)
        return y, Mamba2State(conv=conv_window(conv_inputs, self.cfg.d_conv), ssm=ssm.contiguous())

    def _parallel(self, u: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, T, D) -> output (B, T, D), the raw conv inputs (B, T, conv_dim), final SSM state."""
        batch, length, _ = u.shape
        cfg = self.cfg
        keep = real_positions(ctx, u)
        z, xBC, dt = linear(u, self.in_proj).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if keep is not None:  # masked positions: zero input to the convolution ...
            xBC = xBC * keep
        conv = F.silu(causal_conv1d(xBC, self.conv1d.weight, self.conv1d.bias))
        x, B, C = conv.split([self.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, T, H)
        if keep is not None:  # ... and dt = 0, so the state neither decays nor takes input
            dt = dt * keep
        x = x.unflatten(-1, (self.nheads, cfg.headdim))  # (B, T, H, P)
        y, final = ssd_chunked(
            x,
            dt,
            -torch.exp(self.A_log.float()),
            B.unflatten(-1, (cfg.ngroups, cfg.d_state)),
            C.unflatten(-1, (cfg.ngroups, cfg.d_state)),
            cfg.chunk_size,
        )
        y = (y + x * self.D[:, None]).reshape(batch, length, self.d_inner)
        return linear(self.norm(y, z), self.out_proj), xBC, final

    def step(self, u: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """u (B, D) -> (B, D); updates `state` in place."""
        zxbcdt = linear(u, self.in_proj)
        # The fused CPU kernel (ops/cpu_kernels.cpp) wherever it runs; the PyTorch twin elsewhere.
        fused = zxbcdt.dtype == torch.float32 and zxbcdt.is_cpu and cpu_kernels.available()
        inner = mamba2_step_fused if fused else mamba2_step_ref
        y = inner(
            zxbcdt,
            state.conv,
            self.conv1d.weight,
            self.conv1d.bias,
            self.dt_bias,
            self.A_log,
            self.D,
            self.norm.weight,
            state.ssm,
            self.cfg.ngroups,
            self.norm.eps,
        )
        return linear(y, self.out_proj), state
