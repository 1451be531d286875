"""A run's latest checkpoint -> the exported model format (ssmttm.pretrained): no training state,
no pickle, just the weights and the config that rebuilds and drives the model."""

from __future__ import annotations

from pathlib import Path

import torch

from ssmttm.lm import MusicLM
from ssmttm.pretrained import GenerationDefaults, save_pretrained
from ssmttm.training.config import load_train_config
from ssmttm.training.layout import CONFIG, last_checkpoint, read_run_info


def export_run(
    run_dir: str | Path,
    out: str | Path,
    cfg_scale: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
) -> Path:
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/last.ckpt)")
    config = load_train_config(run_dir / CONFIG)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = MusicLM(config.model)
    model.load_state_dict(state["model"])
    defaults = GenerationDefaults()
    generation = GenerationDefaults(
        cfg_scale=defaults.cfg_scale if cfg_scale is None else cfg_scale,
        temperature=defaults.temperature if temperature is None else temperature,
        top_k=defaults.top_k if top_k is None else top_k,
    )
    return save_pretrained(
        model,
        out,
        codec=info["codec"]["name"],
        text_encoder=info["text_encoder"],
        generation=generation,
        trained_steps=int(state["counters"]["step"]),
        source=str(checkpoint.resolve()),
    )
