"""How fast the two-stage model generates against the single-stage one: wall-clock time for 10 s
and 60 s of audio at batch 2, stage 1 and stage 2 apart, on the CPU.

    python benchmarks/two_stage_speed.py --two-stage models/demo-two-stage [--single MODEL] [--repeats 2]

Both models come from their folders with their own defaults (the two-stage one at its stored
diffusion steps and guidance); each duration runs once to warm up, then `--repeats` times, and the
median is reported. The LM is `generate_codes`, the whole is `generate`, and the rendering (stage 2 with the
codec's decode, or the decode alone) is the renderer timed on its own, on the LM's codes for the
same prompts; each run generates the same prompt pair and seed.
The first audio of a stream is the time `stream` takes to yield its first chunk: for the two-stage
model, one window of stage-1 frames and its diffusion, the latency streaming adds.
Target (issue 26): the two-stage demo faster than real time on 2 cores, stage 2 included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from speed_common import THREADS, machine_line

from ssmttm import DEMO_MODEL
from ssmttm.generation.pipeline import TextToMusic

PROMPTS = ["a calm jazz piece with a saxophone lead at 90 BPM", "an upbeat funk groove with an organ at 112 BPM"]


def timed(call, repeats: int) -> float:
    call()  # warm-up: first kernels, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def rendering(model: TextToMusic, seconds: float):
    """The renderer alone, as `generate` calls it, on codes the LM made once."""
    codes, cond = model._codes(PROMPTS, seconds, 0, None, None, False)
    request = model._request(cond, 0, None, None)
    codes = codes[:, : model.renderer.codebooks]
    return lambda: model.renderer.render(codes, request)


def first_chunk(model: TextToMusic, seconds: float) -> float:
    start = time.perf_counter()
    stream = model.stream(PROMPTS, seconds, seed=0)
    next(iter(stream))
    elapsed = time.perf_counter() - start
    stream.close()  # a generator: closing it stops the rest of the piece
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--two-stage", required=True, help="a two-stage model folder")
    parser.add_argument("--single", default=str(DEMO_MODEL), help="the single-stage model to compare with")
    parser.add_argument("--durations", default="10,60")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(THREADS)
    print(machine_line())
    print(
        "| model | audio | stage 1 (the LM) | rendering (stage 2 and the codec, or the codec) | whole | x real time "
        "| first audio of a stream |"
    )
    print("|---|---|---|---|---|---|---|")
    met = True
    for name, folder in (("single-stage", args.single), ("two-stage", args.two_stage)):
        model = TextToMusic.from_pretrained(folder)
        for seconds in [float(d) for d in args.durations.split(",")]:
            whole = timed(lambda: model.generate(PROMPTS, seconds, seed=0), args.repeats)  # noqa: B023
            codes = timed(lambda: model.generate_codes(PROMPTS, seconds, seed=0), args.repeats)  # noqa: B023
            render = timed(rendering(model, seconds), args.repeats)
            first = timed(lambda: first_chunk(model, seconds), args.repeats)  # noqa: B023
            speed = seconds / whole
            print(
                f"| {name} | 2 x {seconds:g} s | {codes:.1f} s | {render:.1f} s | {whole:.1f} s | {speed:.2f} "
                f"| {first:.1f} s |"
            )
            if model.two_stage:
                met &= speed > 1
    print(f"target (two-stage faster than real time at batch 2): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
