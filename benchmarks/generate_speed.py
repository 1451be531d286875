"""Generation speed on the CPU: simba-300m against MusicGen's decoder, both with classifier-free guidance.

  simba-300m  our preset, in fp32 and with bf16 Linear weights (`Generator(lm, weight_dtype=torch.bfloat16)`),
              each also with its SSM state stored in bf16 between steps (`state_dtype=torch.bfloat16`);
              and with int8 and int4 weights (`Generator(lm, quantize="int8")`, ops/quantize.py), each
              with a bf16 state, as `--precision int8` decodes; DAC frames, 86.13 per second of audio.
  MusicGen    transformers' `MusicgenForCausalLM` shaped like musicgen-small (hidden 1024, 24 layers,
              16 heads, FFN 4096, 4 codebooks of 2048) cross-attending to 32 text positions, in fp32
              (its default) and bf16; and at the fastest CPU setting transformers offers it, bf16
              with SDPA attention and a static cache (its KV cache allocated once, at the clip's
              length); EnCodec frames, 50 per second of audio.

Random weights, 2 threads, the cond and uncond rows of CFG in one batch: batch counts rows, so
batch 2 is one prompt and its unconditional twin. A step is one decoding position (`MusicLM.step`,
or MusicGen's forward over one column with its KV cache); a clip of n frames takes n + 3 steps
(the delay pattern over 4 codebooks), so at equal steps/s a clip takes us 1.72x MusicGen's time.

Sections (all by default; `--sections table,flat` picks some):
  table  steps/s at 0, 5, 10, 30, 60 and 120 s of audio, each in its own process with the cache or
         state filled to that position first:
           MusicGen: an `EncoderDecoderCache` whose self-attention layers hold random keys and
             values of that length (a step's cost depends on the cache's size, not its values) and
             whose cross-attention layers hold the text's, as after its first step;
           simba-300m: the state has the same size at every position, so the text is prefilled, the
             state's position counter set to the position, and 20 steps run before the timed ones.
         Then, at 10, 30 and 120 s: the clip's wall-clock time, the sum over its steps of the time
         per step interpolated linearly between the measured positions; x real time; and the peak
         RSS of the process that measured at that length, counted from after the model was built
         (building leaves transient copies, the fp32 original of a bf16 model among them).
         A MusicGen position whose cache would not fit in memory is skipped (batch 16 at 120 s
         in fp32 needs 19 GB), and its longer clips get no estimate.
  check  one real 10 s generation of each at the first `--batch`, timed end to end, against that
         estimate: our `Generator.generate`, and MusicGen's own `generate` (top-k 250 and guidance
         3 for both).
  ceiling  the fastest our step could be on this machine: the bytes one step reads (every weight it
         multiplies by, the K embedding rows, the SSM and conv state; `speed_common.bytes_per_step`)
         over the bandwidth of summing 1 GiB, the highest of the samples taken before and after
         each batch's table and in this section (a VM's bandwidth drifts). A second, tighter
         ceiling counts the state's write-back too: a step updates the whole SSM state in place,
         and scaling 1 GiB in place gives the bandwidth of such an update. Each ratio target then
         also says the most it could reach at either speed, against MusicGen's time from the
         table: a target above them cannot be met on this machine by a faster kernel, only by
         moving fewer bytes per step.
  flat   simba-300m at batch 2 in fp32, decoded without a shortcut: one process steps from the text
         to 120 s, and the median step of the 200 starting at each position gives its steps/s.
Then one line per target of the issue, met or NOT met; the first (our time per step at 120 s
within 5% of that at 5 s) is read from `flat` when it ran, from `table` otherwise.

Every process tunes the allocator as the CLI does (speed_common.py), keeping freed memory in the
heap (ssmttm/_allocator.py): MusicGen's cache, which transformers re-allocates one position longer at
every step, is spared the page faults of fresh mappings too. transformers' MusicGen sizes its
sinusoidal position table by `max_position_embeddings` (2048 by default) and rebuilds it at every
step past it (41 s); here it covers 120 s, so that cost, which a longer table removes, is left out.

    python benchmarks/generate_speed.py             # everything, batches 2 and 16
    python benchmarks/generate_speed.py --quick     # 2 s at most and a few steps, a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from speed_common import (
    FRAME_RATE,
    TEXT_TOKENS,
    THREADS,
    build,
    bytes_per_step,
    chosen_sections,
    cpu_has_bf16,
    drift_warning,
    in_process,
    machine_line,
    peak_rss_since_reset_mib,
    read_bandwidth_gbs,
    reset_peak_rss,
    rss_mib,
    state_bytes,
    timed,
    update_bandwidth_gbs,
    worker,
)

from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator
from ssmttm.generation.sampling import SamplingConfig

PRESET = "simba-300m"
MUSICGEN = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "ffn_dim": 4096,
    "num_codebooks": 4,
    "vocab_size": 2048,
    "max_position_embeddings": 8192,  # past 120 s at 50 Hz: see the docstring
}
MUSICGEN_FRAME_RATE = 50.0  # EnCodec 32 kHz frames per second
DELAY_STEPS = 3  # the delay pattern over 4 codebooks adds 3 columns to a clip, for both models
GUIDANCE = 3.0
TOP_K = 250  # MusicGen's default sampling
WARMUP = 3
SECTIONS = ["table", "check", "ceiling", "flat"]


@dataclass(frozen=True)
class Variant:
    label: str
    model: str  # "ours" or "musicgen"
    bf16: bool  # the weights
    bf16_state: bool = False  # ours: the SSM state stored in bf16 between steps
    quant: str | None = None  # ours: "int8" or "int4" packed weights
    static: bool = False  # MusicGen: a static cache

    @property
    def frame_rate(self) -> float:
        return FRAME_RATE if self.model == "ours" else MUSICGEN_FRAME_RATE


VARIANTS = [
    Variant("simba-300m fp32", "ours", False),
    Variant("simba-300m fp32, bf16 state", "ours", False, bf16_state=True),
    Variant("simba-300m bf16 weights", "ours", True),
    Variant("simba-300m bf16 weights and state", "ours", True, bf16_state=True),
    Variant("simba-300m int8 weights, bf16 state", "ours", False, bf16_state=True, quant="int8"),
    Variant("simba-300m int4 weights, bf16 state", "ours", False, bf16_state=True, quant="int4"),
    Variant("MusicGen fp32", "musicgen", False),
    Variant("MusicGen bf16", "musicgen", True),
    Variant("MusicGen bf16, SDPA, static cache", "musicgen", True, static=True),
]
OURS_FP32, OURS_BF16_STATE, OURS_BF16, OURS_BF16_BOTH, OURS_INT8, OURS_INT4, MUSICGEN_FP32 = VARIANTS[:7]
MUSICGEN_BEST = VARIANTS[-1]


@dataclass(frozen=True)
class Plan:
    """Lengths in seconds of audio; `mid`, `long` and `short` are the issue's 30 s, 120 s and 5 s."""

    positions: list[float]
    clips: list[float]
    check: float
    short: float
    mid: float
    long: float
    steps: int  # timed steps per measurement at batch 2 (a quarter of them at larger batches)
    settle: int  # our steps between the prefill and the timed ones
    window: int  # `flat`: steps whose median gives the rate at a position


FULL = Plan([0, 5, 10, 30, 60, 120], [10, 30, 120], 10, 5, 30, 120, steps=40, settle=20, window=200)
QUICK = Plan([0, 0.5, 1, 2], [1, 2], 1, 0.5, 1, 2, steps=3, settle=2, window=5)


# -- measurements, each in its own process ------------------------------------------------------


def musicgen(bf16: bool):
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    torch.manual_seed(0)
    config = MusicgenDecoderConfig(**MUSICGEN)
    model = MusicgenForCausalLM(config).eval()
    model.generation_config.decoder_start_token_id = config.bos_token_id  # as musicgen-small's config has it
    return model.to(torch.bfloat16) if bf16 else model


def random_cache(config, batch: int, positions: int, dtype: torch.dtype):
    """MusicGen's cache after `positions` steps: random self-attention keys and values, and the text's."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(batch, heads, positions, head_dim, generator=generator).to(dtype)  # (B, H, T, hd)
    text = torch.randn(batch, heads, TEXT_TOKENS, head_dim, generator=generator).to(dtype)  # (B, H, L, hd)
    layers = range(config.num_hidden_layers)
    # Each layer gets tensors of its own; generators keep one layer's spare copies alive at a time.
    return EncoderDecoderCache(
        DynamicCache((audio.clone(), audio.clone()) for _ in layers),
        DynamicCache((text.clone(), text.clone()) for _ in layers),
    )


def static_cache(config, batch: int, positions: int, length: int, dtype: torch.dtype):
    """MusicGen's cache after `positions` steps as a static one of `length` positions (transformers'
    StaticCache, allocated once): random self-attention keys and values written into its first
    `positions`, and the text's cross-attention keys and values."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(batch, heads, positions, head_dim, generator=generator).to(dtype)
    text = torch.randn(batch, heads, TEXT_TOKENS, head_dim, generator=generator).to(dtype)
    own = StaticCache(config=config, max_cache_len=length)
    where = {"cache_position": torch.arange(audio.shape[2])}
    for layer in range(config.num_hidden_layers):
        own.update(audio.clone(), audio.clone(), layer, where)  # allocates the layer, then writes
    return EncoderDecoderCache(own, DynamicCache((text.clone(), text.clone()) for _ in range(config.num_hidden_layers)))


@torch.no_grad()
def run_at(
    model: str,
    bf16: bool,
    batch: int,
    frames: int,
    steps: int,
    settle: int,
    bf16_state: bool,
    quant: str | None = None,
    static: bool = False,
) -> dict:
    """Steps/s of `steps` steps from `frames` positions on, and the process's peak RSS."""
    if model == "ours":
        lm, text = build(PRESET, batch, quant or (torch.bfloat16 if bf16 else None))
        reset_peak_rss()
        _, state = lm.prefill(Conditioning(text))
        state = dataclasses.replace(state, position=state.position + frames)
        if bf16_state:
            state = state.with_recurrent_dtype(torch.bfloat16)
        tokens = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks))

        def step() -> None:
            nonlocal state
            _, state = lm.step(tokens, state)

        warmup = settle
    else:
        mg = musicgen(bf16)
        reset_peak_rss()
        dtype = torch.bfloat16 if bf16 else torch.float32
        text = torch.randn(batch, TEXT_TOKENS, mg.config.hidden_size, dtype=dtype)
        ids = torch.randint(0, mg.config.vocab_size, (batch * mg.config.num_codebooks, 1))
        if static:
            position = max(frames, 1)  # the cache's first entry written: a step always has one before it
            cache = static_cache(mg.config, batch, position, position + WARMUP + steps, dtype)

            def step() -> None:
                nonlocal position
                where = torch.tensor([position])
                mg(input_ids=ids, encoder_hidden_states=text, cache=cache, use_cache=True, cache_position=where)
                position += 1
        else:
            cache = random_cache(mg.config, batch, frames, dtype)

            def step() -> None:
                mg(input_ids=ids, encoder_hidden_states=text, cache=cache, use_cache=True)

        warmup = WARMUP
    for _ in range(warmup):
        step()
    elapsed = timed(lambda: [step() for _ in range(steps)])
    return {"steps_per_s": steps / elapsed, "peak_rss_mib": peak_rss_since_reset_mib()}


@torch.no_grad()
def run_generate(model: str, bf16: bool, batch: int, frames: int, bf16_state: bool, quant: str | None = None) -> dict:
    """One real generation of `frames` frames for batch / 2 prompts with CFG, timed end to end."""
    prompts = batch // 2
    if model == "ours":
        lm, text = build(PRESET, prompts, quant or (torch.bfloat16 if bf16 else None))
        generator = Generator(lm, state_dtype=torch.bfloat16 if bf16_state else None)
        sampling = SamplingConfig(cfg_scale=GUIDANCE, top_k=TOP_K)
        reset_peak_rss()
        seconds = timed(lambda: generator.generate(Conditioning(text), frames, sampling=sampling, seed=0))
        return {"seconds": seconds, "peak_rss_mib": peak_rss_since_reset_mib()}
    mg = musicgen(bf16)
    reset_peak_rss()
    config = mg.config
    text = torch.randn(batch, TEXT_TOKENS, config.hidden_size, dtype=mg.dtype)  # cond rows, then uncond rows
    bos = torch.full((prompts * config.num_codebooks, 1), config.bos_token_id)
    seconds = timed(lambda: musicgen_generate(mg, bos, text, frames))
    return {"seconds": seconds, "peak_rss_mib": peak_rss_since_reset_mib()}


def musicgen_generate(mg, bos: torch.Tensor, text: torch.Tensor, frames: int) -> torch.Tensor:
    """MusicGen's own generate of `frames` frames, sampling as ours does (top-k 250, guidance 3);
    `text` holds the cond rows, then the uncond rows."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    # Left to itself, generate() gives this decoder a plain DynamicCache, into which the
    # cross-attention then appends the text's keys at every step; an EncoderDecoderCache keeps them apart.
    return mg.generate(
        bos,
        encoder_hidden_states=text,
        cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        do_sample=True,
        top_k=TOP_K,
        guidance_scale=GUIDANCE,
        max_new_tokens=frames + DELAY_STEPS,
        num_return_sequences=1,
    )


@torch.no_grad()
def run_continuous(batch: int, frames: list[int], window: int) -> dict:
    """Our fp32 decode from the text to the last position; the median step of `window` from each."""
    lm, text = build(PRESET, batch)
    reset_peak_rss()
    _, state = lm.prefill(Conditioning(text))
    tokens = torch.randint(0, lm.cfg.cardinality, (batch, lm.cfg.num_codebooks))
    seconds = []
    for i in range(max(frames) + window):
        if i == window:
            rss_start = rss_mib()
        start = time.perf_counter()
        _, state = lm.step(tokens, state)
        seconds.append(time.perf_counter() - start)
    return {
        "steps_per_s": [1 / statistics.median(seconds[f : f + window]) for f in frames],
        "peak_rss_mib": peak_rss_since_reset_mib(),
        "rss_growth_mib": rss_mib() - rss_start,
    }


def run_bytes(bf16: bool, batch: int, bf16_state: bool, quant: str | None = None) -> dict:
    lm, _ = build(PRESET, batch, weight_dtype=quant or (torch.bfloat16 if bf16 else None))
    state_dtype = torch.bfloat16 if bf16_state else None
    return {"bytes": bytes_per_step(lm, batch, state_dtype), "state": state_bytes(lm, batch, state_dtype)}


# -- the parent: plans, estimates, tables ---------------------------------------------------------


def frames_at(seconds: float, frame_rate: float) -> int:
    return round(seconds * frame_rate)


def clip_seconds(rates: dict[float, float], frame_rate: float, clip: float) -> float | None:
    """Estimated wall-clock seconds of a clip: its steps' times per step, interpolated linearly
    between the positions measured (seconds of audio -> steps/s); None if they stop short of it."""
    measured = sorted(p for p, rate in rates.items() if rate is not None)
    if not measured or measured[-1] < clip:
        return None
    audio_before_step = np.arange(frames_at(clip, frame_rate) + DELAY_STEPS) / frame_rate
    per_step = np.interp(audio_before_step, measured, [1 / rates[p] for p in measured])
    return float(per_step.sum())


def musicgen_fits(batch: int, frames: int, bf16: bool) -> bool:
    """Whether MusicGen's cache at that length, with the weights, fits in 80% of the memory available."""
    cache = 2 * MUSICGEN["num_hidden_layers"] * batch * frames * MUSICGEN["hidden_size"] * (2 if bf16 else 4)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    return cache + 2 * 2**30 < 0.8 * available


def measure_positions(batch: int, variants: list[Variant], plan: Plan) -> dict[Variant, dict[float, dict | None]]:
    """One process per variant and position; positions outer, so that the variants share the machine's moods."""
    steps = plan.steps if batch <= 2 else max(plan.steps // 4, 3)
    found: dict[Variant, dict[float, dict | None]] = {v: {} for v in variants}
    for seconds in plan.positions:
        for v in variants:
            frames = frames_at(seconds, v.frame_rate)
            if v.model == "musicgen" and not musicgen_fits(batch, frames, v.bf16):
                found[v][seconds] = None
                continue
            found[v][seconds] = in_process(
                "at",
                model=v.model,
                bf16=v.bf16,
                batch=batch,
                frames=frames,
                steps=steps,
                settle=plan.settle,
                bf16_state=v.bf16_state,
                quant=v.quant,
                static=v.static,
            )
    return found


def rates_of(measured: dict[float, dict | None]) -> dict[float, float | None]:
    return {p: None if m is None else m["steps_per_s"] for p, m in measured.items()}


def print_positions(found: dict[Variant, dict[float, dict | None]], plan: Plan) -> None:
    print("| model | frames/s | " + " | ".join(f"steps/s at {p:g} s" for p in plan.positions) + " |")
    print("|---|---|" + "---|" * len(plan.positions))
    for v, measured in found.items():
        cells = ["skipped (memory)" if m is None else f"{m['steps_per_s']:.2f}" for m in measured.values()]
        print(f"| {v.label} | {v.frame_rate:g} | " + " | ".join(cells) + " |", flush=True)


def print_clips(found: dict[Variant, dict[float, dict | None]], plan: Plan, batch: int) -> None:
    prompts = batch // 2
    print("| model | clip | steps | steps/s at the clip's length | wall-clock (estimated) | x real time | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for v, measured in found.items():
        for clip in plan.clips:
            steps = frames_at(clip, v.frame_rate) + DELAY_STEPS
            wall = clip_seconds(rates_of(measured), v.frame_rate, clip)
            at = measured.get(clip)
            rate = "skipped (memory)" if at is None else f"{at['steps_per_s']:.2f}"
            peak = "-" if at is None else f"{at['peak_rss_mib']:.0f} MiB"
            wall_cell, realtime = ("-", "-") if wall is None else (f"{wall:.1f} s", f"{prompts * clip / wall:.3f}")
            print(f"| {v.label} | {clip:g} s | {steps} | {rate} | {wall_cell} | {realtime} | {peak} |", flush=True)


BANDWIDTHS: list[float] = []  # read bandwidth samples (GB/s) taken through the run, for `ceiling`


def section_table(batches: list[int], variants: list[Variant], plan: Plan) -> dict[int, dict]:
    results = {}
    for batch in batches:
        BANDWIDTHS.append(read_bandwidth_gbs())
        print(f"batch {batch}: {batch // 2} {'prompt' if batch == 2 else 'prompts'}, each with its CFG twin\n")
        results[batch] = measure_positions(batch, variants, plan)
        print_positions(results[batch], plan)
        print()
        print_clips(results[batch], plan, batch)
        print()
    BANDWIDTHS.append(read_bandwidth_gbs())
    return results


def section_check(batch: int, variants: list[Variant], plan: Plan, table: dict[Variant, dict] | None) -> None:
    print(f"one real {plan.check:g} s generation at batch {batch}, against the estimate from the table\n")
    print("| model | steps | real wall-clock | estimated | real / estimated | peak RSS |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        if v.static:  # its own generate is the dynamic-cache row's (a static cache is for its steps' timing)
            continue
        frames = frames_at(plan.check, v.frame_rate)
        real = in_process(
            "generate", model=v.model, bf16=v.bf16, batch=batch, frames=frames, bf16_state=v.bf16_state, quant=v.quant
        )
        estimate = None if table is None else clip_seconds(rates_of(table[v]), v.frame_rate, plan.check)
        est_cell, ratio = ("-", "-") if estimate is None else (f"{estimate:.1f} s", f"{real['seconds'] / estimate:.2f}")
        print(
            f"| {v.label} | {frames + DELAY_STEPS} | {real['seconds']:.1f} s | {est_cell} | {ratio} "
            f"| {real['peak_rss_mib']:.0f} MiB |",
            flush=True,
        )
    print()


def section_flat(plan: Plan) -> dict:
    frames = [frames_at(p, FRAME_RATE) for p in plan.positions]
    run = in_process("continuous", batch=2, frames=frames, window=plan.window)
    print(
        f"{PRESET}, batch 2, fp32, one continuous decode of {max(frames) + plan.window} steps "
        f"(median of {plan.window} steps from each position)\n"
    )
    print("| " + " | ".join(f"steps/s at {p:g} s" for p in plan.positions) + " | peak RSS | RSS growth |")
    print("|" + "---|" * (len(plan.positions) + 2))
    cells = [f"{r:.2f}" for r in run["steps_per_s"]]
    print(f"| {' | '.join(cells)} | {run['peak_rss_mib']:.0f} MiB | {run['rss_growth_mib']:+.1f} MiB |\n")
    return dict(zip(plan.positions, run["steps_per_s"], strict=True))


def section_ceiling(batches: list[int], variants: list[Variant]) -> dict[tuple[int, Variant], tuple[float, float]]:
    """Two ceilings per variant, in steps/s: every byte a step reads at the full read bandwidth
    (generous), and the same with the state's write-back, the state moving at the bandwidth of an
    in-place update (its reads and writes counted) and the rest at the read bandwidth."""
    BANDWIDTHS.append(read_bandwidth_gbs())
    updates = [update_bandwidth_gbs() for _ in range(3)]
    bandwidth, update = max(BANDWIDTHS), max(updates)  # the machine's bandwidth drifts: the generous ceiling
    print(
        f"ceiling: summing 1 GiB read {min(BANDWIDTHS):.1f} to {bandwidth:.1f} GB/s at {len(BANDWIDTHS)} points "
        f"of the run (before and after each batch's table); scaling 1 GiB in place moved {min(updates):.1f} to "
        f"{update:.1f} GB/s (reads and writes); the ceilings take the highest"
    )
    for warning in (drift_warning(BANDWIDTHS, "the read bandwidth"), drift_warning(updates, "the update bandwidth")):
        if warning:
            print(warning)
    print()
    print(
        "| model | batch | bytes a step reads | of which state, written back | steps/s reading at full bandwidth "
        "| steps/s with the write-back |"
    )
    print("|---|---|---|---|---|---|")
    ceilings = {}
    for batch in batches:
        for v in variants:
            if v.model != "ours":
                continue
            found = in_process("bytes", bf16=v.bf16, batch=batch, bf16_state=v.bf16_state, quant=v.quant)
            nbytes, state = found["bytes"], found["state"]
            read_only = bandwidth * 1e9 / nbytes
            written = 1 / ((nbytes - state) / (bandwidth * 1e9) + 2 * state / (update * 1e9))
            ceilings[batch, v] = (read_only, written)
            print(
                f"| {v.label} | {batch} | {nbytes / 1e9:.3f} GB | {state / 1e9:.3f} GB | {read_only:.2f} "
                f"| {written:.2f} |",
                flush=True,
            )
    print()
    return ceilings


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(
    tables: dict[int, dict],
    flat: dict[float, float] | None,
    plan: Plan,
    ceilings: dict[tuple[int, Variant], tuple[float, float]],
) -> list[str]:
    lines = []
    source, rates = "one continuous run", flat
    if rates is None and 2 in tables and OURS_FP32 in tables[2]:
        source, rates = "separate processes", rates_of(tables[2][OURS_FP32])
    name = f"our time per step at {plan.long:g} s within 5% of that at {plan.short:g} s (batch 2, fp32, {source})"
    if rates is None:
        lines.append(f"{name}: not measured")
    else:
        change = rates[plan.short] / rates[plan.long] - 1
        short_ms, long_ms = 1e3 / rates[plan.short], 1e3 / rates[plan.long]
        lines.append(f"{name}: {short_ms:.1f} ms and {long_ms:.1f} ms, {change:+.1%}: {verdict(abs(change) <= 0.05)}")

    def wall(batch: int, v: Variant, clip: float) -> float | None:
        found = tables.get(batch, {}).get(v)
        return None if found is None else clip_seconds(rates_of(found), v.frame_rate, clip)

    def at_most(batch: int, v: Variant, clip: float, theirs: float, need: float) -> str:
        """The most the ratio could be at our ceilings, and whether that still falls short."""
        if (batch, v) not in ceilings:
            return ""
        steps = frames_at(clip, v.frame_rate) + DELAY_STEPS
        read_only, written = (theirs / (steps / ceiling) for ceiling in ceilings[batch, v])
        return (
            f" (at most {read_only:.2f}x at the full read bandwidth, {written:.2f}x with the state's write-back"
            f"{': out of reach here' if read_only < need else ''})"
        )

    # Issue 28's targets (the batch-2 ones before it, 1.5x to 4x in fp32 and bf16, lay beyond the
    # bandwidth ceiling at those bytes per step and were withdrawn).
    for ours, clip, need in ((OURS_INT8, plan.mid, 3.0), (OURS_INT4, plan.mid, 4.0), (OURS_INT8, plan.long, 4.0)):
        name = f"{clip:g} s at batch 2, {ours.label} at least {need:g}x faster than MusicGen fp32"
        a, b = wall(2, ours, clip), wall(2, MUSICGEN_FP32, clip)
        if a is None or b is None:
            lines.append(f"{name}: not measured")
        else:
            lines.append(
                f"{name}: {a:.1f} s against {b:.1f} s, {b / a:.2f}x: {verdict(b / a >= need)}"
                + at_most(2, ours, clip, b, need)
            )
    batch16 = [(v, 2.0) for v in (OURS_FP32, OURS_BF16_STATE, OURS_BF16, OURS_BF16_BOTH)] + [(OURS_INT8, 3.5)]
    for ours, need in batch16:
        name = f"{plan.mid:g} s at batch 16, {ours.label} at least {need:g}x MusicGen fp32's audio seconds per second"
        a, b = wall(16, ours, plan.mid), wall(16, MUSICGEN_FP32, plan.mid)
        if a is None or b is None:
            lines.append(f"{name}: not measured")
            continue
        ours_rt, theirs_rt = 8 * plan.mid / a, 8 * plan.mid / b
        lines.append(
            f"{name}: {ours_rt:.3f} against {theirs_rt:.3f}, {ours_rt / theirs_rt:.2f}x: "
            f"{verdict(ours_rt >= need * theirs_rt)}" + at_most(16, ours, plan.mid, b, need)
        )
    for ours in (OURS_INT8, OURS_INT4):
        for batch in sorted(tables):
            name = f"batch {batch}, {ours.label}: a step at {plan.mid:g} s streams at least 70% of its byte ceiling"
            found = tables[batch].get(ours, {}).get(plan.mid)
            if found is None or (batch, ours) not in ceilings:
                lines.append(f"{name}: not measured")
                continue
            share = found["steps_per_s"] / ceilings[batch, ours][1]  # the ceiling with the state's write-back
            lines.append(f"{name}: {found['steps_per_s']:.2f} steps/s, {share:.0%} of it: {verdict(share >= 0.7)}")
    # No target: against MusicGen at the fastest CPU setting transformers offers.
    for batch in sorted(tables):
        for ours in (OURS_BF16_BOTH, OURS_INT8, OURS_INT4):
            a, b = wall(batch, ours, plan.mid), wall(batch, MUSICGEN_BEST, plan.mid)
            name = f"{plan.mid:g} s at batch {batch}, {ours.label} against {MUSICGEN_BEST.label} (no target)"
            if a is None or b is None:
                lines.append(f"{name}: not measured")
                continue
            lines.append(f"{name}: {a:.1f} s against {b:.1f} s, {b / a:.2f}x" + at_most(batch, ours, plan.mid, b, 0.0))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s at most and a few steps: a smoke run")
    parser.add_argument("--batch", default="2,16", help="comma-separated batch sizes (rows, even: prompts and twins)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            {"at": run_at, "generate": run_generate, "continuous": run_continuous, "bytes": run_bytes},
            json.loads(args.worker),
        )
        return
    torch.set_num_threads(THREADS)
    sections = chosen_sections(parser, args.sections, SECTIONS)
    batches = [int(b) for b in args.batch.split(",")]
    if any(b < 2 or b % 2 for b in batches):
        parser.error("batch sizes count rows with their CFG twins: even, at least 2")
    plan = QUICK if args.quick else FULL
    variants = VARIANTS if cpu_has_bf16() else [v for v in VARIANTS if not v.bf16]
    print(machine_line())
    print(
        f"{PRESET} at {FRAME_RATE} frames/s against MusicGen (musicgen-small's shape) at {MUSICGEN_FRAME_RATE:g}; "
        f"random weights, CFG rows in the batch; x real time = seconds of audio of all the batch's "
        f"prompts per second of wall-clock time"
    )
    if len(variants) < len(VARIANTS):
        print("bf16: this CPU has neither AVX512-BF16 nor AMX; the bf16 rows are skipped")
    if args.quick:
        print(f"--quick: {plan.short:g}, {plan.mid:g} and {plan.long:g} s stand in for 5, 30 and 120 s")
    print()
    tables = section_table(batches, variants, plan) if "table" in sections else {}
    if "check" in sections:
        section_check(batches[0], variants, plan, tables.get(batches[0]))
    ceilings = section_ceiling(batches, variants) if "ceiling" in sections else {}
    flat = section_flat(plan) if "flat" in sections else None
    print("targets:")
    for line in targets(tables, flat, plan, ceilings):
        print(f"  {line}")


if __name__ == "__main__":
    main()
