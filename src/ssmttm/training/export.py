"""A run's latest checkpoint -> its task's exported model format (for the LM, ssmttm.pretrained):
no training state, no pickle, just the weights and the config that rebuilds and drives the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssmttm.training.config import load_train_config
from ssmttm.training.layout import CONFIG, last_checkpoint, read_run_info
from ssmttm.training.task import Trained, make_task


def export_run(run_dir: str | Path, out: str | Path, **defaults: Any) -> Path:
    """`defaults`: what the task stores with the model (the LM's cfg_scale, temperature, top_k)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/last.ckpt)")
    config = load_train_config(run_dir / CONFIG)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    task = make_task(config)
    model = task.build_model()
    model.load_state_dict(state["model"])
    trained = Trained(info, int(state["counters"]["step"]), checkpoint.resolve())
    return task.export(model, Path(out), trained, **defaults)
