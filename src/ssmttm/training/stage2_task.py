"""Stage 2 of a two-stage model as a training task: windows of a collection prepared with
`--latents` (codebook 0's tokens and the codec's residual latents) with their cached caption
embeddings, the rectified-flow loss, and a stage-2 folder as the export.

The residual is stored with the shards rather than computed from audio each step: a prepared
collection holds no audio, and for DAC the target costs an encoder pass per clip. Stage 1 (the LM at
K=1) trains separately, as in the paper, with the `lm` task on the same collection.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ssmttm.config import ConfigError
from ssmttm.data.dataset import LatentWindows, latent_statistics
from ssmttm.data.shards import TokenStore
from ssmttm.diffusion import Stage2Config, Stage2Model, denoiser_flops
from ssmttm.diffusion.pretrained import save_stage2
from ssmttm.text import pad_left
from ssmttm.training.config import TrainConfig
from ssmttm.training.data import captioned_splits, require_prepared
from ssmttm.training.task import Task, TaskData, TaskLoss, Trained

if TYPE_CHECKING:
    from lightning.fabric import Fabric

log = logging.getLogger(__name__)

RELATIVE_STD_FLOOR = 0.1  # of the mean per-channel std: the least a channel is scaled by
VALIDATION_SEED = 1234  # validation draws its times and noise from here, so every validation is the same sum


@dataclass
class Stage2DataConfig:
    """Latent windows of a collection prepared with `ssmttm data prepare --latents`."""

    collection: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    window_seconds: float = 10.0  # training crop, as stage 2 renders: one window of `model.window_frames`
    text_encoder: str = "minilm"  # stage 1's: a two-stage model reads one caption embedding
    max_text_tokens: int = 0  # 0: the encoder's own limit
    embedding_cache: str = ""  # default: <collection>/text-embeddings
    workers: int = 2


@dataclass
class Stage2TrainConfig(TrainConfig):
    task: str = "stage2"
    model: Stage2Config = field(default_factory=Stage2Config)
    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)


def collate_latents(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """latents (B, D, T), coarse (B, T), frame_mask (B, T), text (B, L, E) left-padded, text_mask (B, L)."""
    text, mask = pad_left([item["text"] for item in items], items[0]["text"].shape[-1], "cpu")
    return {
        "latents": torch.stack([item["latents"] for item in items]),
        "coarse": torch.stack([item["coarse"] for item in items]),
        "frame_mask": torch.stack([item["frame_mask"] for item in items]),
        "text": text,
        "text_mask": mask,
    }


class Stage2Task(Task):
    config_type = Stage2TrainConfig
    forward_methods = ("training_loss",)
    config: Stage2TrainConfig

    def __init__(self, config: Stage2TrainConfig) -> None:
        super().__init__(config)
        self._statistics: tuple[Tensor, Tensor] | None = None  # measured by `data`, given to `build_model`
        self._flops: dict[tuple[int, int], float] = {}

    def data(self, fabric: Fabric) -> TaskData:
        cfg, data = self.config, self.config.data
        if not data.collection:
            raise ConfigError("data.collection is not set: a folder `ssmttm data prepare --latents` wrote")
        require_prepared(data.collection)
        store = TokenStore(data.collection)
        codec = store.manifest["codec"]
        if not store.has_latents:
            raise ConfigError(f"{data.collection} holds no latents: prepare it with `ssmttm data prepare --latents`")
        denoiser = cfg.model.denoiser
        if codec.get("latent_dim") != denoiser.latent_dim or codec["cardinality"] != denoiser.cardinality:
            raise ConfigError(
                f"the collection's codec has {codec.get('latent_dim')}-d latents and {codec['cardinality']} coarse "
                f"tokens; the model wants {denoiser.latent_dim} and {denoiser.cardinality}"
            )
        frames = max(1, round(float(codec["frame_rate"]) * data.window_seconds))
        windows = {
            split: LatentWindows(data.collection, split, frames, cfg.run.seed)
            for split in (data.train_split, data.val_split)
        }
        captioned, encoder = captioned_splits(windows, data, fabric, denoiser.text_dim, "model.denoiser.text_dim")
        mean, std = latent_statistics(data.collection, data.train_split)
        # A channel nearly constant in the training clips (a semitone no training piece plays) would
        # scale the same channel of any other clip by up to 1 / STD_FLOOR; at least a tenth of the
        # average spread keeps every channel within a few units of the rest.
        std = np.maximum(std, RELATIVE_STD_FLOOR * std.mean())
        self._statistics = (torch.from_numpy(mean).float(), torch.from_numpy(std).float())
        log.info("latent statistics over the training split: std %.3f to %.3f", float(std.min()), float(std.max()))
        return TaskData(
            train=captioned[data.train_split],
            val=captioned[data.val_split],
            collate=collate_latents,
            workers=data.workers,
            info={
                "codec": codec,
                "text_encoder": data.text_encoder,
                "text_encoder_id": encoder.id,
                "window_frames": frames,
            },
        )

    def build_model(self) -> Stage2Model:
        model = Stage2Model(self.config.model)
        if self._statistics is not None:
            model.set_statistics(*self._statistics)
        return model

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> TaskLoss:
        out = model.training_loss(
            batch["latents"], batch["coarse"], batch["text"], batch["text_mask"], batch["frame_mask"]
        )
        return TaskLoss(out.loss)

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return int(batch["frame_mask"].sum())

    def train_flops(self, batch: dict[str, Tensor]) -> float:
        """3 x forward, from the formula per batch shape, remembered."""
        b, frames = batch["coarse"].shape
        key = (frames, batch["text"].shape[1])
        if key not in self._flops:
            self._flops[key] = denoiser_flops(self.config.model.denoiser, *key)
        return 3 * b * self._flops[key]

    def validate(self, model: Stage2Model, batches: Iterable[dict[str, Tensor]], fabric: Fabric) -> float:
        """The flow loss, weighted by real frames, with times and noise drawn from a fixed seed (the
        training RNG untouched), so that two validations differ only by the weights."""
        total = torch.zeros(2, dtype=torch.float64, device=fabric.device)  # (loss x frames, frames)
        with torch.random.fork_rng(devices=[] if fabric.device.type == "cpu" else [fabric.device]):
            for i, batch in enumerate(batches):
                torch.manual_seed(VALIDATION_SEED + i)
                loss = model.training_loss(
                    batch["latents"], batch["coarse"], batch["text"], batch["text_mask"], batch["frame_mask"]
                ).loss
                frames = batch["frame_mask"].sum()
                total += torch.stack([loss.double() * frames, frames.double()])
        if fabric.world_size > 1:
            total = fabric.all_reduce(total, reduce_op="sum")
        return float(total[0] / total[1].clamp(min=1))

    def export(
        self,
        model: Stage2Model,
        out: Path,
        trained: Trained,
        cfg_scale: float | None = None,
        diffusion_steps: int | None = None,
        storage: str | None = None,
        **lm_only: Any,
    ) -> Path:
        """A stage-2 folder (diffusion/pretrained.py), with `diffusion_steps` and `cfg_scale` (its
        guidance on the text) as the sampling defaults stored in its config (None: the config's)."""
        given = [name for name, value in lm_only.items() if value is not None]
        if given:
            raise ConfigError(f"a stage-2 run takes --cfg-scale and --diffusion-steps, not {', '.join(given)}")
        changes = {"cfg_scale": cfg_scale, "steps": diffusion_steps}
        model.cfg = dataclasses.replace(model.cfg, **{k: v for k, v in changes.items() if v is not None})
        return save_stage2(
            model,
            out,
            codec=trained.info["codec"]["name"],
            text_encoder=trained.info["text_encoder"],
            trained_steps=trained.steps,
            source=str(trained.checkpoint),
            storage=storage,
        )
