"""The training config: the task, optimizer, schedule and run settings, typed, from YAML.

`task:` (default `lm`) names what is trained (training/task.py); its config type adds its own
sections, `model` and `data` for the LM (lm_task.py), and may expand shorthands first: the LM's
`model:` is a preset name (`tiny-simba`) or a full model mapping. Dotted overrides
(`--optim.lr=3e-4`, `--model.backbone.n_layers=8`) apply after that, so the resolved config saved
with a run is complete and rebuilds it without the preset files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ssmttm.config import ConfigError, apply_overrides, from_dict, read_yaml
from ssmttm.training.task import task_class


@dataclass
class DataConfig:
    """Windows of a prepared collection and their captions: the LM's data."""

    collection: str = ""  # a folder written by `ssmttm data prepare`
    train_split: str = "train"
    val_split: str = "validation"
    window_seconds: float = 10.0  # training crop; clips shorter than it are padded (padding is not learned)
    text_encoder: str = "minilm"  # short name, hub id or folder, "+tempo" for tempo conditioning; cached per caption
    max_text_tokens: int = 0  # 0: the encoder's own limit
    embedding_cache: str = ""  # default: <collection>/text-embeddings
    workers: int = 2  # data-loader processes


@dataclass
class OptimConfig:
    """AdamW; the defaults are the paper's."""

    lr: float = 1e-4
    weight_decay: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    grad_clip: float = 0.0  # max global grad norm; 0 = no clipping, as in the release


@dataclass
class ScheduleConfig:
    """Linear warm-up, then cosine decay to `final_lr_fraction` of the peak at `max_steps`.

    A run no longer than its warm-up (`warmup_steps >= max_steps`: a 50-step try of a config made
    for 1000) would spend every step warming up; it warms up over a tenth of `max_steps` instead,
    and says so at the start (`fit_to_run`). The saved config keeps the value as written, so a run
    resumed with more steps goes back to it.
    """

    max_steps: int = 100_000
    warmup_steps: int = 500
    final_lr_fraction: float = 0.005


@dataclass
class RunConfig:
    batch_size: int = 128  # effective batch, over devices and gradient accumulation
    micro_batch_size: int = 16  # per device and forward pass
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16 where supported
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    seed: int = 0
    log_every: int = 10  # steps between train-loss rows
    val_every: int = 1000  # steps between validations (and at the end)
    val_batches: int = 0  # micro-batches per validation; 0 = the whole split
    # Steps between checkpoints (and one at the end). A run shorter than this checkpoints every
    # tenth of max_steps instead (`fit_to_run`), so that a kill -9 leaves something to resume from.
    checkpoint_every: int = 1000
    # Also checkpoint once this much wall-clock time has passed since the last checkpoint (any
    # trigger), for runs whose steps are slow: a kill -9 cannot be caught. 0 = off.
    checkpoint_minutes: float = 10.0
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    # Fine-tuning: start from the LM weights of an exported model folder (or hub id) instead of a
    # random init; the model config must match it, except for a beat clock it did not have.
    init_from: str = ""


@dataclass
class TrainConfig:
    """What every run has; a task's config type adds its own sections (lm_task.LMTrainConfig)."""

    task: str = "lm"  # a name in training/task.py's TASKS
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        run = self.run
        per_pass = run.micro_batch_size * run.devices * run.num_nodes
        if min(run.batch_size, run.micro_batch_size, run.devices, run.num_nodes) < 1:
            raise ConfigError("run.batch_size, micro_batch_size, devices and num_nodes must be positive")
        if run.batch_size % per_pass:
            raise ConfigError(
                f"run.batch_size {run.batch_size} is not a multiple of micro_batch_size x devices x nodes ({per_pass})"
            )
        if self.schedule.max_steps < 1 or self.schedule.warmup_steps < 0:
            raise ConfigError("schedule.max_steps must be positive and warmup_steps not negative")
        if min(run.log_every, run.val_every, run.checkpoint_every, run.max_bad_steps) < 1:
            raise ConfigError("run.log_every, val_every, checkpoint_every and max_bad_steps must be positive")
        if not 0 <= run.checkpoint_minutes < math.inf:
            raise ConfigError(
                f"run.checkpoint_minutes must be 0 (off) or a positive number, not {run.checkpoint_minutes}"
            )

    @classmethod
    def expand(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The YAML mapping with this config's shorthands written out, before the overrides."""
        return data

    @classmethod
    def override_shorthand(cls, data: dict[str, Any], key: str, value: Any) -> bool:
        """Apply an override of a shorthand (the LM's `model.preset`) to the unexpanded mapping, so
        that it changes what `expand` writes out; False when `key` is no shorthand of this config."""
        return False

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each device."""
        run = self.run
        return run.batch_size // (run.micro_batch_size * run.devices * run.num_nodes)


SHORT_RUN_SHARE = 10  # a run shorter than its warm-up or checkpoint interval gets 1/10 of max_steps


@dataclass(frozen=True)
class RunFit:
    """The warm-up and checkpoint interval a run uses: the config's, or scaled to a short run."""

    warmup_steps: int
    checkpoint_every: int
    note: str = ""  # one line saying what was scaled, for the start of the run; "" when nothing was


def fit_to_run(config: TrainConfig) -> RunFit:
    """Scale `warmup_steps >= max_steps` and `checkpoint_every > max_steps` to a tenth of the run.

    Warm-up 0 (a run under 10 steps) is no warm-up; checkpoints come at least every step.
    """
    steps, warmup, every = config.schedule.max_steps, config.schedule.warmup_steps, config.run.checkpoint_every
    notes = []
    if every > steps:
        fitted_every = max(1, steps // SHORT_RUN_SHARE)
        notes.append(f"max_steps {steps} < checkpoint_every {every}: checkpointing every {fitted_every} steps")
        every = fitted_every
    if warmup and warmup >= steps:
        fitted_warmup = steps // SHORT_RUN_SHARE
        notes.append(f"warmup_steps {warmup} >= max_steps {steps}: warm-up {warmup} -> {fitted_warmup} steps")
        warmup = fitted_warmup
    return RunFit(warmup, every, "; ".join(notes))


def resolve(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """The config of the mapping's task from a YAML mapping: expands its shorthands, then applies
    overrides (those of a shorthand, such as `model.preset=demo-simba3`, first). A mapping without
    `task:` (every run from before tasks) is the LM's."""
    task = data.get("task", TrainConfig.task)
    cls = task_class(task).config_type
    data, rest = dict(data), []
    for item in (o.removeprefix("--") for o in overrides or []):
        key, sep, raw = item.partition("=")
        if not (sep and cls.override_shorthand(data, key, yaml.safe_load(raw))):
            rest.append(item)
    config = from_dict(cls, apply_overrides(cls.expand(data), rest))
    if config.task != task:  # the type was chosen by the mapping's task, before the overrides
        raise ConfigError(f"task: an override cannot change the task ({task!r}); set it in the config file")
    return config


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return resolve(read_yaml(path), overrides)
