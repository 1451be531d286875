"""What training stage 1 alone costs: steps and FLOPs for a K=1 LM to reach the single-stage
model's codebook-1 validation loss, and what stage 2 costs beside it.

    python benchmarks/stage1_cost.py --stage1-run runs/demo-stage1 [--single MODEL] [--stage2-run runs/demo-stage2]

The single-stage model (default: the shipped demo, K=4) is scored on the K=1 run's own validation
windows (its collection, window, seed and micro-batches, as the trainer's validation takes them):
its cross-entropy on codebook 1 alone, without label smoothing. The K=1 run's validation loss is
that same quantity, logged every `run.val_every` steps with the training FLOPs so far (the
trainer's formula count), so the first validation at or below the single-stage model's value
gives the steps and FLOPs stage 1 needed. The single-stage model's own training FLOPs come from the
same formula at its trained steps and the same batch. A run still training gives the figures so far.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import torch

from ssmttm import DEMO_MODEL
from ssmttm.conditioning import Conditioning
from ssmttm.data.dataset import TokenWindows
from ssmttm.data.shards import TokenStore
from ssmttm.pretrained import load_pretrained
from ssmttm.text import EmbeddingCache, load_text_encoder
from ssmttm.training.config import load_train_config
from ssmttm.training.data import CaptionedWindows, EncoderKey, collate, fill_cache
from ssmttm.training.flops import forward_flops
from ssmttm.training.layout import CONFIG, METRICS


def validation_rows(run: Path, kind: str = "val") -> list[dict[str, float]]:
    with (run / METRICS).open() as f:
        return [{k: float(v) for k, v in r.items() if k != "kind"} for r in csv.DictReader(f) if r["kind"] == kind]


def codebook1_loss(model_dir: Path, run: Path) -> tuple[float, object]:
    """The single-stage model's codebook-1 cross-entropy on the K=1 run's validation windows."""
    config = load_train_config(run / CONFIG)
    lm, pretrained = load_pretrained(model_dir)
    data = config.data
    frames = max(1, round(TokenStore(data.collection).frame_rate * data.window_seconds))  # as the run crops
    windows = TokenWindows(
        data.collection, data.val_split, frames, lm.cfg.num_codebooks, lm.cfg.special_token, config.run.seed
    )
    encoder = load_text_encoder(pretrained.text_encoder, "cpu", data.max_text_tokens or None)
    cache = EmbeddingCache(data.embedding_cache or Path(data.collection) / "text-embeddings")
    fill_cache(encoder, cache, [r["caption"] for r in windows.records])
    val = CaptionedWindows(windows, cache, EncoderKey(encoder.id, encoder.dim))
    size = config.run.micro_batch_size
    chunks = [list(range(i, min(i + size, len(val)))) for i in range(0, len(val), size)]
    if config.run.val_batches:
        chunks = chunks[: config.run.val_batches]
    total, count = 0.0, 0.0
    with torch.no_grad():
        for chunk in chunks:
            batch = collate([val[i] for i in chunk])
            clock = batch["clock"] if lm.cfg.beat_clock else None
            out = lm.compute_loss(
                batch["codes"], Conditioning(batch["text"], batch["text_mask"], clock), label_smoothing=0.0
            )
            total += float(out.per_codebook[0]) * float(out.num_tokens[0])
            count += float(out.num_tokens[0])
    return total / count, (lm, pretrained, config, frames)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-run", required=True, help="the K=1 LM's run folder")
    parser.add_argument("--single", default=str(DEMO_MODEL), help="the single-stage model to match")
    parser.add_argument("--stage2-run", help="the stage-2 run folder, for its cost")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    run = Path(args.stage1_run)
    target, (lm, pretrained, config, frames) = codebook1_loss(Path(args.single), run)
    steps = pretrained.trained_steps or 0
    text_len = 32  # a typical caption of the corpus in MiniLM tokens (+1 with a tempo); FLOPs barely depend on it
    single_flops = 3 * config.run.batch_size * forward_flops(lm.cfg, frames, text_len) * steps
    print(
        f"single-stage {args.single} (K={lm.cfg.num_codebooks}, {steps} steps): codebook-1 validation "
        f"cross-entropy {target:.4f} on {run}'s validation windows; its training ~{single_flops:.3g} FLOPs "
        f"(the formula, {config.run.batch_size} x {frames} frames a step)"
    )
    rows = validation_rows(run)
    reached = next((r for r in rows if r["loss"] <= target), None)
    last = rows[-1] if rows else None
    if reached is None:
        where = f"at step {last['step']:.0f} it is {last['loss']:.4f}" if last else "no validation yet"
        print(f"stage 1 (K=1) has not reached it yet: {where}")
    else:
        print(
            f"stage 1 (K=1) reaches it at step {reached['step']:.0f} ({reached['loss']:.4f}), "
            f"{reached['flops']:.3g} training FLOPs, {reached['wall_s']:.0f} s: {reached['step'] / steps:.2f}x the "
            f"steps and {reached['flops'] / single_flops:.2f}x the FLOPs of the single-stage model"
        )
    if args.stage2_run:
        s2 = validation_rows(Path(args.stage2_run), "train")
        if s2:
            print(
                f"stage 2 so far: {s2[-1]['step']:.0f} steps, {s2[-1]['flops']:.3g} training FLOPs, "
                f"{s2[-1]['wall_s']:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
