"""The Mamba-1 mixer, with mamba_ssm `Mamba`'s parameter names and layout, in pure PyTorch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmttm.backbones.base import BatchState, Context, Mixer, matmul_flops, padded_length, real_positions
from ssmttm.backbones.mamba2 import inverse_softplus_dt
from ssmttm.ops.conv import causal_conv1d, causal_conv1d_step, conv_window
from ssmttm.ops.linear import linear
from ssmttm.ops.mamba2_step import check_rows
from ssmttm.ops.selective_scan import selective_scan_chunked, selective_scan_step


@dataclass
class MambaConfig:
    """The Mamba-1 selective-scan mixer; defaults are mamba_ssm's `Mamba` defaults."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 means mamba_ssm's "auto": ceil(d_model / 16)
    chunk_size: int = 32
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4


@dataclass
class MambaState(BatchState):
    recurrent_fields = ("ssm",)

    conv: Tensor  # (B, d_inner, d_conv): the convolution's last d_conv inputs
    ssm: Tensor  # (B, d_inner, d_state)

    def check_rows(self, rows: int) -> None:
        check_rows(rows, self.conv, self.ssm)


class Mamba(Mixer[MambaState]):
    def __init__(self, d_model: int, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_inner = cfg.expand * d_model
        self.dt_rank = cfg.dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, cfg.d_conv, groups=self.d_inner, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        with torch.no_grad():
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        a = torch.arange(1, cfg.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))  # (d_inner, d_state), S4D-real initialisation
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self._parallel(x, ctx)[0]

    def prefill(self, x: Tensor, ctx: Context) -> tuple[Tensor, MambaState]:
        y, conv_inputs, ssm = self._parallel(x, ctx)
        return y, MambaState(conv=conv_window(conv_inputs, self.cfg.d_conv), ssm=ssm.contiguous())

    def _dt_b_c(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dt, B, C = linear(x, self.x_proj).split([self.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        return F.softplus(linear(dt, self.dt_proj)), B, C

    def _parallel(self, u: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, T, D) -> output (B, T, D), the raw conv inputs (B, T, d_inner), final SSM state."""
        keep = real_positions(ctx, u)
        x, z = linear(u, self.in_proj).chunk(2, dim=-1)
        if keep is not None:  # masked positions: zero input to the convolution ...
            x = x * keep
        x_in = x
        x = F.silu(causal_conv1d(x_in, self.conv1d.weight, self.conv1d.bias))
        dt, B, C = self._dt_b_c(x)
        if keep is not None:  # ... and dt = 0, so the state neither decays nor takes input
            dt = dt * keep
        y, final = selective_scan_chunked(x, dt, -torch.exp(self.A_log.float()), B, C, self.cfg.chunk_size)
        y = (y + x * self.D) * F.silu(z)
        return linear(y, self.out_proj), x_in, final

    def step(self, u: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """u (B, D) -> (B, D); updates `state` in place."""
        x, z = linear(u, self.in_proj).chunk(2, dim=-1)
        x = F.silu(causal_conv1d_step(x, state.conv, self.conv1d.weight, self.conv1d.bias))
        dt, B, C = self._dt_b_c(x)
        y = selective_scan_step(state.ssm, x, dt, -torch.exp(self.A_log.float()), B, C)
        y = (y + x * self.D) * F.silu(z)
        return linear(y, self.out_proj), state


def mamba_flops(d_model: int, cfg: MambaConfig, length: int) -> float:
    """One Mamba-1 mixer over `length` positions (training/flops.py says what is counted)."""
    d_inner = cfg.expand * d_model
    dt_rank = cfg.dt_rank or math.ceil(d_model / 16)
    return (
        matmul_flops(length, d_model, 2 * d_inner)  # in_proj: x, z
        + 2.0 * length * d_inner * cfg.d_conv  # depthwise causal conv over x
        + matmul_flops(length, d_inner, dt_rank + 2 * cfg.d_state)  # x_proj: dt (low rank), B, C
        + matmul_flops(length, dt_rank, d_inner)  # dt_proj
        + matmul_flops(padded_length(length, cfg.chunk_size), d_inner, cfg.d_state)  # scan read-out y = h . C
        + matmul_flops(length, d_inner, d_model)  # out_proj
    )


def mamba_state_bytes(d_model: int, cfg: MambaConfig, state_dtype: torch.dtype) -> int:
    """One row's `MambaState` in one layer: the fp32 convolution window and the SSM state."""
    d_inner = cfg.expand * d_model
    return d_inner * cfg.d_conv * 4 + d_inner * cfg.d_state * state_dtype.itemsize
