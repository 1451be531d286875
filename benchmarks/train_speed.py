"""Training throughput of SiMBA against the Transformer at equal parameter count, measured in the same run.

    python benchmarks/train_speed.py                      # tiny and 75m presets, CPU
    python benchmarks/train_speed.py --device cuda --pairs simba-300m:transformer-300m

One training step = forward, backward and an AdamW update on random codes and random text, at
sequence lengths of 6, 15 and 30 s of DAC frames (86.13 frames/s). The two backbones alternate
step by step, so a busy machine slows both alike; the table reports the median step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ssmttm import tune_allocator
from ssmttm.conditioning import Conditioning
from ssmttm.lm import MusicLM, count_parameters
from ssmttm.presets import load_preset

tune_allocator()  # as the CLI does: every figure here was measured with it (ssmttm/_allocator.py)

DAC_FRAME_RATE = 44100 / 512


def step_seconds(model: MusicLM, optimizer, codes, text, device: str) -> float:
    start = time.perf_counter()
    loss = model.compute_loss(codes, Conditioning(text)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["tiny-simba:tiny-transformer", "simba-75m:transformer-75m"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[6.0, 15.0, 30.0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and length (after 1 warm-up)")
    parser.add_argument("--text-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}, fp32, median of {args.steps}")
    print("| models | length | frames | SSM tokens/s | Transformer tokens/s | SSM / Transformer |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        names = pair.split(":")
        models = []
        for name in names:
            cfg = load_preset(name)
            torch.manual_seed(0)
            model = MusicLM(cfg).to(args.device).train()
            models.append((name, cfg, model, torch.optim.AdamW(model.parameters(), lr=1e-4)))
        sizes = " vs ".join(f"{n} ({count_parameters(c) / 1e6:.1f}M)" for n, c, _, _ in models)
        for seconds in args.seconds:
            frames = round(seconds * DAC_FRAME_RATE)
            times: list[list[float]] = [[] for _ in models]
            for repeat in range(args.steps + 1):
                for i, (_, cfg, model, optimizer) in enumerate(models):
                    codes = torch.randint(cfg.cardinality, (args.batch, cfg.num_codebooks, frames), device=args.device)
                    text = torch.randn(args.batch, args.text_tokens, cfg.text_dim, device=args.device)
                    elapsed = step_seconds(model, optimizer, codes, text, args.device)
                    if repeat:  # the first step of each is warm-up
                        times[i].append(elapsed)
            ssm, attention = (args.batch * frames / statistics.median(t) for t in times)
            print(f"| {sizes} | {seconds:g} s | {frames} | {ssm:,.0f} | {attention:,.0f} | {ssm / attention:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
