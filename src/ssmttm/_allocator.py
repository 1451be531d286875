"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

PyTorch on the CPU allocates and frees its large activations at every layer. glibc serves blocks
over its mmap threshold with fresh mappings and unmaps them on free, so every layer pays for page
faults and for the kernel zeroing pages: on a 2-core machine that was a third of the time of a
long `forward` (benchmarks/README.md). Raising the mmap and trim thresholds makes those blocks
come from, and go back to, the heap. The cost is that memory freed at a peak stays with the
process. Set SSMTTM_KEEP_MALLOC=1 to leave the allocator alone.

It is opt-in, since it changes the whole process: `import ssmttm` leaves the allocator alone, and
the CLI, `TextToMusic.from_pretrained` and training call `ssmttm.tune_allocator()`; so should a
script that runs long forwards of its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator() -> bool:
    """Returns True if glibc accepted the settings."""
    if os.environ.get("SSMTTM_KEEP_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
