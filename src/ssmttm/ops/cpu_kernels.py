"""The C++ decoding kernels (cpu_kernels.cpp), built on first use with the system compiler.

The build takes 30-70 s once, announced by one line on stderr. It is cached in TORCH_EXTENSIONS_DIR
(torch's default otherwise) under a name that says what the binary depends on, so that nothing else
ever loads it: `ssmttm_cpu_kernels_<isa>_<digest>`, isa the -march value (`native` with a digest of
this CPU's flags, since it compiles for them), digest that of the source, the flags and the torch and
Python versions. Two checkouts of different versions each keep their own build instead of taking
turns rebuilding one, and a cache shared with a CPU that lacks AVX-512 never hands it an AVX-512
binary (SIGILL).

A build goes into a fresh temporary folder that is renamed into place once complete, so a cached
folder is always a whole build. Builds of one name take turns under an flock, which the system
releases when its holder dies: a run killed mid-build (torch's own lock file stays behind in its
temporary folder, where no later run looks) leaves nothing that a later run would wait on.

Where no compiler works, `available()` is False (with one warning) and callers use their PyTorch
twins. SSMTTM_NO_CPU_KERNELS=1 makes it False on purpose.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
HEADERS = (Path(__file__).with_name("quantized_dot.h"),)  # included by SOURCE: part of the cache key
LDFLAGS = ["-fopenmp"]


def extension(isa: str = "native") -> ModuleType:
    """The kernels compiled for `isa` (a -march value), loaded from the cache or built into it.

    The decoding paths use the default; the tests also build x86-64-v3 (AVX2, no AVX-512)."""
    return _extension(isa)


@functools.cache  # by the isa alone, so that extension() and extension("native") load one module
def _extension(isa: str) -> ModuleType:
    import torch.utils.cpp_extension  # imports setuptools: only when the kernels are wanted

    flags = ["-O3", f"-march={isa}", "-fopenmp"]
    name = cache_name(isa, flags)
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or torch.utils.cpp_extension.get_default_build_root())
    library = root / name / f"{name}.so"
    if not library.exists():
        root.mkdir(parents=True, exist_ok=True)
        with _build_turn(root / f"{name}.lock"):
            if not library.exists():  # no other process built it while this one waited
                return _build(name, flags, root, isa)
    spec = importlib.util.spec_from_file_location(name, library)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cache_name(isa: str, flags: list[str]) -> str:
    """The build's folder and module name (a C identifier: the module's init function is named after it)."""
    target = re.sub(r"\W", "_", isa)
    if isa == "native":
        target += "_" + hashlib.sha256(_cpu_flags().encode()).hexdigest()[:8]
    key = [SOURCE.read_text(), *(h.read_text() for h in HEADERS), *flags, *LDFLAGS, torch.__version__, sys.version]
    return f"ssmttm_cpu_kernels_{target}_{hashlib.sha256(chr(0).join(key).encode()).hexdigest()[:12]}"


def _cpu_flags() -> str:
    """This CPU's instruction-set flags as Linux lists them (x86 `flags`, Arm `Features`), or elsewhere its name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    listed = (line.split(":", 1)[1].strip() for line in lines if line.startswith(("flags", "Features")))
    return next(listed, None) or f"{platform.machine()} {platform.processor()}"


@contextlib.contextmanager
def _build_turn(path: Path) -> Iterator[None]:
    """Hold the flock on `path` (waiting, with one line on stderr, while another process builds)."""
    import fcntl  # Unix only: elsewhere this raises, and available() falls back to the references

    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process to build the CPU kernels ({path})", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _build(name: str, flags: list[str], root: Path, isa: str) -> ModuleType:
    """Compile into a temporary folder, load the module from there and rename the folder into place."""
    from torch.utils.cpp_extension import load

    # What builds killed before they finished left, and a cached folder whose library was deleted.
    for leftover in [*root.glob(f"{name}.building-*"), root / name]:
        shutil.rmtree(leftover, ignore_errors=True)
    print(f"building CPU kernels once ({isa}), about 30-70 s, into {root}", file=sys.stderr, flush=True)
    building = root / f"{name}.building-{os.getpid()}"
    building.mkdir()
    try:
        module = load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=LDFLAGS,
            build_directory=str(building),
            verbose=False,
        )
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    building.rename(root / name)  # the loaded library stays mapped; later runs find it under the final name
    return module


@functools.cache
def linear_max_rows() -> int:
    """The most rows `linear_rows` takes in one call (8 with AVX-512, else 4); needs `available()`."""
    return int(extension().linear_max_rows())


@functools.cache
def available() -> bool:
    """Whether the kernels load, building them on the first call (the generate command calls it
    before starting its clock)."""
    if os.environ.get("SSMTTM_NO_CPU_KERNELS") == "1":
        return False
    try:
        extension()
    except Exception as err:  # no compiler, no ninja, no headers: decode with the references
        log.warning("CPU decoding kernels unavailable (%s); using the PyTorch references", err)
        return False
    return True
