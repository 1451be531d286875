"""Fused CPU kernels, built on first use with the system C++ compiler, each beside its `_ref` twin.

Building takes about half a minute once; torch caches the result in TORCH_EXTENSIONS_DIR. Where
no compiler works, `ssd_step` falls back to the reference with a warning, so decoding still runs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from ssmttm.ops.ssd import ssd_step_ref

log = logging.getLogger(__name__)

SsdStep = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@functools.cache
def _extension():
    from torch.utils.cpp_extension import load

    source = Path(__file__).with_name("ssd_step.cpp")
    return load(
        name="ssmttm_ssd_step",
        sources=[str(source)],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def ssd_step_fused(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Same contract as `ssd_step_ref`: one pass over the state, updated in place."""
    return _extension().ssd_step(state, x, dt, A, B, C)


@functools.cache
def fused_available() -> bool:
    try:
        _extension()
    except Exception as err:  # no compiler, no ninja, no headers: decode with the reference
        log.warning("fused CPU decoding kernel unavailable (%s); using the PyTorch reference", err)
        return False
    return True


def ssd_step_kernel(fused: bool) -> SsdStep:
    """The step update to decode with: fused on CPU where it builds, the reference otherwise."""
    return ssd_step_fused if fused and fused_available() else ssd_step_ref
