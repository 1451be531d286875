"""Measuring helpers shared by the decoding benchmarks (decode_speed.py, generate_speed.py).

A measurement whose peak memory matters runs in a fresh process: `in_process` starts the running
script again with `--worker`, and the script hands that argument to `worker` with its table of
measurements.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from ssmttm import tune_allocator
from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset

tune_allocator()  # as the CLI does: every figure here was measured with it (ssmttm/_allocator.py)

FRAME_RATE = 86.13  # DAC 44.1 kHz frames per second
TEXT_TOKENS = 32
THREADS = 2


def build(
    preset: str,
    batch: int,
    weight_dtype: torch.dtype | str | None = None,
    overrides: list[str] | None = None,
    text_tokens: int = TEXT_TOKENS,
) -> tuple[MusicLM, torch.Tensor]:
    """A preset (with config overrides) with random weights (seed 0), ready to decode, and random
    text (batch, text_tokens, text_dim). `weight_dtype` "int8" or "int4" packs the Linear weights
    (`Generator(quantize=...)`, int4 in its default groups)."""
    torch.manual_seed(0)
    cfg = load_preset(preset, overrides)
    if isinstance(weight_dtype, str):
        lm = Generator(MusicLM(cfg), quantize=weight_dtype).lm
    else:
        lm = Generator(MusicLM(cfg), weight_dtype=weight_dtype).lm
    return lm, torch.randn(batch, text_tokens, cfg.text_dim)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak RSS read by `peak_rss_since_reset_mib` over from what the process holds now.

    Freed memory goes back to the kernel first (ssmttm keeps it in the heap: ssmttm/_allocator.py),
    so what building a model freed, such as the fp32 original of a bf16 copy, is not counted.
    Linux with glibc; getrusage's peak, `peak_rss_mib`, is never reset.
    """
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_since_reset_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_bandwidth_gbs(repeats: int = 5) -> float:
    """Bandwidth of a large streaming read: summing a 1 GiB fp32 tensor (best of `repeats`)."""
    big = torch.ones(2**28)
    big.sum()
    return big.numel() * 4 / min(timed(big.sum) for _ in range(repeats)) / 1e9


def update_bandwidth_gbs(repeats: int = 5) -> float:
    """Bandwidth of a large in-place update, reads and writes counted: scaling a 1 GiB fp32
    tensor in place (best of `repeats`), as a step updates its SSM state."""
    big = torch.ones(2**28)
    big.mul_(1.0)
    return 2 * big.numel() * 4 / min(timed(lambda: big.mul_(1.0)) for _ in range(repeats)) / 1e9


def drift_warning(samples: list[float], what: str, tolerance: float = 0.2) -> str | None:
    """A warning when bandwidth samples taken through a run spread by more than `tolerance` of the
    highest: something else was using the machine's memory, so decoders timed at different moments
    of the run met different machines, and the ratios between them say little about the code."""
    low, high = min(samples), max(samples)
    if high <= 0 or (high - low) / high <= tolerance:
        return None
    return (
        f"warning: {what} moved by {(high - low) / high:.0%} during the run ({low:.1f} to {high:.1f} GB/s): "
        "other load shared the memory, and decoders timed at different moments met unlike conditions; "
        "rerun on an idle machine"
    )


def bytes_per_step(lm: MusicLM, batch: int, state_dtype: torch.dtype | None = None) -> int:
    """Bytes one step reads: every weight it multiplies by, plus the decoding state (its SSM
    state stored in `state_dtype`, fp32 by default).

    The embedding tables contribute only the K rows looked up; the text projection is not used.
    """
    skip = {id(p) for m in (lm.embeddings, lm.text_proj, lm.text_norm) for p in m.parameters()}
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if id(p) not in skip)
    embedding_rows = lm.cfg.num_codebooks * lm.cfg.backbone.d_model * 4
    return weights + embedding_rows + state_bytes(lm, batch, state_dtype)


def state_bytes(lm: MusicLM, batch: int, state_dtype: torch.dtype | None = None) -> int:
    """Bytes of the mixers' decoding state (Mamba-2's SSM state and convolution window, Mamba-3's
    SSM state, angles and previous k and v), which a step reads and writes back."""
    _, state = lm.prefill(Conditioning(torch.zeros(batch, 1, lm.cfg.text_dim)))
    if state_dtype is not None:
        state = state.with_recurrent_dtype(state_dtype)
    return sum(t.numel() * t.element_size() for layer in state.backbone.layers for t in layer.mixer.tensors())


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU handles bf16 natively (read on Linux; elsewhere, skip)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_line() -> str:
    return (
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {THREADS} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def in_process(kind: str, env: dict | None = None, **kwargs) -> dict:
    """Run one measurement of the running script in a fresh process, so that its peak RSS is its own."""
    script = os.path.abspath(sys.modules["__main__"].__file__)
    cmd = [sys.executable, script, "--worker", json.dumps({"kind": kind, **kwargs})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(runs: dict[str, Callable[..., dict]], spec: dict) -> None:
    """The child's side of `in_process`: run the measurement `spec` names and print its result as JSON."""
    torch.set_num_threads(THREADS)
    kind = spec.pop("kind")
    print(json.dumps(runs[kind](**spec)))


def chosen_sections(parser, value: str, known: list[str]) -> list[str]:
    """The comma-separated `--sections` value, each checked against `known` (a parser error if not)."""
    sections = value.split(",")
    unknown = set(sections) - set(known)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return sections
