"""How much of stage 2's target codebook 1 determines: the ceiling on stage 2 alone (issue 26, target 1).

    python benchmarks/stage2_bound.py --collection data/demo-bpm-latents --stage2 models/stage2 [--steps 600] [--n 20]

Stage 2 is scored against the original clip, so it can only recover what the coarse tokens say
about the residual. This script measures that, in the denoiser's normalised latent space, on the
held-out clips of codec_quality.py (corpus seed 500), against the residual of the unquantized
features:
- the mean (a residual of 0 in codec space): its error is the residual's variance;
- the codec's codebooks 2-4: what the single-stage model's tokens keep, for comparison;
- stage 2's own samples (its default steps and guidance, seed 0);
- a regression on codebook 1: the same denoiser, started from the trained stage 2 and trained
  `--steps` more at t = 1 on the collection's training windows. At t = 1 its input is pure noise,
  so its x0 estimate is a function of the coarse tokens alone (text is the null condition: the
  trained model's conditional and unconditional estimates at t = 1 differ by about 2%). Its error
  estimates the posterior variance E Var(residual | codebook 1), which no renderer can go below on
  average; a sample from that posterior has twice it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ssmttm import tune_allocator
from ssmttm.audio import load_audio, to_mono
from ssmttm.codecs import load_codec
from ssmttm.data.dataset import LatentWindows
from ssmttm.data.synth import synthesize_corpus
from ssmttm.diffusion import render
from ssmttm.diffusion.pretrained import load_stage2
from ssmttm.text import load_text_encoder

tune_allocator()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", required=True, help="stage 2's training collection (prepared with --latents)")
    parser.add_argument("--stage2", required=True, help="a stage-2 folder")
    parser.add_argument("--steps", type=int, default=600, help="training steps of the regression on codebook 1")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n", type=int, default=20, help="held-out clips")
    parser.add_argument("--seed", type=int, default=500, help="corpus seed of the held-out clips, as codec_quality.py")
    parser.add_argument("--clips", default="benchmarks/.cache/codec-quality")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, config = load_stage2(args.stage2)
    codec = load_codec(config.codec)
    encoder = load_text_encoder(config.text_encoder)
    window = model.cfg.window_frames
    corpus = Path(args.clips) / f"seed{args.seed}-22050"
    synthesize_corpus(corpus, n=args.n, seed=args.seed, workers=2, sample_rate=22050)
    meta = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()][: args.n]
    held = []  # normalised residual (1, D, W), coarse (1, W), codebooks 2-4's normalised residual, caption
    for m in meta:
        wav, rate = load_audio(corpus / m["file"])
        audio = torch.from_numpy(to_mono(wav)[0])[None, None]
        target = codec.two_stage_target(audio, rate)
        codes = codec.encode(audio, rate)  # (1, K, T)
        kept = codec.latents(codes[:, 1:], 1)  # (1, D, T) codebooks 2..K, summed
        held.append((model.normalise(target.residual)[..., :window], target.coarse[:, 0, :window],
                     model.normalise(kept)[..., :window], encoder.embed([m["caption"]])))  # fmt: skip
    null_text = torch.zeros(1, 1, model.cfg.denoiser.text_dim)
    null_mask = torch.zeros(1, 1, dtype=torch.bool)

    def regression(coarse: torch.Tensor) -> torch.Tensor:
        batch = coarse.shape[0]
        noise = torch.randn(batch, model.cfg.denoiser.latent_dim, coarse.shape[1])
        v = model(noise, torch.ones(batch), coarse, null_text.expand(batch, -1, -1), null_mask.expand(batch, -1))
        return noise - v  # x0 = x_1 - v at t = 1

    def error(estimate) -> float:
        with torch.no_grad():
            return sum(float((estimate(c, k, t) - x).square().mean()) for x, c, k, t in held) / len(held)

    zero = model.normalise(torch.zeros(1, model.cfg.denoiser.latent_dim, 1))  # a codec residual of 0
    variance = error(lambda c, k, t: zero)
    rows = {
        "the mean (residual 0)": variance,
        "the codec's codebooks 2-4": error(lambda c, k, t: k),
        f"stage 2's sample ({model.cfg.steps} steps, guidance {model.cfg.cfg_scale:g})": error(
            lambda c, k, t: model.normalise(render(model, c, *t, seed=0))
        ),
        "regression on codebook 1, before training at t = 1": error(lambda c, k, t: regression(c)),
    }

    windows = LatentWindows(args.collection, "train", window, seed=0)
    loader = DataLoader(windows, batch_size=args.batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for batch in loader:
            x0 = model.normalise(batch["latents"])  # (B, D, W)
            mask = batch["frame_mask"][:, None].to(x0.dtype)  # (B, 1, W)
            loss = ((regression(batch["coarse"]) - x0).square() * mask).sum() / (mask.sum() * x0.shape[1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0:
                print(
                    f"step {step}: training error {float(loss):.3f} ({time.perf_counter() - start:.0f} s)", flush=True
                )
            if step == args.steps:
                break
    model.eval()
    rows[f"regression on codebook 1, after {args.steps} steps at t = 1"] = error(lambda c, k, t: regression(c))

    print(f"stage 2 {args.stage2} (trained {config.trained_steps} steps); {len(held)} clips of corpus seed {args.seed}")
    print("| estimate of the residual | normalised squared error | variance explained |")
    print("|---|---|---|")
    for label, value in rows.items():
        print(f"| {label} | {value:.3f} | {1 - value / variance:+.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
