"""The C++ decoding kernels (cpu_kernels.cpp), built on first use with the system compiler.

Building takes about half a minute once; torch caches the result in TORCH_EXTENSIONS_DIR. Where no
compiler works, `available()` is False (with one warning) and callers use their PyTorch twins.
SSMTTM_NO_CPU_KERNELS=1 makes it False on purpose.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


@functools.cache
def extension():
    from torch.utils.cpp_extension import load

    return load(
        name="ssmttm_cpu_kernels",
        sources=[str(Path(__file__).with_name("cpu_kernels.cpp"))],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


@functools.cache
def linear_max_rows() -> int:
    """The most rows `linear_rows` takes in one call (8 with AVX-512, else 4); needs `available()`."""
    return int(extension().linear_max_rows())


@functools.cache
def available() -> bool:
    if os.environ.get("SSMTTM_NO_CPU_KERNELS") == "1":
        return False
    try:
        extension()
    except Exception as err:  # no compiler, no ninja, no headers: decode with the references
        log.warning("CPU decoding kernels unavailable (%s); using the PyTorch references", err)
        return False
    return True
