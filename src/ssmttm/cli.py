"""The `ssmttm` command line: arguments -> config -> library call. Errors are one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from ssmttm.config import ConfigError, load_preset, preset_names
from ssmttm.lm import count_parameters


def _presets(args: argparse.Namespace) -> None:
    reference = count_parameters(load_preset("simba-300m"))
    print(f"{'preset':<18} {'backbone':<12} {'layers':>6} {'d_model':>7} {'parameters':>13} {'/ simba-300m':>12}")
    for name in preset_names():
        cfg = load_preset(name)
        n = count_parameters(cfg)
        bb = cfg.backbone
        print(f"{name:<18} {bb.kind:<12} {bb.n_layers:>6} {bb.d_model:>7} {n:>13,} {n / reference:>12.3f}")


def _summary(args: argparse.Namespace) -> None:
    cfg = load_preset(args.preset, args.override)
    bb = cfg.backbone
    n = count_parameters(cfg)
    mixer = {
        "simba": "Mamba-2 + MLP",
        "mamba2": "Mamba-2",
        "mamba": "Mamba-1",
        "transformer": "self-attention + MLP",
    }
    print(f"{args.preset}: {n:,} trainable parameters (text encoder excluded)")
    print(f"  backbone      {bb.kind}: {bb.n_layers} x [{mixer[bb.kind]}], d_model {bb.d_model}")
    if bb.kind in ("simba", "mamba2"):
        m = bb.mamba2
        state = bb.n_layers * (m.expand * bb.d_model) * m.d_state * 4
        print(f"  decoding state {state / 2**20:.1f} MiB per row, the same at every length")
    elif bb.kind == "mamba":
        state = bb.n_layers * (bb.mamba.expand * bb.d_model) * bb.mamba.d_state * 4
        print(f"  decoding state {state / 2**20:.1f} MiB per row, the same at every length")
    else:
        per_step = bb.n_layers * 2 * bb.d_model * 4
        print(f"  KV cache      grows by {per_step / 2**10:.0f} KiB per row and step")
    print(f"  tokens        {cfg.num_codebooks} codebooks of {cfg.cardinality} (+1 special), {cfg.pattern} pattern")
    print(f"  text          {cfg.text_dim}-d embeddings, {cfg.conditioning} conditioning, mask {cfg.text_mask}")
    print(f"  positions     {cfg.positions}")
    if args.decode_steps:
        _decode_demo(cfg, args.decode_steps)


def _decode_demo(cfg, steps: int) -> None:
    """Decode with random weights: shows the prefill-then-step loop and its speed, not music."""
    import time

    import torch

    from ssmttm.generation import Generator, SamplingConfig
    from ssmttm.lm import MusicLM

    torch.manual_seed(0)
    generator = Generator(MusicLM(cfg))
    text = torch.randn(1, 8, cfg.text_dim)
    start = time.perf_counter()
    codes = generator.generate(text, None, num_frames=steps, sampling=SamplingConfig(), seed=0, progress=True)
    elapsed = time.perf_counter() - start
    print(
        f"  decoded       {tuple(codes.shape)} codes (random weights) in {elapsed:.1f} s, with CFG: "
        f"{(steps + cfg.num_codebooks) / elapsed:.0f} steps/s"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmttm", description="Text-to-music with state-space language models.")
    commands = parser.add_subparsers(dest="command", required=True)
    presets = commands.add_parser("presets", help="list the model presets with their parameter counts")
    presets.set_defaults(run=_presets)
    summary = commands.add_parser("summary", help="describe one model preset")
    summary.add_argument("preset", nargs="?", default="simba-300m", help="preset name or YAML path")
    summary.add_argument("override", nargs="*", help="config overrides, e.g. backbone.n_layers=12")
    summary.add_argument("--decode-steps", type=int, default=0, help="also decode this many frames, random weights")
    summary.set_defaults(run=_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"ssmttm: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
