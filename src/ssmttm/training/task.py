"""What the loop trains: a task builds the model and its data, computes the loss of a batch,
validates and exports. The loop (trainer.py) owns everything else: devices, the optimizer and
schedule, the non-finite guard, checkpoints and exact resume, logging.

A run's `task:` names its task in TASKS; each task brings its own config type (the loop's sections
plus its own `model` and `data`). Another kind of model is one file with a Task subclass and its
config, plus one line in TASKS (docs/training.md).

Exactness is shared: the loop seeds every micro-batch and restores the data position, so a task
keeps it as long as its model draws randomness from the global RNGs and its dataset's items are a
function of (epoch, index).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from ssmttm.config import ConfigError
from ssmttm.training.data import EpochDataset

if TYPE_CHECKING:
    from lightning.fabric import Fabric

    from ssmttm.training.config import TrainConfig

# Task name -> "module:class", imported when a run asks for it, so a task's dependencies load
# only for its runs.
TASKS: dict[str, str] = {
    "lm": "ssmttm.training.lm_task:LMTask",
    "stage2": "ssmttm.training.stage2_task:Stage2Task",
}


@dataclass
class TaskData:
    """A task's datasets, as the loop batches them: micro-batches of `collate`d items, in the
    seeded order of training/data.py."""

    train: EpochDataset
    val: EpochDataset
    collate: Callable[[list[Any]], Any]
    workers: int  # data-loader processes for the training stream
    info: dict[str, Any]  # written to run.json: what export needs besides the weights


@dataclass
class TaskLoss:
    loss: Tensor  # scalar, what the step minimises
    metrics: dict[str, Tensor] = field(default_factory=dict)  # scalars, logged to TensorBoard as train/<name>


@dataclass(frozen=True)
class Trained:
    """What export knows of the run a model comes from."""

    info: dict[str, Any]  # run.json
    steps: int
    checkpoint: Path


class Task(ABC):
    """One per run, built from its config; it holds no training state, so a resumed run needs
    nothing of it beyond the config."""

    config_type: ClassVar[type[TrainConfig]]
    # Methods of the model besides `forward` that compute_loss calls: under DDP they must run
    # through the wrapper's forward, or the gradients would not be synchronised.
    forward_methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def data(self, fabric: Fabric) -> TaskData:
        """The datasets, after checking they fit the model config. Every rank calls it; work done
        once for all (say, filling a cache) is rank 0's, followed by `fabric.barrier()`."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model with its random initial weights (the loop seeds torch first)."""

    def init_from(self, model: nn.Module, source: str) -> None:
        """Load a fresh run's starting weights from `source` (run.init_from: an export)."""
        raise ConfigError(f"run.init_from: task {self.config.task!r} cannot start from an exported model")

    def weight_decayed(self, name: str, param: nn.Parameter) -> bool:
        """Matrices decay; biases, norms and embedding tables do not."""
        return param.dim() >= 2 and "embeddings" not in name

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Any) -> TaskLoss:
        """The training loss of one micro-batch, already on the device. `model` is Fabric's wrapper:
        call `forward` or one of `forward_methods` on it."""

    @abstractmethod
    def tokens(self, batch: Any) -> int:
        """What throughput counts in a micro-batch: sequence columns for the LM, items for others."""

    @abstractmethod
    def train_flops(self, batch: Any) -> float:
        """Training FLOPs (forward and backward) of one micro-batch; 0 where no formula exists."""

    @abstractmethod
    def validate(self, model: nn.Module, batches: Iterable[Any], fabric: Fabric) -> float:
        """The validation loss over `batches`: this rank's share, on the device, with the bare model
        in eval mode and no grad. Sums over ranks go through `fabric.all_reduce`, on every rank."""

    @abstractmethod
    def export(self, model: nn.Module, out: Path, trained: Trained, **defaults: Any) -> Path:
        """Write `model` to the folder `out` in the form that loads without training code.
        `defaults`: settings stored with it (generation defaults), None for the default."""


def task_class(name: str) -> type[Task]:
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def make_task(config: TrainConfig) -> Task:
    return task_class(config.task)(config)
