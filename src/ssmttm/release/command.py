"""`ssmttm import-release --ckpt FILE.ckpt [--config config.json] --out DIR`."""

from __future__ import annotations

import argparse

from ssmttm.release.importer import DAC_44KHZ
from ssmttm.text.t5 import FLAN_T5_BASE


def add_import_command(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser("import-release", help="convert the authors' released checkpoint to a model folder")
    cmd.add_argument("--ckpt", required=True, help="the release's Lightning .ckpt (or a state dict .pt/.safetensors)")
    cmd.add_argument("--config", help="the release's config.json, checked against the checkpoint's tensors")
    cmd.add_argument("--out", required=True, help="folder to write (model.safetensors + config.json)")
    cmd.add_argument("--text-encoder", default=FLAN_T5_BASE, help="text encoder: hub id or local folder")
    cmd.add_argument("--codec", default=DAC_44KHZ, help="codec: hub id or local folder")
    cmd.set_defaults(run=_import)


def _import(args: argparse.Namespace) -> None:
    from ssmttm.lm import num_parameters
    from ssmttm.release.importer import import_release

    result = import_release(args.ckpt, args.out, args.config, args.text_encoder, args.codec)
    cfg = result.lm.cfg
    bb = cfg.backbone
    steps = "" if result.trained_steps is None else f", trained {result.trained_steps} steps"
    print(
        f"{result.out}: prefix SiMBA, {bb.n_layers} layers, d_model {bb.d_model}, d_state {bb.mamba2.d_state}, "
        f"{cfg.num_codebooks} codebook{'s' if cfg.num_codebooks > 1 else ''}, "
        f"{num_parameters(result.lm) / 1e6:.1f}M parameters{steps}; "
        f"{result.dropped} text-encoder tensors dropped; release text mode"
    )
    print(f'generate with: ssmttm generate --model {result.out} "a calm piano piece" -o out.wav')
