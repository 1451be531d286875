"""Generation speed on a CUDA GPU: simba-300m against MusicGen's decoder, both with guidance.

The GPU twin of generate_speed.py (which is the CPU benchmark the issue's targets are about): the
same models, random weights and method, from its helpers, on one CUDA device in one process.

  simba-300m  our preset in fp32 and with bf16 Linear weights, stepping on the pure-PyTorch path
              (there is no CUDA code of our own); DAC frames, 86.13 per second of audio.
  graphed     the same fp32 step captured once in a CUDA graph and replayed (generation/cuda_graph.py,
              what `Generator` does on a GPU by default): the decoding state is the same tensors
              at every position (Mamba-2's step updates it in place), so one capture serves a
              whole clip. A KV cache grows at every step, so MusicGen cannot be captured like this.
              Also with the SSM state stored in bf16 between steps (`Generator(state_dtype=...)`).
  MusicGen    transformers' `MusicgenForCausalLM` shaped like musicgen-small, fp32 and bf16, with a
              random KV cache of the position's length; EnCodec frames, 50 per second of audio.

For each batch (rows: a prompt and its CFG twin are 2), steps/s at 0, 5, 10, 30, 60 and 120 s of
audio (the state or cache filled to that position first; the median of 5 timed blocks of `--steps`
steps, each synchronized), the peak GPU memory allocated while stepping there (the process keeps
every model it has built on the GPU, so compare a model's rows with each other, not across models),
and the wall-clock time and real-time factor of 10, 30 and 120 s clips, integrated over positions
as generate_speed.py does. Then one real 10 s generation at batch 2 of MusicGen and of ours, eager
and graphed (`Generator.generate`, sampling included), against the estimates. `--real-only` runs
just those.
TF32 stays at PyTorch's defaults (off for matmuls).

    python benchmarks/gpu_speed.py                  # batches 2 and 16, about 2 minutes on an H200
    python benchmarks/gpu_speed.py --quick          # positions up to 2 s, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from generate_speed import (
    GUIDANCE,
    MUSICGEN_FRAME_RATE,
    PRESET,
    TOP_K,
    clip_seconds,
    frames_at,
    musicgen,
    musicgen_generate,
)
from speed_common import FRAME_RATE, TEXT_TOKENS

from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator
from ssmttm.generation.cuda_graph import GraphedStep
from ssmttm.generation.sampling import SamplingConfig
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset

DEVICE = "cuda"
POSITIONS = [0, 5, 10, 30, 60, 120]
CLIPS = [10, 30, 120]
VARIANTS = [
    "simba-300m fp32",
    "simba-300m bf16 weights",
    "simba-300m fp32 graphed",
    "simba-300m graphed, bf16 state",
    "MusicGen fp32",
    "MusicGen bf16",
]
OURS = [v for v in VARIANTS if v.startswith("simba")]


def synced(fn: Callable[[], object], steps: int) -> float:
    """Seconds per step of `steps` calls of fn, timed between two device synchronizations."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


MODELS: dict[tuple[str, bool], torch.nn.Module] = {}  # each built once (seed 0) and kept on the GPU


def ours(batch: int, bf16: bool):
    """simba-300m with random weights (seed 0) on the GPU, and random text of 32 positions."""
    if ("ours", bf16) not in MODELS:
        torch.manual_seed(0)
        lm = MusicLM(load_preset(PRESET)).to(DEVICE)
        MODELS["ours", bf16] = Generator(lm, weight_dtype=torch.bfloat16 if bf16 else None).lm
    lm = MODELS["ours", bf16]
    return lm, torch.randn(batch, TEXT_TOKENS, lm.cfg.text_dim, device=DEVICE)


def their(bf16: bool):
    if ("musicgen", bf16) not in MODELS:
        MODELS["musicgen", bf16] = musicgen(bf16).to(DEVICE)
    return MODELS["musicgen", bf16]


@torch.no_grad()
def measure(variant: str, batch: int, seconds: float, steps: int) -> dict:
    torch.cuda.empty_cache()
    if variant.startswith("simba"):
        lm, text = ours(batch, "bf16 weights" in variant)
        _, state = lm.prefill(Conditioning(text))  # the state's size does not depend on the position: no filling needed
        if "bf16 state" in variant:
            state = state.with_recurrent_dtype(torch.bfloat16)
        tokens = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks), device=DEVICE)
        torch.cuda.reset_peak_memory_stats()
        if "graphed" in variant:
            graphed = GraphedStep(lm, state, tokens)  # what Generator replays on a GPU

            def step():
                graphed(tokens)
        else:

            def step():
                lm.step(tokens, state)
    else:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        mg = their("bf16" in variant)
        config, dtype = mg.config, mg.dtype
        heads, frames = config.num_attention_heads, frames_at(seconds, MUSICGEN_FRAME_RATE)
        shape = (batch, heads, frames, config.hidden_size // heads)
        text = torch.randn(batch, TEXT_TOKENS, config.hidden_size, dtype=dtype, device=DEVICE)
        cross = torch.randn(batch, heads, TEXT_TOKENS, shape[-1], dtype=dtype, device=DEVICE)
        layers = range(config.num_hidden_layers)
        cache = EncoderDecoderCache(
            DynamicCache((torch.randn(shape, dtype=dtype, device=DEVICE),) * 2 for _ in layers),
            DynamicCache((cross, cross) for _ in layers),
        )
        ids = torch.randint(0, config.vocab_size, (batch * config.num_codebooks, 1), device=DEVICE)
        torch.cuda.reset_peak_memory_stats()

        def step():
            mg(input_ids=ids, encoder_hidden_states=text, cache=cache, use_cache=True)

        # the cache grows one position per step: keep the timed steps a small part of the length
        steps = min(steps, max(5, frames // 20))
    for _ in range(3):
        step()
    per_step = statistics.median(synced(step, steps) for _ in range(5))
    return {"steps_per_s": 1 / per_step, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


@torch.no_grad()
def real_generation(variant: str, seconds: float) -> float:
    """Wall-clock seconds of one real generation at batch 2 (a prompt and its CFG twin)."""
    if variant.startswith("simba"):
        lm, text = ours(1, "bf16 weights" in variant)
        state_dtype = torch.bfloat16 if "bf16 state" in variant else None
        generator = Generator(lm, cuda_graph="graphed" in variant, state_dtype=state_dtype)
        sampling = SamplingConfig(cfg_scale=GUIDANCE, top_k=TOP_K)
        frames = frames_at(seconds, FRAME_RATE)
        generator.generate(Conditioning(text), 8, sampling=sampling, seed=0)  # warm-up: CUDA's first kernels
        torch.cuda.synchronize()
        start = time.perf_counter()
        generator.generate(Conditioning(text), frames, sampling=sampling, seed=0)
    else:
        mg = their("bf16" in variant)
        config = mg.config
        text = torch.randn(2, TEXT_TOKENS, config.hidden_size, dtype=mg.dtype, device=DEVICE)
        bos = torch.full((config.num_codebooks, 1), config.bos_token_id, device=DEVICE)
        musicgen_generate(mg, bos, text, 8)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        musicgen_generate(mg, bos, text, frames_at(seconds, MUSICGEN_FRAME_RATE))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def frame_rate(variant: str) -> float:
    return FRAME_RATE if variant.startswith("simba") else MUSICGEN_FRAME_RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="positions up to 2 s and 1 s clips: a smoke run")
    parser.add_argument("--batch", default="2,16", help="comma-separated batch sizes (rows, even)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block")
    parser.add_argument("--positions", help="comma-separated seconds of audio (default 0,5,10,30,60,120)")
    parser.add_argument("--real-only", action="store_true", help="only the real generations, without estimates")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "gpu_speed.py: torch sees no CUDA device; generate_speed.py measures the CPU\n")
    positions, clips, check = ([0, 0.5, 1, 2], [1, 2], 1) if args.quick else (POSITIONS, CLIPS, 10)
    batches = [int(b) for b in args.batch.split(",")]
    if args.positions:
        positions = [float(p) for p in args.positions.split(",")]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{PRESET} at {FRAME_RATE} frames/s against MusicGen (musicgen-small's shape) at {MUSICGEN_FRAME_RATE:g}")
    print("random weights, CFG rows in the batch; x real time = audio seconds of all prompts per wall-clock second\n")
    estimates: dict[tuple[int, str, float], float | None] = {}
    for batch in [] if args.real_only else batches:
        found: dict[str, dict[float, dict | str]] = {v: {} for v in VARIANTS}
        for seconds in positions:
            for v in VARIANTS:
                try:
                    found[v][seconds] = measure(v, batch, seconds, args.steps)
                except Exception as err:  # out of memory, or a capture that fails: the cell says why
                    found[v][seconds] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
        print(f"batch {batch}\n")
        print("| model | frames/s | " + " | ".join(f"steps/s at {p:g} s" for p in positions) + " |")
        print("|---|---|" + "---|" * len(positions))
        for v, row in found.items():
            cells = [m if isinstance(m, str) else f"{m['steps_per_s']:.1f}" for m in row.values()]
            print(f"| {v} | {frame_rate(v):g} | " + " | ".join(cells) + " |")
        print("\n| model | clip | steps/s at its length | wall-clock (estimated) | x real time | peak GPU memory |")
        print("|---|---|---|---|---|---|")
        for v, row in found.items():
            rates = {p: None if isinstance(m, str) else m["steps_per_s"] for p, m in row.items()}
            for clip in clips:
                wall, at = clip_seconds(rates, frame_rate(v), clip), row.get(clip)
                estimates[batch, v, clip] = wall
                if wall is None or isinstance(at, str) or at is None:
                    print(f"| {v} | {clip:g} s | - | - | - | - |")
                    continue
                realtime = batch // 2 * clip / wall
                print(
                    f"| {v} | {clip:g} s | {at['steps_per_s']:.1f} | {wall:.2f} s | {realtime:.1f} "
                    f"| {at['peak_gib']:.2f} GiB |"
                )
        print(flush=True)
    print(f"one real {check:g} s generation at batch 2 (ours: Generator.generate), against the estimate\n")
    print("| model | real wall-clock | estimated | real / estimated |")
    print("|---|---|---|---|")
    for v in ("simba-300m fp32", "simba-300m fp32 graphed", "simba-300m graphed, bf16 state", "MusicGen fp32"):
        try:
            real = real_generation(v, check)
        except Exception as err:
            print(f"| {v} | failed: {type(err).__name__}: {str(err).splitlines()[0][:80]} | - | - |")
            continue
        estimate = estimates.get((2, v, check))
        cells = ("-", "-") if estimate is None else (f"{estimate:.2f} s", f"{real / estimate:.2f}")
        print(f"| {v} | {real:.2f} s | {cells[0]} | {cells[1]} |", flush=True)
    if args.real_only:
        return
    mid, long = clips[1], clips[-1]
    print("\nratios (the issue's CPU targets, read on this GPU):")
    for batch in batches:
        theirs = estimates.get((batch, "MusicGen fp32", mid)), estimates.get((batch, "MusicGen fp32", long))
        for v in OURS:
            mine = estimates.get((batch, v, mid)), estimates.get((batch, v, long))
            cells = [
                f"{t / m:.2f}x at {c:g} s" if m and t else f"- at {c:g} s"
                for m, t, c in zip(mine, theirs, (mid, long), strict=True)
            ]
            print(f"  batch {batch}, {v} against MusicGen fp32: " + ", ".join(cells))


if __name__ == "__main__":
    main()
