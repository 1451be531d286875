"""What made a generated file: the record `ssmttm generate` writes beside it as JSON, built here so
that every front end writes the same one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssmttm.config import SamplingConfig
from ssmttm.generation.precision import dtype_name
from ssmttm.generation.stage2_renderer import Stage2Renderer

if TYPE_CHECKING:
    from ssmttm.generation.pipeline import TextToMusic


def generation_record(
    model: TextToMusic,
    *,
    prompt: str,
    seed: int | None,
    duration: float,
    sampling: SamplingConfig,
    elapsed: float,
    continue_from: str | Path | None = None,
    diffusion_steps: int | None = None,
    diffusion_cfg: float | None = None,
) -> dict[str, Any]:
    """The prompt, the settings, the model's parts and what it decoded in, and the time it took;
    for a two-stage model, stage 2's settings too (`stage2`)."""
    record = {
        "prompt": prompt,
        "seed": seed,
        "duration_s": duration,
        "sampling": {
            "cfg_scale": sampling.cfg_scale,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
        },
        "model": model.source,
        "codec": model.config.codec,
        "text_encoder": model.config.text_encoder,
        "text_padding": model.config.text_padding,
        "continue_from": None if continue_from is None else str(continue_from),
        "sample_rate": model.sample_rate,
        "generation_s": round(elapsed, 3),
        "device": model.device,
        "precision": model.precision.name,
        "weight_dtype": model.generator.weight_format,
        "state_dtype": dtype_name(model.generator.state_dtype or torch.float32),
        "torch_threads": torch.get_num_threads(),
    }
    renderer = model.renderer
    if isinstance(renderer, Stage2Renderer):
        cfg = renderer.model.cfg
        record["stage2"] = {
            "source": renderer.config.source,
            "trained_steps": renderer.config.trained_steps,
            "steps": cfg.steps if diffusion_steps is None else diffusion_steps,
            "cfg_scale": cfg.cfg_scale if diffusion_cfg is None else diffusion_cfg,
            "window_frames": cfg.window_frames,
            "overlap_frames": cfg.overlap_frames,
        }
    return record
