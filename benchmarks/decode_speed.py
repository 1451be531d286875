"""Decoding speed and memory of simba-300m on the CPU: constant-time steps against the alternatives.

Sections (all by default; `--sections table,forward` picks some):
  table      at 5 s, 15 s and 30 s of audio (86.13 frames/s, batch 2 = one prompt and its CFG twin):
             (a) our constant-time `step` (with the CPU kernels), run for every frame of the clip;
             (b) re-running the parallel `forward` over the whole sequence at every step, as the
                 authors' release decodes: measured as one `forward` over that many positions,
                 its cost per step there;
             (c) transformer-300m decoding with its KV cache, run for every frame of the clip.
             Each measurement runs in its own process, so peak RSS is that length's own.
  forward    `forward` over 2048 positions against 2048 `step` calls.
  bandwidth  the bytes a step reads (weights and state) per second, over the bandwidth of
             summing a 1 GiB tensor, measured interleaved in the same run; and the same step with
             SiMBA blocks run op by op instead of in one `block_step` call.
  batch16    steps/s at batch 16.
  bf16       the bf16-weight path (CPUs with AVX512-BF16 or AMX): speed (also op by op, as
             above), and its largest logit difference from fp32.
  ablations  what the CPU-specific choices buy: the matmul form for decoding, the bf16 kernel,
             and the allocator setting, each against its alternative.
  mamba3     simba3-300m (Mamba-3 blocks, half the state) against simba-300m at batch 2 and 16, fp32
             and bf16 (weights and SSM state): steps/s, the bytes a step reads, and the ceiling
             ratio: simba-300m's bytes over simba3-300m's, the speedup a step bound by memory
             traffic would show. The two decode in one process, five steps of each in turn. Then
             the issue's targets at batch 16 in bf16 (at least 1.3x, and at least 85% of the
             ceiling ratio), where that step's time goes (its Linears, its mixers' fused steps,
             the rest), and the speedup that tuning the Mamba-3 step alone could reach.
  release    simba-300m as an imported authors' checkpoint runs (`ssmttm import-release`): the
             release's text mode (a 60-token prefix, the text mask ignored) and sinusoidal
             positions; steps/s at batch 2, in fp32 and with int8 and int4 weights (a bf16
             state), each as x real time against issue 28's target (int4 at least 0.6x).

All runs use 2 threads and random weights.

    python benchmarks/decode_speed.py            # everything (about 20 minutes, and 4 more for mamba3)
    python benchmarks/decode_speed.py --quick    # 1 s clips and fewer steps, a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from speed_common import (
    FRAME_RATE,
    TEXT_TOKENS,
    THREADS,
    build,
    bytes_per_step,
    chosen_sections,
    cpu_has_bf16,
    in_process,
    machine_line,
    peak_rss_mib,
    read_bandwidth_gbs,
    rss_mib,
    state_bytes,
    timed,
    worker,
)

from ssmttm.backbones.mamba2 import Mamba2, Mamba2BlockKernel
from ssmttm.backbones.mamba3 import Mamba3
from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator
from ssmttm.ops.linear import cast_linear_weights, linear
from ssmttm.ops.mamba2_step import mamba2_step_fused
from ssmttm.ops.mamba3_step import mamba3_step_fused

EAGER = {"SSMTTM_NO_CPU_KERNELS": "1"}  # the pure-PyTorch reference path
SECTIONS = ["table", "forward", "bandwidth", "batch16", "bf16", "ablations", "mamba3", "release"]
# What an imported release model differs from simba-300m in (tests/test_release.py checks it).
RELEASE_MODE = ["positions=sinusoidal", "text_mask=ignore"]
RELEASE_PREFIX = 60  # the release pads every caption batch to at least 60 T5 tokens (text/release.py)


@torch.no_grad()
def run_steps(
    preset: str,
    batch: int,
    steps: int,
    bf16: bool = False,
    overrides: list[str] | None = None,
    text_tokens: int = TEXT_TOKENS,
    block_kernel: bool = True,
    quant: str | None = None,
    bf16_state: bool = False,
) -> dict:
    """Prefill the text, then `steps` decoding steps; steps/s over all of them, and memory.
    `block_kernel=False` runs SiMBA blocks op by op (each op's own kernel still runs), as before
    `block_step` (ops/cpu_kernels.cpp) existed; it runs in a worker process of its own. `quant`
    "int8" or "int4" packs the Linear weights; `bf16_state` stores the state in bf16."""
    if not block_kernel:
        Mamba2BlockKernel.applies = lambda *_: False
    lm, text = build(preset, batch, quant or (torch.bfloat16 if bf16 else None), overrides, text_tokens)
    start = time.perf_counter()
    _, state = lm.prefill(Conditioning(text))
    prefill_s = time.perf_counter() - start
    if bf16_state:
        state = state.with_recurrent_dtype(torch.bfloat16)
    tokens = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks))
    for _ in range(3):  # warm-up: builds the kernels, touches the buffers
        _, state = lm.step(tokens, state)
    rss_start = rss_mib()
    start = time.perf_counter()
    for _ in range(steps):
        _, state = lm.step(tokens, state)
    elapsed = time.perf_counter() - start
    return {
        "steps_per_s": steps / elapsed,
        "peak_rss_mib": peak_rss_mib(),
        "rss_growth_mib": rss_mib() - rss_start,
        "prefill_s": prefill_s,
    }


@torch.no_grad()
def run_forward(preset: str, batch: int, positions: int) -> dict:
    """One parallel forward over `positions` audio positions after the text."""
    lm, text = build(preset, batch)
    seq = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks, positions))
    lm(seq[..., :8], Conditioning(text))  # warm-up
    start = time.perf_counter()
    lm(seq, Conditioning(text))
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}


@torch.no_grad()
def run_matmul_forms(batch: int = 2, repeats: int = 3) -> dict:
    """GB/s at which each form of a decoding matmul streams simba-300m's Linear weights."""
    lm, _ = build("simba-300m", batch)
    layers = [m for m in lm.modules() if isinstance(m, torch.nn.Linear) and m is not lm.text_proj]
    inputs = {id(m): torch.randn(batch, m.in_features) for m in layers}
    transposed = {k: v.T.contiguous().T for k, v in inputs.items()}  # same values, column-major

    def rate(fn, weights_bytes):
        fn()
        return weights_bytes / min(timed(fn) for _ in range(repeats)) / 1e9

    fp32_bytes = sum(m.weight.numel() * 4 for m in layers)
    result = {
        "fp32 F.linear": rate(lambda: [F.linear(inputs[id(m)], m.weight) for m in layers], fp32_bytes),
        "fp32 W @ x.T": rate(lambda: [m.weight @ inputs[id(m)].T for m in layers], fp32_bytes),
        "fp32 W @ x.T with x transposed": rate(lambda: [m.weight @ transposed[id(m)].T for m in layers], fp32_bytes),
        "fp32 our kernel": rate(lambda: [linear(inputs[id(m)], m) for m in layers], fp32_bytes),
    }
    cast_linear_weights(lm, torch.bfloat16)
    bf16 = {id(m): (inputs[id(m)].bfloat16(), m.weight) for m in layers}
    result["bf16 F.linear"] = rate(lambda: [F.linear(x, w) for x, w in bf16.values()], fp32_bytes / 2)
    result["bf16 our kernel"] = rate(lambda: [linear(inputs[id(m)], m) for m in layers], fp32_bytes / 2)
    result["sum of 1 GiB"] = read_bandwidth_gbs()
    return result


@torch.no_grad()
def bf16_logit_difference(steps: int = 32) -> float:
    """Largest |logit| difference between fp32 and bf16 weights, teacher-forced on the same tokens."""
    fp32, text = build("simba-300m", 2)
    bf16 = Generator(fp32, weight_dtype=torch.bfloat16).lm
    tokens = torch.randint(0, fp32.cfg.cardinality, (steps, 2, fp32.cfg.num_codebooks))
    worst = 0.0
    (la, sa), (lb, sb) = fp32.prefill(Conditioning(text)), bf16.prefill(Conditioning(text))
    for t in range(steps):
        worst = max(worst, (la - lb).abs().max().item())
        (la, sa), (lb, sb) = fp32.step(tokens[t], sa), bf16.step(tokens[t], sb)
    return worst


def section_table(durations: list[float]) -> None:
    print(
        "| clip | frames | (a) step: steps/s | (a) peak RSS | (a) RSS growth during the run "
        "| (b) forward per step | (b) peak RSS | (a) vs (b) | (c) transformer KV: steps/s | (c) peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seconds in durations:
        frames = round(seconds * FRAME_RATE)
        a = in_process("steps", preset="simba-300m", batch=2, steps=frames)
        b = in_process("forward", preset="simba-300m", batch=2, positions=frames)
        c = in_process("steps", preset="transformer-300m", batch=2, steps=frames)
        print(
            f"| {seconds:.0f} s | {frames} | {a['steps_per_s']:.2f} | {a['peak_rss_mib']:.0f} MiB "
            f"| {a['rss_growth_mib']:+.1f} MiB | {b['seconds']:.2f} s | {b['peak_rss_mib']:.0f} MiB "
            f"| {b['seconds'] * a['steps_per_s']:.0f}x faster | {c['steps_per_s']:.2f} "
            f"| {c['peak_rss_mib']:.0f} MiB |",
            flush=True,
        )


def section_forward(positions: int) -> None:
    fwd = in_process("forward", preset="simba-300m", batch=2, positions=positions)
    steps = in_process("steps", preset="simba-300m", batch=2, steps=positions)
    steps_seconds = positions / steps["steps_per_s"]
    print(
        f"forward over {positions} positions: {fwd['seconds']:.2f} s; {positions} steps: {steps_seconds:.2f} s; "
        f"forward is {steps_seconds / fwd['seconds']:.1f}x faster",
        flush=True,
    )


def section_bandwidth(steps: int) -> None:
    lm, _ = build("simba-300m", 2)
    nbytes = bytes_per_step(lm, 2)
    del lm
    rates, bandwidths = [], []
    for _ in range(3):  # interleaved, so both see the same machine
        bandwidths.append(read_bandwidth_gbs())
        rates.append(in_process("steps", preset="simba-300m", batch=2, steps=steps)["steps_per_s"])
    rate, bandwidth = statistics.median(rates), statistics.median(bandwidths)
    eager = in_process("steps", env=EAGER, preset="simba-300m", batch=2, steps=steps)["steps_per_s"]
    unfused = in_process("steps", preset="simba-300m", batch=2, steps=steps, block_kernel=False)["steps_per_s"]
    streamed = nbytes * rate / 1e9
    print(
        f"batch 2, fp32: {rate:.2f} steps/s (blocks op by op: {unfused:.2f}; eager PyTorch reference: "
        f"{eager:.2f}); a step reads "
        f"{nbytes / 1e9:.3f} GB, so {streamed:.1f} GB/s; summing 1 GiB reads {bandwidth:.1f} GB/s; "
        f"(a) streams {100 * streamed / bandwidth:.0f}% of the read bandwidth",
        flush=True,
    )


def section_batch16(steps: int) -> None:
    rate = in_process("steps", preset="simba-300m", batch=16, steps=steps)["steps_per_s"]
    eager = in_process("steps", env=EAGER, preset="simba-300m", batch=16, steps=max(steps // 5, 3))["steps_per_s"]
    print(f"batch 16, fp32: {rate:.2f} steps/s (eager PyTorch reference: {eager:.2f})", flush=True)


def section_bf16(steps: int) -> None:
    if not cpu_has_bf16():
        print("bf16: this CPU has neither AVX512-BF16 nor AMX; skipped")
        return
    b2 = in_process("steps", preset="simba-300m", batch=2, steps=steps, bf16=True)["steps_per_s"]
    unfused = in_process("steps", preset="simba-300m", batch=2, steps=steps, bf16=True, block_kernel=False)
    b16 = in_process("steps", preset="simba-300m", batch=16, steps=max(steps // 4, 5), bf16=True)["steps_per_s"]
    print(
        f"bf16 weights: {b2:.2f} steps/s at batch 2 (blocks op by op: {unfused['steps_per_s']:.2f}), "
        f"{b16:.2f} at batch 16; largest logit difference "
        f"from fp32 over 32 teacher-forced steps: {bf16_logit_difference():.4f}",
        flush=True,
    )


def section_ablations(positions: int) -> None:
    forms = in_process("matmul", batch=2)
    print(
        "weight streaming at batch 2 (simba-300m's Linear weights, GB/s): "
        + ", ".join(f"{name} {gbs:.1f}" for name, gbs in forms.items())
    )
    tuned = in_process("forward", preset="simba-300m", batch=2, positions=positions)["seconds"]
    kept = in_process("forward", env={"SSMTTM_KEEP_MALLOC": "1"}, preset="simba-300m", batch=2, positions=positions)
    print(
        f"forward over {positions} positions: {tuned:.2f} s with the allocator setting, "
        f"{kept['seconds']:.2f} s without (SSMTTM_KEEP_MALLOC=1)",
        flush=True,
    )


def fused_mixer_step(mixer: Mamba2 | Mamba3, zx: torch.Tensor, state) -> torch.Tensor:
    """What a mixer's step runs between in_proj and out_proj: its fused CPU kernel."""
    if isinstance(mixer, Mamba3):
        return mamba3_step_fused(zx, state.angle, state.ssm, state.k, state.v, mixer.weights())
    weights = (mixer.conv1d.weight, mixer.conv1d.bias, mixer.dt_bias, mixer.A_log, mixer.D, mixer.norm.weight)
    return mamba2_step_fused(zx, state.conv, *weights, state.ssm, mixer.cfg.ngroups, mixer.norm.eps)


class TimedLinear:
    """Stands in for ops/linear.py's `F`: its `linear` calls timed, everything else passed through."""

    def __init__(self, functional) -> None:
        self.functional, self.seconds = functional, 0.0

    def __getattr__(self, name: str):
        return getattr(self.functional, name)

    def linear(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.functional.linear(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


@torch.no_grad()
def run_interleaved(presets: list[str], batch: int, steps: int, bf16: bool, chunk: int = 5) -> dict:
    """Steps/s of several presets decoding in one process, `chunk` steps of each in turn, so that
    whatever else the machine does falls on all of them alike (the weights and SSM state in bf16
    with `bf16`), and the bytes a step reads (all, and the SSM state's). Also, where every Linear
    is one `F.linear` call (bf16 weights, more rows than the block kernels take), where a step's
    time goes: its Linears, and its mixers' fused steps alone."""
    from ssmttm.ops import cpu_kernels
    from ssmttm.ops import linear as linear_module

    dtype = torch.bfloat16 if bf16 else None
    models = {}
    for preset in presets:
        lm, text = build(preset, batch, dtype)
        _, state = lm.prefill(Conditioning(text))
        if bf16:
            state = state.with_recurrent_dtype(torch.bfloat16)
        tokens = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks))
        for _ in range(3):
            lm.step(tokens, state)
        models[preset] = (lm, state, tokens)
    parts = bf16 and batch > cpu_kernels.linear_max_rows()
    timer = TimedLinear(linear_module.F)
    if parts:
        linear_module.F = timer
    seconds = {p: 0.0 for p in presets}
    linear_s = {p: 0.0 for p in presets}
    for _ in range(max(steps // chunk, 1)):
        for preset, (lm, state, tokens) in models.items():
            timer.seconds = 0.0
            start = time.perf_counter()
            for _ in range(chunk):
                lm.step(tokens, state)
            seconds[preset] += time.perf_counter() - start
            linear_s[preset] += timer.seconds
    linear_module.F = timer.functional
    done = max(steps // chunk, 1) * chunk
    result = {
        p: {
            "steps_per_s": done / seconds[p],
            "bytes": bytes_per_step(lm, batch, dtype),
            "state_bytes": state_bytes(lm, batch, dtype),
        }
        for p, (lm, _, _) in models.items()
    }
    if parts:
        for preset, (lm, state, _) in models.items():
            pairs = [(layer.mixer, s.mixer) for layer, s in zip(lm.backbone.layers, state.backbone.layers, strict=True)]
            inputs = [torch.randn(batch, mixer.in_proj.out_features) * 0.5 for mixer, _ in pairs]

            def mixers(pairs=pairs, inputs=inputs) -> None:
                for (mixer, mixer_state), zx in zip(pairs, inputs, strict=True):
                    fused_mixer_step(mixer, zx, mixer_state)

            mixers()
            result[preset] |= {
                "step_s": seconds[preset] / done,
                "linear_s": linear_s[preset] / done,
                "mixer_s": timed(lambda mixers=mixers: [mixers() for _ in range(chunk)]) / chunk,
            }
    return result


def section_mamba3(steps: int) -> None:
    presets = ("simba-300m", "simba3-300m")
    dtypes = [False, True] if cpu_has_bf16() else [False]
    if len(dtypes) == 1:
        print("mamba3: this CPU has neither AVX512-BF16 nor AMX; bf16 rows skipped")
    print(
        "| batch | weights and state | simba-300m steps/s | simba3-300m steps/s | speedup | "
        "MB a step reads (simba / simba3) | ceiling ratio | speedup / ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|")
    verdicts, parts = [], None
    for batch in (2, 16):
        for bf16 in dtypes:
            n = steps if batch == 2 else max(steps // 4, 5)
            run = in_process("interleaved", presets=list(presets), batch=batch, steps=n, bf16=bf16)
            rates = {p: run[p]["steps_per_s"] for p in presets}
            if batch == 16 and bf16:
                parts = run
            nbytes = {p: run[p]["bytes"] for p in presets}
            speedup = rates["simba3-300m"] / rates["simba-300m"]
            ceiling = nbytes["simba-300m"] / nbytes["simba3-300m"]
            dtype = "bf16" if bf16 else "fp32"
            print(
                f"| {batch} | {dtype} | {rates['simba-300m']:.2f} | {rates['simba3-300m']:.2f} | {speedup:.2f}x | "
                f"{nbytes['simba-300m'] / 1e6:.0f} / {nbytes['simba3-300m'] / 1e6:.0f} | {ceiling:.2f}x | "
                f"{100 * speedup / ceiling:.0f}% |",
                flush=True,
            )
            if batch == 16 and bf16:
                verdicts = [
                    f"target (simba3-300m at least 1.3x simba-300m, batch 16, bf16): {speedup:.2f}x, "
                    + ("met" if speedup >= 1.3 else "NOT met"),
                    f"target (at least 85% of the ceiling ratio {ceiling:.2f}x): {100 * speedup / ceiling:.0f}%, "
                    + ("met" if speedup >= 0.85 * ceiling else "NOT met"),
                ]
    for line in verdicts:
        print(line)
    if parts is None:
        return
    print("\nbatch 16, bf16, where a step's time goes (ms):")
    print("| preset | step | its Linears | its mixers' fused steps | the rest | SSM state MB |")
    print("|---|---|---|---|---|---|")
    for p in presets:
        part = parts[p]
        rest = part["step_s"] - part["linear_s"] - part["mixer_s"]
        print(
            f"| {p} | {1e3 * part['step_s']:.1f} | {1e3 * part['linear_s']:.1f} | {1e3 * part['mixer_s']:.1f} | "
            f"{1e3 * rest:.1f} | {part['state_bytes'] / 1e6:.0f} |"
        )
    # What tuning Mamba-3's own step can reach: simba-300m's step with its Linears replaced by
    # simba3-300m's (as measured) and its mixers' time scaled by the state's bytes, i.e. Mamba-3's
    # step as fast per byte as Mamba-2's, and the rest of the step costing what it costs simba-300m.
    a, b = parts["simba-300m"], parts["simba3-300m"]
    best = (
        a["step_s"] - a["linear_s"] + b["linear_s"] - a["mixer_s"] + a["mixer_s"] * b["state_bytes"] / a["state_bytes"]
    )
    print(
        f"reachable by tuning the mixer alone (simba-300m's step with simba3-300m's Linears and its "
        f"mixers at Mamba-2's time per state byte): {a['step_s'] / best:.2f}x, against the measured "
        f"{a['step_s'] / b['step_s']:.2f}x"
    )


def section_release(steps: int) -> None:
    """Release mode, and our default mode run beside it, so both see the same machine load."""
    release = in_process(
        "steps", preset="simba-300m", batch=2, steps=steps, overrides=RELEASE_MODE, text_tokens=RELEASE_PREFIX
    )
    ours = in_process("steps", preset="simba-300m", batch=2, steps=steps)
    print(
        f"simba-300m in release mode ({RELEASE_PREFIX}-token prefix, sinusoidal positions, text mask ignored), "
        f"batch 2, fp32: {release['steps_per_s']:.2f} steps/s over {steps} steps, "
        f"prefill {release['prefill_s']:.2f} s, "
        f"peak RSS {release['peak_rss_mib']:.0f} MiB, RSS growth {release['rss_growth_mib']:+.1f} MiB; "
        f"our mode ({TEXT_TOKENS}-token prefix, no positions) in the same run: {ours['steps_per_s']:.2f} steps/s",
        flush=True,
    )
    # One prompt with its CFG twin: a second of audio is FRAME_RATE steps (the delay pattern's 3 aside).
    print(f"\nthe release model at batch 2 (one prompt and its CFG twin), x real time = steps/s / {FRAME_RATE}:")
    print("| weights, state | steps/s | x real time |")
    print("|---|---|---|")
    print(f"| fp32, fp32 | {release['steps_per_s']:.2f} | {release['steps_per_s'] / FRAME_RATE:.2f} |")
    rates = {}
    for quant in ("int8", "int4"):
        found = in_process(
            "steps",
            preset="simba-300m",
            batch=2,
            steps=steps,
            overrides=RELEASE_MODE,
            text_tokens=RELEASE_PREFIX,
            quant=quant,
            bf16_state=True,
        )
        rates[quant] = found["steps_per_s"] / FRAME_RATE
        print(f"| {quant}, bf16 | {found['steps_per_s']:.2f} | {rates[quant]:.2f} |", flush=True)
    met = "met" if rates["int4"] >= 0.6 else "NOT met"
    print(f"target: the release model with int4 weights at least 0.6x real time: {rates['int4']:.2f}x: {met}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s clips and fewer steps: a smoke run")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            {
                "steps": run_steps,
                "forward": run_forward,
                "matmul": run_matmul_forms,
                "interleaved": run_interleaved,
            },
            json.loads(args.worker),
        )
        return
    torch.set_num_threads(THREADS)
    sections = chosen_sections(parser, args.sections, SECTIONS)
    steps = 20 if args.quick else 200
    positions = 256 if args.quick else 2048
    print(machine_line() + "\n")
    if "table" in sections:
        section_table([1.0] if args.quick else [5.0, 15.0, 30.0])
        print()
    if "forward" in sections:
        section_forward(positions)
    if "bandwidth" in sections:
        section_bandwidth(steps)
    if "batch16" in sections:
        section_batch16(steps // 4)
    if "bf16" in sections:
        section_bf16(steps)
    if "ablations" in sections:
        section_ablations(positions)
    if "mamba3" in sections:
        section_mamba3(steps)
    if "release" in sections:
        section_release(steps)


if __name__ == "__main__":
    main()
