"""Decoding speed and memory of simba-300m on the CPU: constant-time steps against the alternatives.

Compares, at 5 s, 15 s and 30 s of audio (86.13 frames/s, 2 threads, random weights, batch 2 =
one prompt and its CFG twin):
  (a) our constant-time `step` (fused CPU kernel), run for every frame of the clip;
  (b) re-running the parallel `forward` over the whole sequence at every step, as the authors'
      release decodes: measured as one `forward` over that many positions, its cost per step there;
  (c) transformer-300m decoding with its KV cache, run for every frame of the clip.
Each length runs in its own process, so peak RSS is that length's own.

Then: `forward` over 2048 positions against 2048 `step` calls; the bandwidth that (a) streams,
counted as the weight and state bytes a step reads over the bandwidth of summing a 1 GiB tensor;
steps/s at batch 16; the bf16-weight path and its largest logit difference from fp32.

    python benchmarks/decode_speed.py            # the whole table (about 15 minutes)
    python benchmarks/decode_speed.py --quick    # 1 s instead of 5/15/30 s, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from ssmttm.config import load_preset
from ssmttm.generation import Generator
from ssmttm.lm import MusicLM

FRAME_RATE = 86.13  # DAC 44.1 kHz frames per second
TEXT_TOKENS = 32
THREADS = 2


def build(preset: str, batch: int, fused: bool = True, weight_dtype: torch.dtype | None = None):
    torch.manual_seed(0)
    cfg = load_preset(preset)
    lm = Generator(MusicLM(cfg), fused=fused, weight_dtype=weight_dtype).lm
    text = torch.randn(batch, TEXT_TOKENS, cfg.text_dim)
    return lm, text


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def run_steps(preset: str, batch: int, steps: int, fused: bool = True, weight_dtype: torch.dtype | None = None) -> dict:
    """Prefill the text, then `steps` decoding steps; returns steps/s over all of them."""
    lm, text = build(preset, batch, fused, weight_dtype)
    _, state = lm.prefill(text)
    tokens = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks))
    _, state = lm.step(tokens, state)  # warm-up: builds the fused kernel, touches the buffers
    start = time.perf_counter()
    for _ in range(steps):
        _, state = lm.step(tokens, state)
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "peak_rss_mib": peak_rss_mib()}


@torch.no_grad()
def run_forward(preset: str, batch: int, positions: int) -> dict:
    """One parallel forward over `positions` audio positions after the text."""
    lm, text = build(preset, batch)
    seq = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks, positions))
    lm(seq[..., :8], text)  # warm-up
    start = time.perf_counter()
    lm(seq, text)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "peak_rss_mib": peak_rss_mib()}


def in_process(kind: str, **kwargs) -> dict:
    """Run one measurement in a fresh process, so that its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_bandwidth_gbs(repeats: int = 5) -> float:
    """Bandwidth of a large streaming read: summing a 1 GiB fp32 tensor (best of `repeats`)."""
    big = torch.ones(2**28)
    big.sum()
    best = min(_timed(big.sum) for _ in range(repeats))
    return big.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bytes_per_step(lm: MusicLM, batch: int) -> int:
    """Bytes one step reads: every weight it multiplies by, plus the decoding state.

    The embedding tables contribute only the K rows looked up; the text projection is not used.
    """
    skip = {id(p) for m in (lm.embeddings, lm.text_proj, lm.text_norm) for p in m.parameters()}
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if id(p) not in skip)
    embedding_rows = lm.cfg.num_codebooks * lm.cfg.backbone.d_model * 4
    _, state = lm.prefill(torch.zeros(batch, 1, lm.cfg.text_dim))
    state_bytes = sum(
        t.numel() * t.element_size() for layer in state.backbone.layers for t in (layer.mixer.conv, layer.mixer.ssm)
    )
    return weights + embedding_rows + state_bytes


@torch.no_grad()
def bf16_logit_difference(steps: int = 32) -> float:
    """Largest |logit| difference between fp32 and bf16 weights, teacher-forced on the same tokens."""
    fp32, text = build("simba-300m", 2)
    bf16 = Generator(fp32, fused=True, weight_dtype=torch.bfloat16).lm
    tokens = torch.randint(0, fp32.cfg.cardinality, (steps, 2, fp32.cfg.num_codebooks))
    worst = 0.0
    (la, sa), (lb, sb) = fp32.prefill(text), bf16.prefill(text)
    for t in range(steps):
        worst = max(worst, (la - lb).abs().max().item())
        (la, sa), (lb, sb) = fp32.step(tokens[t], sa), bf16.step(tokens[t], sb)
    return worst


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 natively (Linux only; elsewhere, skip)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def worker(spec: dict) -> None:
    torch.set_num_threads(THREADS)
    kind = spec.pop("kind")
    if kind == "steps":
        dtype = torch.bfloat16 if spec.pop("bf16", False) else None
        result = run_steps(weight_dtype=dtype, **spec)
    elif kind == "forward":
        result = run_forward(**spec)
    else:
        raise ValueError(kind)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s clips and fewer steps: a smoke run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    torch.set_num_threads(THREADS)
    durations = [1.0] if args.quick else [5.0, 15.0, 30.0]
    short = 20 if args.quick else 200

    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {THREADS} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n"
    )
    print(
        "| clip | frames | (a) step: steps/s | (a) peak RSS | (b) forward per step | (b) peak RSS "
        "| (a)/(b) | (c) transformer KV: steps/s | (c) peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seconds in durations:
        frames = round(seconds * FRAME_RATE)
        a = in_process("steps", preset="simba-300m", batch=2, steps=frames)
        b = in_process("forward", preset="simba-300m", batch=2, positions=frames)
        c = in_process("steps", preset="transformer-300m", batch=2, steps=frames)
        speedup = b["seconds"] * a["steps_per_s"]
        print(
            f"| {seconds:.0f} s | {frames} | {a['steps_per_s']:.2f} | {a['peak_rss_mib']:.0f} MiB "
            f"| {b['seconds']:.2f} s | {b['peak_rss_mib']:.0f} MiB | {speedup:.0f}x "
            f"| {c['steps_per_s']:.2f} | {c['peak_rss_mib']:.0f} MiB |",
            flush=True,
        )

    positions = 256 if args.quick else 2048
    fwd = in_process("forward", preset="simba-300m", batch=2, positions=positions)
    eager = in_process("steps", preset="simba-300m", batch=2, steps=short, fused=False)
    rates, bandwidths = [], []
    for _ in range(3):  # interleave, so both see the same machine state
        bandwidths.append(read_bandwidth_gbs())
        rates.append(in_process("steps", preset="simba-300m", batch=2, steps=short)["steps_per_s"])
    rate, bandwidth = statistics.median(rates), statistics.median(bandwidths)
    steps_time = positions / rate
    print(
        f"\nforward over {positions} positions: {fwd['seconds']:.2f} s; {positions} steps: {steps_time:.2f} s "
        f"({steps_time / fwd['seconds']:.1f}x slower than forward)"
    )

    lm, _ = build("simba-300m", 2)
    nbytes = bytes_per_step(lm, 2)
    del lm
    streamed = nbytes * rate / 1e9
    print(
        f"step at batch 2, fp32: {rate:.2f} steps/s (eager reference: {eager['steps_per_s']:.2f}); "
        f"reads {nbytes / 1e9:.3f} GB per step = {streamed:.1f} GB/s; summing 1 GiB reads {bandwidth:.1f} GB/s "
        f"-> {100 * streamed / bandwidth:.0f}% of the read bandwidth"
    )

    b16 = in_process("steps", preset="simba-300m", batch=16, steps=max(short // 4, 10))
    b16_eager = in_process("steps", preset="simba-300m", batch=16, steps=max(short // 20, 5), fused=False)
    print(f"batch 16, fp32: {b16['steps_per_s']:.2f} steps/s (eager reference: {b16_eager['steps_per_s']:.2f})")

    if cpu_has_bf16():
        bf2 = in_process("steps", preset="simba-300m", batch=2, steps=short, bf16=True)
        bf16 = in_process("steps", preset="simba-300m", batch=16, steps=max(short // 4, 10), bf16=True)
        print(
            f"bf16 weights: {bf2['steps_per_s']:.2f} steps/s at batch 2, {bf16['steps_per_s']:.2f} at batch 16; "
            f"largest logit difference from fp32 over 32 steps: {bf16_logit_difference():.4f}"
        )


if __name__ == "__main__":
    main()
