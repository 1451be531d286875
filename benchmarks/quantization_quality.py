"""What each weight format moves the logits by, against fp32: bf16, int8 and int4 (groups of 32, 64, 128).

The model (the shipped demo by default) decodes 32 steps from 8 captions: prefill the caption, then
32 steps teacher-forced on fp32's own greedy tokens (conditional rows, no guidance), so every format
sees the same inputs at every step. Per format:

  largest logit difference   the largest |logit - fp32's| over every step, row, codebook and token
  typical                    the median over steps, rows and codebooks of the largest per step
  greedy agreement           the share of (step, row, codebook) whose argmax equals fp32's

The formats decode as `--precision` does: bf16, int8 and int4 store the SSM state in bf16 too,
so the bf16-state line (fp32 weights) says how much of a difference the state alone makes.
For scale: the logits' own spread (the median over steps of their standard deviation) is printed.

    python benchmarks/quantization_quality.py                          # the demo model
    python benchmarks/quantization_quality.py --model PATH --steps 64
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from ssmttm import DEMO_MODEL
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.generation.precision import Precision
from ssmttm.generation.sampling import SamplingConfig

CAPTIONS = [
    "calm piano with soft strings",
    "upbeat funk with slap bass and organ",
    "jazz saxophone over brushed drums",
    "ambient pads with vibraphone",
    "rock guitar riff with drums, 120 bpm",
    "folk flute melody",
    "reggae groove with trumpet",
    "slow cello solo",
]
GROUPS = (32, 64, 128)


def formats() -> dict[str, Precision]:
    bf16 = torch.bfloat16
    return {
        "bf16 state (fp32 weights)": Precision(state_dtype=bf16),
        "bf16": Precision(bf16, bf16),
        "int8": Precision(state_dtype=bf16, quantized="int8"),
        **{f"int4-g{g}": Precision(state_dtype=bf16, quantized="int4", group=g) for g in GROUPS},
    }


@torch.no_grad()
def run(model: TextToMusic, cond, tokens: list[torch.Tensor] | None, steps: int):
    """Logits of the prefill and `steps` steps; the tokens fed are `tokens`, or the greedy ones."""
    logits, state = model.lm.prefill(cond)
    dtype = model.generator.state_dtype  # stored as the generator stores it: rounded after the prefill
    state = state if dtype is None else state.with_recurrent_dtype(dtype)
    out, fed = [logits], []
    for t in range(steps):
        token = logits.argmax(-1) if tokens is None else tokens[t]  # (B, K)
        fed.append(token)
        logits, state = model.lm.step(token, state)
        out.append(logits)
    return out, fed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reference = TextToMusic.from_pretrained(args.model)
    cond = reference.conditioning(CAPTIONS, SamplingConfig(cfg_scale=1.0))
    expected, tokens = run(reference, cond, None, args.steps)
    spread = statistics.median(float(x.std()) for x in expected)
    print(
        f"{args.model}: {len(CAPTIONS)} captions, prefill and {args.steps} steps teacher-forced on fp32's greedy tokens"
    )
    print(f"fp32's logits: median standard deviation {spread:.2f}\n")
    print("| format | largest logit difference | typical (median of per-step largest) | greedy agreement |")
    print("|---|---|---|---|")
    for name, precision in formats().items():
        model = TextToMusic.from_pretrained(args.model, precision=precision)
        got, _ = run(model, cond, tokens, args.steps)
        diffs = [(g - e).abs() for g, e in zip(got, expected, strict=True)]  # each (B, K, V)
        largest = max(float(d.max()) for d in diffs)
        typical = statistics.median(float(v) for d in diffs for v in d.amax(-1).flatten())
        agree = sum(int((g.argmax(-1) == e.argmax(-1)).sum()) for g, e in zip(got, expected, strict=True))
        total = sum(e.shape[0] * e.shape[1] for e in expected)
        print(f"| {name} | {largest:.3f} | {typical:.3f} | {agree / total:.1%} |", flush=True)


if __name__ == "__main__":
    main()
