"""The training loop, on Lightning Fabric: devices, DDP/FSDP, precision and launching come from
Lightning; the loop is ours, because exact resume and the non-finite guard need to own every step.
What it trains (model, data, loss, validation, export) is the run's task (training/task.py).
What a run writes is described in training/layout.py.

Exactness: each micro-batch seeds Python, NumPy and torch from (seed, step, micro-batch, rank),
the data order is a function of (seed, epoch) and the position is saved, so a resumed run takes
the same steps, bit for bit, as one that was never stopped.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssmttm._allocator import tune_allocator
from ssmttm.config import ConfigError, read_yaml, save_yaml, to_dict
from ssmttm.files import write_json, write_text
from ssmttm.training.checkpoint import Counters, load_checkpoint, rng_states, save_checkpoint, set_rng_states
from ssmttm.training.config import TrainConfig, fit_to_run, resolve
from ssmttm.training.data import EpochSampler, TrainBatches
from ssmttm.training.layout import (
    CHECKPOINT_DIR,
    CONFIG,
    LAST,
    METRIC_FIELDS,
    METRICS,
    RUN_INFO,
    TENSORBOARD,
    last_checkpoint,
)
from ssmttm.training.task import make_task

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what is left on disk."""


def lr_factor(step: int, warmup: int, max_steps: int, final: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `final` x peak at `max_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_micro_batch(seed: int, step: int, micro: int, rank: int) -> None:
    """Dropout and caption dropout draw from the global RNGs: make them a function of the position."""
    mixed = ((seed * 1_000_003 + step) * 10_007 + micro) * 101 + rank
    random.seed(mixed)
    np.random.seed(mixed % 2**32)
    torch.manual_seed(mixed % 2**63)


def build_fabric(config: TrainConfig):
    from lightning.fabric import Fabric

    run = config.run
    precision = run.precision
    if precision == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and run.accelerator != "cpu"
        precision = "bf16-mixed" if bf16 else "32-true"
    strategy = run.strategy
    if strategy == "auto" and run.devices * run.num_nodes > 1:
        strategy = "ddp"
    if strategy == "fsdp":  # gathered into one file, so checkpoints stay single files renamed into place
        from lightning.fabric.strategies import FSDPStrategy

        strategy = FSDPStrategy(state_dict_type="full")
    return Fabric(
        accelerator=run.accelerator,
        devices=run.devices,
        num_nodes=run.num_nodes,
        strategy=strategy,
        precision=precision,  # type: ignore[arg-type]
    )


class Trainer:
    """Train `config` in `run_dir`, resuming from its last checkpoint when there is one."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        fabric=None,
        config_may_change: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """config_may_change: resuming with overrides (say, more steps) is deliberate, not a mix-up
        of run folders; without it a run folder only continues under the config it was started with.
        clock: seconds, for run.checkpoint_minutes (tests pass one that runs fast)."""
        self.config, self.run_dir = config, Path(run_dir)
        self.config_may_change = config_may_change
        self.fabric = fabric or build_fabric(config)
        self.fitted = fit_to_run(config)  # warm-up and checkpoint interval, scaled to a short run
        self.clock = clock
        self._saved_at = 0.0  # self.clock() at the last checkpoint (or the start of the loop)
        self.counters = Counters()
        self.task = make_task(config)

    # -- setup -------------------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        saved = self.run_dir / CONFIG
        if saved.is_file() and not self.config_may_change and resolve(read_yaml(saved)) != self.config:
            raise ConfigError(
                f"{self.run_dir} holds a run with another config; use a new --out folder, "
                f"or `ssmttm train --resume {self.run_dir}` to go on with its own"
            )

    def _data(self) -> None:
        fabric, run = self.fabric, self.config.run
        data = self.data = self.task.data(fabric)
        sampler = EpochSampler(len(data.train), run.micro_batch_size, run.seed, fabric.global_rank, fabric.world_size)
        self.batches = TrainBatches(data.train, sampler, data.collate, data.workers)

    def _model(self) -> None:
        cfg, task = self.config, self.task
        torch.manual_seed(cfg.run.seed)  # the same initial weights for every run of this config
        module = task.build_model()
        if cfg.run.init_from and last_checkpoint(self.run_dir) is None:
            # only a fresh run starts from the export: a resumed one has its weights in the checkpoint,
            # and must not fail because the export has since moved or is named by a relative path
            task.init_from(module, cfg.run.init_from)
        decay = [p for n, p in module.named_parameters() if task.weight_decayed(n, p)]
        no_decay = [p for n, p in module.named_parameters() if not task.weight_decayed(n, p)]
        decayed, plain = self._group_settings()
        optimizer = torch.optim.AdamW([{"params": decay, **decayed}, {"params": no_decay, **plain}])
        model, optimizer = self.fabric.setup(module, optimizer)
        for name in task.forward_methods:
            model.mark_forward_method(name)  # so DDP sees the training step as a forward
        sched, warmup = cfg.schedule, self.fitted.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup, sched.max_steps, sched.final_lr_fraction)
        )
        # module: the bare model, for validation and the finite check; model: Fabric's wrapper, for training
        self.module, self.model, self.optimizer, self.scheduler = module, model, optimizer, scheduler

    def _restore(self) -> bool:
        path = last_checkpoint(self.run_dir)
        if path is None:
            return False
        rest = load_checkpoint(self.fabric, path, {"model": self.model, "optimizer": self.optimizer})
        self.scheduler.load_state_dict(rest["scheduler"])
        self._apply_optim_settings()
        self.batches.load_state_dict(rest["data"])
        self.counters = Counters(**rest["counters"])
        set_rng_states(rest["rng"])
        log.info("resumed %s at step %d", self.run_dir, self.counters.step)
        return True

    def _group_settings(self) -> tuple[dict, dict]:
        """AdamW's settings for the weight-decayed parameter group, then the other one."""
        optim = self.config.optim
        shared = {"lr": optim.lr, "betas": (optim.beta1, optim.beta2), "eps": optim.eps}
        return {**shared, "weight_decay": optim.weight_decay}, {**shared, "weight_decay": 0.0}

    def _apply_optim_settings(self) -> None:
        """The config's optimizer settings over the checkpoint's. Loading an optimizer and a
        scheduler brings back the saved learning rate, betas and weight decay, so `--resume RUN
        --optim.lr=...` would be silently ignored; without overrides this changes nothing."""
        lr, groups = self.config.optim.lr, self.optimizer.param_groups
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, settings in zip(groups, self._group_settings(), strict=True):
            # the next update's rate, under the (possibly changed) schedule
            group.update(settings, initial_lr=lr, lr=lr * factor)
        self.scheduler.base_lrs = [lr] * len(groups)

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self) -> Counters:
        # A library must not retune its importer's malloc, but a training process is ours: on the
        # CPU every layer allocates and frees large activations, which glibc's defaults turn into
        # page faults and zeroed pages each time (ssmttm/_allocator.py). Set in every process.
        tune_allocator()
        fabric, cfg = self.fabric, self.config
        if not fabric._launched:  # with several devices this starts the other processes (running this command)
            fabric.launch()
        if fabric.global_rank == 0:
            self._check_run_dir()
            if self.fitted.note:
                log.warning(self.fitted.note)
        fabric.barrier()
        # Data and model before the run folder: a start that fails on them (no prepared data, an
        # encoder or init_from that does not fit) leaves no empty run folder behind.
        self._data()
        self._model()
        if fabric.global_rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        fabric.barrier()
        resumed = self._restore()
        if fabric.global_rank == 0:
            save_yaml(cfg, self.run_dir / CONFIG)
            write_json(self.run_dir / RUN_INFO, self.data.info)
        self.logger = _Logger(self.run_dir, self.counters.step, resumed, fabric.global_rank == 0)
        try:
            self._loop()
        finally:
            self.logger.close()
        return self.counters

    def _loop(self) -> None:
        fabric, cfg, c = self.fabric, self.config, self.counters
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.schedule.max_steps, initial=c.step, desc="train", unit="step", disable=fabric.global_rank != 0
        )
        stream = iter(self.batches)
        self.model.train()
        self._saved_at = self.clock()
        while c.step < cfg.schedule.max_steps:
            start = time.perf_counter()
            step = self._train_step(stream)
            c.wall_s += time.perf_counter() - start
            c.tokens += step.tokens
            c.flops += step.flops
            if not step.finite:
                c.skipped_steps += 1
                c.bad_streak += 1
                log.warning("step %d: non-finite loss or gradient; skipped (%d in a row)", c.step + 1, c.bad_streak)
                if c.bad_streak >= cfg.run.max_bad_steps:
                    self._checkpoint()  # the parameters are still the last good ones: no bad step touched them
                    raise TrainingError(
                        f"stopped at step {c.step}: {c.bad_streak} consecutive steps had a non-finite loss or "
                        f"gradient; last good checkpoint: {self.run_dir / CHECKPOINT_DIR / LAST}"
                    )
                continue
            c.bad_streak = 0
            c.step += 1
            lr = self.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{step.loss:.3f}", tok_s=f"{c.tokens / max(c.wall_s, 1e-9):.0f}")
            if c.step % cfg.run.log_every == 0:
                self.logger.write("train", c, step.loss, lr, step.metrics)
            last = c.step == cfg.schedule.max_steps
            if c.step % cfg.run.val_every == 0 or last:
                self.logger.write("val", c, self.validate(), lr)
                self.model.train()
            if c.step % self.fitted.checkpoint_every == 0 or last or self._checkpoint_due():
                self._checkpoint()
        bar.close()

    def _train_step(self, stream) -> _Step:
        """One optimizer step over `accumulation` micro-batches."""
        fabric, cfg, c, task = self.fabric, self.config, self.counters, self.task
        accumulation = cfg.accumulation
        total, tokens, flops = 0.0, 0, 0.0
        metrics: dict[str, float] = {}
        for micro in range(accumulation):
            batch = fabric.to_device(next(stream))
            seed_micro_batch(cfg.run.seed, c.step, micro, fabric.global_rank)
            syncless = fabric.world_size > 1 and micro < accumulation - 1  # all-reduce once, after the last one
            with fabric.no_backward_sync(self.model, enabled=syncless):
                out = task.compute_loss(self.model, batch)
                fabric.backward(out.loss / accumulation)
            total += float(out.loss.detach())
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + float(value.detach()) / accumulation
            tokens += task.tokens(batch)
            flops += task.train_flops(batch)
        world = fabric.world_size
        finite = torch.tensor(float(math.isfinite(total) and self._grads_finite()), device=fabric.device)
        finite = bool(fabric.all_reduce(finite, reduce_op="min")) if world > 1 else bool(finite)
        if finite:
            if cfg.optim.grad_clip > 0:
                fabric.clip_gradients(self.model, self.optimizer, max_norm=cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = total / accumulation
        if world > 1:
            loss = float(fabric.all_reduce(torch.tensor(loss, device=fabric.device), reduce_op="mean"))
            if metrics:
                means = fabric.all_reduce(torch.tensor(list(metrics.values()), device=fabric.device), reduce_op="mean")
                metrics = dict(zip(metrics, means.tolist(), strict=True))
        return _Step(loss, tokens * world, flops * world, finite, metrics)

    def _grads_finite(self) -> bool:
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))) if grads else True

    @torch.no_grad()
    def validate(self) -> float:
        """The task's validation loss on the validation split, each rank taking every world_size-th
        item. The split never leaves epoch 0, so every validation sees the same items."""
        fabric, cfg, val = self.fabric, self.config, self.data.val
        self.model.eval()
        indices = list(range(fabric.global_rank, len(val), fabric.world_size))
        size = cfg.run.micro_batch_size
        chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
        if cfg.run.val_batches:
            chunks = chunks[: cfg.run.val_batches]
        batches = (fabric.to_device(self.data.collate([val[i] for i in chunk])) for chunk in chunks)
        return self.task.validate(self.module, batches, fabric)

    def _checkpoint_due(self) -> bool:
        """Whether run.checkpoint_minutes have passed since the last checkpoint. Every rank takes
        part in a save, so all go by rank 0's clock rather than each by its own."""
        minutes = self.config.run.checkpoint_minutes
        if not minutes:
            return False
        due = self.clock() - self._saved_at >= 60 * minutes
        if self.fabric.world_size > 1:
            due = bool(self.fabric.broadcast(due, src=0))
        return due

    def _checkpoint(self) -> None:
        state = {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler.state_dict(),
            "data": self.batches.state_dict(),
            "counters": self.counters.to_dict(),
            "rng": rng_states(),
            "config": to_dict(self.config),
        }
        save_checkpoint(self.fabric, self.run_dir / CHECKPOINT_DIR / LAST, state)
        self._saved_at = self.clock()  # the next timed checkpoint counts from this one, whatever wrote it


@dataclass(frozen=True)
class _Step:
    """One optimizer step: its mean loss and metrics, and what it trained, over all devices."""

    loss: float
    tokens: int
    flops: float
    finite: bool
    metrics: dict[str, float]


class _Logger:
    """metrics.csv and TensorBoard, on rank 0. A resumed run first drops the rows its killed
    predecessor wrote after the checkpoint, so each step appears once."""

    def __init__(self, run_dir: Path, step: int, resumed: bool, active: bool) -> None:
        self.active = active
        if not active:
            return
        path = run_dir / METRICS
        rows = []
        if resumed and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        header = ",".join(METRIC_FIELDS) + "\n"
        write_text(path, header + "".join(",".join(r[k] for k in METRIC_FIELDS) + "\n" for r in rows))
        self.file = path.open("a", newline="")
        self.csv = csv.DictWriter(self.file, METRIC_FIELDS)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=step + 1 if resumed else None)

    def write(self, kind: str, c: Counters, loss: float, lr: float, metrics: dict[str, float] | None = None) -> None:
        if not self.active:
            return
        self.csv.writerow(
            {
                "kind": kind,
                "step": c.step,
                "loss": repr(loss),
                "tokens": c.tokens,
                "flops": repr(c.flops),
                "wall_s": f"{c.wall_s:.3f}",
                "lr": repr(lr),
            }
        )
        self.file.flush()
        self.tb.add_scalar(f"{kind}/loss", loss, c.step)
        if kind == "val":
            self.tb.add_scalar("val/loss_vs_flops", loss, int(c.flops))
            self.tb.add_scalar("val/tokens", c.tokens, c.step)
            self.tb.add_scalar("val/wall_s", c.wall_s, c.step)
        else:
            self.tb.add_scalar("train/lr", lr, c.step)
            self.tb.add_scalar("train/tokens_per_s", c.tokens / max(c.wall_s, 1e-9), c.step)
        for name, value in (metrics or {}).items():
            self.tb.add_scalar(f"{kind}/{name}", value, c.step)

    def close(self) -> None:
        if self.active:
            self.file.close()
            self.tb.close()
