"""The loop trains any task: a toy denoiser, defined here, learns through the same Trainer as the
LM, resumes bit for bit from a checkpoint after a crash mid-epoch, logs its own metric and
exports. And the task comes from the config: `task:` picks the config type, LM by default."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import default_collate

from ssmttm.config import ConfigError
from ssmttm.training.config import TrainConfig, resolve
from ssmttm.training.export import export_run
from ssmttm.training.layout import last_checkpoint
from ssmttm.training.lm_task import LMTrainConfig
from ssmttm.training.task import TASKS, Task, TaskData, TaskLoss, Trained
from ssmttm.training.trainer import Trainer


@dataclass
class DenoiserConfig:
    dim: int = 8
    hidden: int = 32
    dropout: float = 0.1


@dataclass
class SignalsConfig:
    train_items: int = 40
    val_items: int = 16
    noise: float = 0.5
    workers: int = 0


@dataclass
class DenoiseTrainConfig(TrainConfig):
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    data: SignalsConfig = field(default_factory=SignalsConfig)


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.dim)
        )

    def forward(self, noisy: Tensor) -> Tensor:
        return self.net(noisy)  # (B, dim)


class Signals:
    """Clean vectors on a 2-d plane in `dim` dimensions, with fresh noise each epoch, drawn from
    (epoch, index) alone: what the loop's exact resume asks of a dataset."""

    def __init__(self, clean: Tensor, noise: float) -> None:
        self.clean, self.noise, self.epoch = clean, noise, 0

    def __len__(self) -> int:
        return len(self.clean)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(self.epoch * 100_003 + index)
        clean = self.clean[index]
        return {"clean": clean, "noisy": clean + self.noise * torch.randn(clean.shape, generator=gen)}


class DenoiseTask(Task):
    config_type = DenoiseTrainConfig
    config: DenoiseTrainConfig

    def data(self, fabric) -> TaskData:
        data, dim = self.config.data, self.config.model.dim
        gen = torch.Generator().manual_seed(0)
        plane = torch.linalg.qr(torch.randn(dim, 2, generator=gen)).Q.T  # (2, dim)
        clean = torch.randn(data.train_items + data.val_items, 2, generator=gen) @ plane  # (N, dim)
        return TaskData(
            train=Signals(clean[: data.train_items], data.noise),
            val=Signals(clean[data.train_items :], data.noise),
            collate=default_collate,
            workers=data.workers,
            info={"plane": plane.tolist()},
        )

    def build_model(self) -> Denoiser:
        return Denoiser(self.config.model)

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> TaskLoss:
        error = model(batch["noisy"]) - batch["clean"]
        return TaskLoss(error.pow(2).mean(), {"abs_error": error.abs().mean()})

    def tokens(self, batch: dict[str, Tensor]) -> int:
        return len(batch["clean"])

    def train_flops(self, batch: dict[str, Tensor]) -> float:
        cfg = self.config.model
        return 3 * 2 * len(batch["clean"]) * 2 * cfg.dim * cfg.hidden  # 3 x forward of two matmuls

    def validate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]], fabric) -> float:
        total = torch.zeros(2, dtype=torch.float64, device=fabric.device)  # squared error, values
        for batch in batches:
            error = model(batch["noisy"]) - batch["clean"]
            total += torch.stack([error.double().pow(2).sum(), torch.tensor(error.numel())])
        if fabric.world_size > 1:
            total = fabric.all_reduce(total, reduce_op="sum")
        return float(total[0] / total[1])

    def export(self, model: nn.Module, out: Path, trained: Trained, **defaults: Any) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), out / "model.safetensors")
        config = {"model": asdict(self.config.model), "trained_steps": trained.steps}
        (out / "config.json").write_text(json.dumps(config))
        return out


@pytest.fixture
def denoise_task(monkeypatch):
    monkeypatch.setitem(TASKS, "denoise", f"{__name__}:DenoiseTask")


def denoise_config() -> TrainConfig:
    """40 training items in micro-batches of 4, two per step: 5 steps an epoch, checkpoints every 3."""
    run = {"batch_size": 8, "micro_batch_size": 4, "precision": "32-true", "accelerator": "cpu"}
    run |= {"log_every": 1, "val_every": 4, "checkpoint_every": 3, "checkpoint_minutes": 0}
    return resolve(
        {"task": "denoise", "optim": {"lr": 3e-2}, "schedule": {"max_steps": 12, "warmup_steps": 2}, "run": run}
    )


def rows(run_dir: Path, kind: str) -> list[tuple[int, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f) if r["kind"] == kind]


def weights(run_dir: Path) -> dict[str, Tensor]:
    return torch.load(last_checkpoint(run_dir), weights_only=True)["model"]


def test_a_second_task_learns_resumes_bit_for_bit_and_exports(denoise_task, tmp_path, monkeypatch):
    config = denoise_config()
    assert isinstance(config, DenoiseTrainConfig)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    counters = Trainer(config, whole).fit()
    assert (counters.step, counters.tokens) == (12, 12 * 8)
    val = [float(loss) for _, loss in rows(whole, "val")]
    # handing back the noisy input errs by noise^2 per value, projecting onto the plane by a quarter of it
    assert len(val) == 3 and val[-1] < 0.5 * config.data.noise**2, val

    real, calls = DenoiseTask.compute_loss, []

    def dies_in_step_5(self, model, batch):
        calls.append(1)
        if len(calls) == 9:  # two micro-batches a step: step 5's first
            raise KeyboardInterrupt  # stands for kill -9: nothing after this point runs
        return real(self, model, batch)

    monkeypatch.setattr(DenoiseTask, "compute_loss", dies_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, killed).fit()
    saved = torch.load(last_checkpoint(killed), weights_only=True)
    assert saved["counters"]["step"] == 3 and saved["data"] == {"epoch": 0, "batch": 6}  # mid-epoch
    monkeypatch.setattr(DenoiseTask, "compute_loss", real)
    assert Trainer(config, killed).fit().step == 12

    assert rows(killed, "train") == rows(whole, "train")  # every step once, the same loss to the last digit
    assert rows(killed, "val") == rows(whole, "val")
    expected, got = weights(whole), weights(killed)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(whole / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/abs_error")] == list(range(1, 13))

    out = export_run(killed, tmp_path / "export")
    exported = json.loads((out / "config.json").read_text())
    assert exported["trained_steps"] == 12
    model = Denoiser(DenoiserConfig(**exported["model"])).eval()
    model.load_state_dict(load_file(out / "model.safetensors"))
    trained = Denoiser(config.model).eval()
    trained.load_state_dict(expected)
    noisy = torch.randn(3, config.model.dim)
    assert torch.equal(model(noisy), trained(noisy))


def test_the_config_names_the_task_and_old_configs_are_the_lm(denoise_task):
    old = resolve({"model": "tiny-simba"})  # a run config from before tasks
    assert isinstance(old, LMTrainConfig) and old.task == "lm"
    assert resolve({"task": "denoise"}, ["--model.hidden=16"]).model == DenoiserConfig(hidden=16)
    with pytest.raises(ConfigError, match="unknown task 'nope'; choose one of: denoise, lm"):
        resolve({"task": "nope"})
    with pytest.raises(ConfigError, match="an override cannot change the task"):
        resolve({"task": "denoise"}, ["task=lm"])
    with pytest.raises(ConfigError, match="unknown key in model: backbone"):
        resolve({"task": "denoise", "model": {"backbone": {}}})  # sections are the task's own
