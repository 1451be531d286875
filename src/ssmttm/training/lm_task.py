"""The music LM as a training task: token windows of a prepared collection with their cached
caption embeddings, the LM's cross-entropy, and an ssmttm.pretrained folder as the export."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ssmttm.conditioning import Conditioning
from ssmttm.config import ConfigError, SamplingConfig, merged, to_dict
from ssmttm.data.dataset import TokenWindows
from ssmttm.data.shards import TokenStore
from ssmttm.diffusion.pretrained import STAGE2_FOLDER, Stage2Error, load_stage2, save_stage2
from ssmttm.hub import first_line
from ssmttm.lm import LMConfig, MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import PretrainedError, load_weights, save_pretrained
from ssmttm.training.config import DataConfig, TrainConfig
from ssmttm.training.data import captioned_splits, collate, require_prepared
from ssmttm.training.flops import forward_flops
from ssmttm.training.task import Task, TaskData, TaskLoss, Trained
from ssmttm.weights import state_dict_problems

if TYPE_CHECKING:
    from lightning.fabric import Fabric

log = logging.getLogger(__name__)


@dataclass
class LMTrainConfig(TrainConfig):
    model: LMConfig = field(default_factory=LMConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def expand(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`model:` may name a preset, or be a mapping with `preset:` and the keys that differ
        from it (`{preset: demo-simba, num_codebooks: 1}`), merged section by section."""
        model = data.get("model")
        if isinstance(model, str):
            data["model"] = to_dict(load_preset(model))
        elif isinstance(model, dict) and "preset" in model:
            changes = {k: v for k, v in model.items() if k != "preset"}
            data["model"] = merged(to_dict(load_preset(model["preset"])), changes)
        return data

    @classmethod
    def override_shorthand(cls, data: dict[str, Any], key: str, value: Any) -> bool:
        """`--model.preset=NAME` swaps the preset a config names and keeps the keys it changes;
        `--model=NAME` replaces the whole model section with the preset."""
        if key == "model" and isinstance(value, str):
            data["model"] = value
            return True
        model = data.get("model")
        if key != "model.preset" or not (isinstance(model, str) or (isinstance(model, dict) and "preset" in model)):
            return False
        data["model"] = {**(model if isinstance(model, dict) else {}), "preset": value}
        return True


class LMTask(Task):
    config_type = LMTrainConfig
    forward_methods = ("compute_loss",)
    config: LMTrainConfig

    def __init__(self, config: LMTrainConfig) -> None:
        super().__init__(config)
        self._flops: dict[tuple[int, int], float] = {}

    def data(self, fabric: Fabric) -> TaskData:
        cfg = self.config
        data = cfg.data
        if not data.collection:
            raise ConfigError("data.collection is not set: the folder `ssmttm data prepare` wrote")
        require_prepared(data.collection)
        codec = TokenStore(data.collection).manifest["codec"]
        if codec["cardinality"] != cfg.model.cardinality or codec["num_codebooks"] < cfg.model.num_codebooks:
            raise ConfigError(
                f"the collection's codec has {codec['num_codebooks']} codebooks of {codec['cardinality']}; "
                f"the model wants {cfg.model.num_codebooks} of {cfg.model.cardinality}"
            )
        frames = max(1, round(float(codec["frame_rate"]) * data.window_seconds))
        windows = {
            split: TokenWindows(
                data.collection, split, frames, cfg.model.num_codebooks, cfg.model.special_token, cfg.run.seed
            )
            for split in (data.train_split, data.val_split)
        }
        captioned, encoder = captioned_splits(windows, data, fabric, cfg.model.text_dim, "model.text_dim")
        return TaskData(
            train=captioned[data.train_split],
            val=captioned[data.val_split],
            collate=collate,
            workers=data.workers,
            info={
                "codec": codec,
                "text_encoder": data.text_encoder,
                "text_encoder_id": encoder.id,
                "window_frames": frames,
            },
        )

    def build_model(self) -> MusicLM:
        return MusicLM(self.config.model)

    def init_from(self, model: MusicLM, source: str) -> None:
        init_from_pretrained(model, source)

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> TaskLoss:
        out = model.compute_loss(batch["codes"], Conditioning(batch["text"], batch["text_mask"], batch["clock"]))
        return TaskLoss(out.loss)

    def tokens(self, batch: dict[str, Tensor]) -> int:
        b, _, frames = batch["codes"].shape
        return b * frames

    def train_flops(self, batch: dict[str, Tensor]) -> float:
        """3 x forward, from the formula per batch shape, remembered: captions come in a handful of lengths."""
        b, _, frames = batch["codes"].shape
        key = (frames, batch["text"].shape[1])
        if key not in self._flops:
            self._flops[key] = forward_flops(self.config.model, *key)
        return 3 * b * self._flops[key]

    def validate(self, model: MusicLM, batches: Iterable[dict[str, Tensor]], fabric: Fabric) -> float:
        """Plain cross-entropy (no label smoothing), summed over codebooks."""
        sums = torch.zeros(self.config.model.num_codebooks, dtype=torch.float64, device=fabric.device)
        counts = torch.zeros_like(sums)
        for batch in batches:
            out = model.compute_loss(
                batch["codes"], Conditioning(batch["text"], batch["text_mask"], batch["clock"]), label_smoothing=0.0
            )
            sums += out.per_codebook.double() * out.num_tokens
            counts += out.num_tokens
        if fabric.world_size > 1:
            sums, counts = fabric.all_reduce(sums, reduce_op="sum"), fabric.all_reduce(counts, reduce_op="sum")
        return float((sums / counts.clamp(min=1)).sum())

    def export(
        self,
        model: MusicLM,
        out: Path,
        trained: Trained,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        stage2: str | None = None,
        diffusion_steps: int | None = None,
        storage: str | None = None,
    ) -> Path:
        """An ssmttm.pretrained folder: weights, model config, codec and text-encoder ids, and
        the generation defaults. `stage2`: a stage-2 folder to pair with this LM (its stage 1),
        copied into `out/stage2/` after checking it fits: a two-stage model. `storage`: the dtype
        of both stages' weight matrices in the files (`weights.stored_as`)."""
        if diffusion_steps is not None:
            raise ConfigError("--diffusion-steps is a stage-2 run's default; this run is an LM (give it with --stage2)")
        given = {"cfg_scale": cfg_scale, "temperature": temperature, "top_k": top_k}
        generation = SamplingConfig(**{k: v for k, v in given.items() if v is not None})
        codec, text_encoder = trained.info["codec"]["name"], trained.info["text_encoder"]
        if stage2 is not None:
            copy_stage2(
                Path(stage2), Path(out) / STAGE2_FOLDER, codec, text_encoder, self.config.model.num_codebooks, storage
            )
        return save_pretrained(
            model,
            out,
            codec=codec,
            text_encoder=text_encoder,
            generation=generation,
            trained_steps=trained.steps,
            source=str(trained.checkpoint),
            stage2=STAGE2_FOLDER if stage2 is not None else "",
            storage=storage,
        )


def copy_stage2(
    source: Path, target: Path, codec: str, text_encoder: str, num_codebooks: int, storage: str | None = None
) -> None:
    """A stage-2 folder (or a stage-2 run's export) copied to `target`, after checking it renders
    for this stage 1: the same codec and text encoder, and an LM that predicts codebook 0."""
    try:
        model, s2 = load_stage2(source)
    except Stage2Error as err:
        raise ConfigError(f"--stage2: {err}") from None
    if (s2.codec, s2.text_encoder) != (codec, text_encoder):
        raise ConfigError(
            f"--stage2 {source} renders codec {s2.codec!r} from {s2.text_encoder!r} text; this LM is for codec "
            f"{codec!r} and {text_encoder!r}"
        )
    if num_codebooks != 1:
        log.warning("pairing a stage 2 with an LM of %d codebooks: stage 2 reads only the first", num_codebooks)
    save_stage2(
        model,
        target,
        codec=s2.codec,
        text_encoder=s2.text_encoder,
        trained_steps=s2.trained_steps,
        source=s2.source,
        storage=storage,
    )


def init_from_pretrained(lm: MusicLM, source: str) -> None:
    """Load an exported model's LM weights into `lm`. Only the beat clock may be missing (it starts
    silent, so the fine-tuned model starts as the exported one); anything else that does not
    match is a ConfigError naming it."""
    try:
        state = load_weights(source)
    except PretrainedError as err:
        raise ConfigError(f"run.init_from: cannot read {source} ({first_line(err)})") from None
    expected = lm.state_dict()
    may_miss = {key for key in expected if key.startswith("clock.")}
    problems = state_dict_problems({k: v for k, v in expected.items() if k not in may_miss}, state)
    if problems:
        raise ConfigError(f"run.init_from: {source} does not fit model: {'; '.join(problems)}")
    lm.load_state_dict(state, strict=False)
    log.info("initialised from %s", source)


def unigram_cross_entropy(train: TokenWindows, val: TokenWindows, cardinality: int) -> float:
    """The baseline a model must beat: each codebook's unigram distribution from the training
    tokens (add-one smoothed), its cross-entropy on the validation tokens, summed over codebooks."""

    def counts(windows: TokenWindows) -> Tensor:
        total = torch.zeros(windows.num_codebooks, cardinality, dtype=torch.float64)
        for record in windows.records:
            tokens = torch.from_numpy(windows.store.tokens(record)[: windows.num_codebooks].astype(np.int64))
            for k in range(windows.num_codebooks):
                total[k] += torch.bincount(tokens[k], minlength=cardinality)
        return total

    train_counts, val_counts = counts(train) + 1, counts(val)
    log_p = (train_counts / train_counts.sum(dim=1, keepdim=True)).log()
    return float((-(val_counts * log_p).sum(dim=1) / val_counts.sum(dim=1)).sum())
