"""Training: it learns, it resumes bit for bit after kill -9, its checkpoints survive a kill mid-write,
two gloo processes take the same step as one, the export reloads exactly, non-finite steps are skipped."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmttm.conditioning import Conditioning
from ssmttm.config import to_dict
from ssmttm.data.dataset import TokenWindows
from ssmttm.data.shards import PLAN, merge, write_unit
from ssmttm.files import write_json
from ssmttm.lm import LossOutput, MusicLM
from ssmttm.pretrained import load_pretrained
from ssmttm.training.config import resolve
from ssmttm.training.export import export_run
from ssmttm.training.layout import last_checkpoint
from ssmttm.training.lm_task import unigram_cross_entropy
from ssmttm.training.trainer import Trainer, TrainingError, lr_factor

CARDINALITY, CODEBOOKS, FRAMES, FRAME_RATE = 16, 2, 24, 10.0
CAPTIONS = ["a slow piano piece", "fast drums and bass", "a quiet flute melody", "loud electric guitar"]


def make_collection(
    root: Path, clips: int = 40, validation: int = 8, captions: list[str] = CAPTIONS, start_s: float | None = None
) -> Path:
    """A prepared collection whose tokens follow the caption: codebook k of a clip with caption c
    counts up by c + 1 from a random start (offset by 5k), so text and context predict every token.
    `start_s`: every clip is a segment that starts this far into its piece."""
    rng = np.random.default_rng(0)
    tokens, records = [], []
    for i in range(clips):
        c = i % len(captions)
        start = rng.integers(CARDINALITY)
        rows = [(start + 5 * k + (c + 1) * np.arange(FRAMES)) % CARDINALITY for k in range(CODEBOOKS)]
        tokens.append(np.stack(rows))
        split = "validation" if i >= clips - validation else "train"
        records.append(
            {
                "id": f"clip{i}",
                "song": f"song{i}",
                "split": split,
                "caption": captions[c],
                "shard": "unit-00000",
                "offset": i * FRAMES,
                "frames": FRAMES,
            }
            | ({} if start_s is None else {"start_s": start_s})
        )
    codec = {
        "name": "toy",
        "sample_rate": 16000,
        "frame_rate": FRAME_RATE,
        "num_codebooks": CODEBOOKS,
        "cardinality": CARDINALITY,
    }
    write_json(
        root / PLAN, {"settings": {}, "codec": codec, "units": [{"name": "unit-00000"}], "failures": [], "excluded": []}
    )
    write_unit(root, "unit-00000", np.concatenate(tokens, axis=1), records, [])
    merge(root)
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return make_collection(tmp_path_factory.mktemp("toy-collection"))


def train_config(collection: Path, **run):
    """A tiny SiMBA with dropout, on the toy collection; text from the embedded MiniLM."""
    settings = {
        "batch_size": 8,
        "micro_batch_size": 4,
        "precision": "32-true",
        "accelerator": "cpu",
        "log_every": 1,
        "val_every": 10,
        "checkpoint_every": 10,
    } | run
    data = {
        "model": {
            "num_codebooks": CODEBOOKS,
            "cardinality": CARDINALITY,
            "text_dim": 384,
            "label_smoothing": 0.0,
            "backbone": {
                "kind": "simba",
                "d_model": 32,
                "n_layers": 2,
                "mlp_hidden": 64,
                "dropout": 0.1,
                "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
            },
        },
        "data": {"collection": str(collection), "window_seconds": FRAMES / FRAME_RATE, "workers": 0},
        "optim": {"lr": 3e-3},
        "schedule": {"max_steps": 30, "warmup_steps": 5},
        "run": settings,
    }
    return data


def metrics(run_dir: Path, kind: str = "train") -> list[tuple[int, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f) if r["kind"] == kind]


def model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(last_checkpoint(run_dir), weights_only=True)["model"]


@pytest.mark.slow  # 40 steps and a validation pass, about 20 s
def test_tiny_training_beats_the_unigram_baseline(collection, tmp_path):
    config = resolve(train_config(collection, val_every=40), ["schedule.max_steps=40"])
    Trainer(config, tmp_path / "run").fit()
    val = metrics(tmp_path / "run", "val")
    windows = {s: TokenWindows(collection, s, FRAMES) for s in ("train", "validation")}
    baseline = unigram_cross_entropy(windows["train"], windows["validation"], CARDINALITY)
    assert baseline > 2 * 2.0  # two codebooks of nearly uniform tokens: ~log(16) each
    assert float(val[-1][1]) < 0.5 * baseline, (val, baseline)


def cli(*args: str) -> list[str]:
    """The installed command: Fabric's DDP launcher starts the other processes by running it again."""
    return [str(Path(sys.executable).parent / "ssmttm"), *args]


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow  # three training runs in subprocesses, about 45 s; test_task.py resumes mid-epoch in-process
def test_a_run_killed_mid_epoch_resumes_bit_for_bit(collection, tmp_path):
    """32 training clips in micro-batches of 4, two per step: 4 steps an epoch, checkpoints every 3."""
    data = train_config(collection, checkpoint_every=3, val_every=100)
    data["data"]["workers"] = 2
    data["schedule"]["max_steps"] = 60
    config = write_config(tmp_path / "train.yaml", data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli("train", "--config", str(config), "--out", str(whole)), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(
        cli("train", "--config", str(config), "--out", str(killed)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while last_checkpoint(killed) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(last_checkpoint(killed), weights_only=True)["counters"]["step"]
    assert 0 < step < 60 and step % 4, f"the kill must land mid-run and mid-epoch (checkpoint at step {step})"
    subprocess.run(cli("train", "--resume", str(killed)), env=env, check=True, capture_output=True)

    expected, got = model_state(whole), model_state(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert metrics(killed) == metrics(whole)  # every step once, with the same loss, to the last digit
    assert [s for s, _ in metrics(killed)] == list(range(1, 61))


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(collection, tmp_path, monkeypatch):
    from lightning.fabric import Fabric

    config = resolve(train_config(collection, checkpoint_every=2), ["schedule.max_steps=6"])
    real_save, calls = Fabric.save, []

    def dies_on_the_second_write(self, path, state, filter=None):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # stands for the kill: the rename never happens
        return real_save(self, path, state, filter)

    monkeypatch.setattr(Fabric, "save", dies_on_the_second_write)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "run").fit()
    saved = torch.load(last_checkpoint(tmp_path / "run"), weights_only=True)
    assert saved["counters"]["step"] == 2
    monkeypatch.setattr(Fabric, "save", real_save)
    assert Trainer(config, tmp_path / "run").fit().step == 6  # and the run goes on from it


@pytest.mark.slow  # a one-process run and a two-process DDP run, about 30 s
def test_two_gloo_processes_take_the_same_step_as_one(collection, tmp_path):
    """DDP over 2 CPU processes, micro-batch 4 each, against one process accumulating 2 micro-batches
    of 4: the same 8 clips per step. No dropout, so both see the same math; eps large enough that
    Adam's first steps do not amplify summation-order rounding of near-zero gradients."""
    data = train_config(collection, checkpoint_every=100)
    data["model"]["backbone"]["dropout"] = 0.0
    data["model"].update(caption_dropout=0.0, token_dropout=0.0)
    data["optim"]["eps"] = 1e-3
    data["schedule"]["max_steps"] = 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    config = write_config(tmp_path / "train.yaml", data)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(cli("train", "--config", str(config), "--out", str(one)), env=env, check=True, capture_output=True)
    ddp = subprocess.run(
        cli("train", "--config", str(config), "--out", str(two), "--run.devices=2", "--run.strategy=ddp"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    expected, got = model_state(one), model_state(two)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    losses_one, losses_two = metrics(one), metrics(two)
    assert [s for s, _ in losses_two] == [1, 2]
    for (_, a), (_, b) in zip(losses_one, losses_two, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-5)


# Overrides that turn train_config's tiny SiMBA into another kind (the Mamba-3 mixer's own sizes).
MAMBA3 = ["model.backbone.mamba3.d_state=8", "model.backbone.mamba3.headdim=8", "model.backbone.mamba3.chunk_size=8"]
KIND_OVERRIDES = {
    "simba": [],
    "simba3": ["model.backbone.kind=simba3", *MAMBA3],
    "mamba3": ["model.backbone.kind=mamba3", "model.backbone.mlp_hidden=0", *MAMBA3],
}


@pytest.mark.parametrize("kind", KIND_OVERRIDES)
def test_export_then_load_gives_identical_logits(collection, tmp_path, kind):
    config = resolve(train_config(collection), ["schedule.max_steps=3", *KIND_OVERRIDES[kind]])
    assert config.model.backbone.kind == kind
    Trainer(config, tmp_path / "run").fit()
    out = export_run(tmp_path / "run", tmp_path / "export", cfg_scale=4.0)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model, pretrained = load_pretrained(out)
    assert pretrained.codec == "toy" and pretrained.text_encoder == "minilm" and pretrained.trained_steps == 3
    assert pretrained.generation.cfg_scale == 4.0 and to_dict(pretrained.model) == to_dict(config.model)
    trained = MusicLM(config.model)
    trained.load_state_dict(model_state(tmp_path / "run"))
    trained.eval()
    seq = torch.randint(CARDINALITY, (2, CODEBOOKS, 10))
    text, mask = torch.randn(2, 5, 384), torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(model(seq, Conditioning(text, mask)), trained(seq, Conditioning(text, mask)))


def test_non_finite_steps_are_skipped_then_stop_the_run(collection, tmp_path, monkeypatch):
    config = resolve(train_config(collection, max_bad_steps=3, checkpoint_every=100), ["schedule.max_steps=20"])
    real = MusicLM.compute_loss
    calls = []

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if not self.training:
            return out
        calls.append(1)
        if len(calls) in (5, 6):  # step 3's two micro-batches
            return LossOutput(out.loss * float("nan"), out.per_codebook, out.num_tokens)
        if len(calls) > 20:  # from the 11th step on, every step
            return LossOutput(out.loss * float("inf"), out.per_codebook, out.num_tokens)
        return out

    monkeypatch.setattr(MusicLM, "compute_loss", poisoned)
    trainer = Trainer(config, tmp_path / "run")
    with pytest.raises(TrainingError, match="3 consecutive steps had a non-finite loss or gradient"):
        trainer.fit()
    assert trainer.counters.skipped_steps == 4  # one alone, then three in a row
    assert trainer.counters.step == 9  # 10 steps ran well, step 3's batch was dropped
    saved = torch.load(last_checkpoint(tmp_path / "run"), weights_only=True)
    assert saved["counters"]["step"] == 9
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert [s for s, _ in metrics(tmp_path / "run")] == list(range(1, 10))


def test_cli_errors_are_one_line(collection, tmp_path, capsys):
    from ssmttm.cli import main

    config = write_config(tmp_path / "train.yaml", train_config(collection))
    cases = [
        (["train", "--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["train", "--config", str(config), "--optim.lrr=1"], "unknown key in optim: lrr"),
        (["train", "--config", str(config), "--run.batch_size=6"], "not a multiple of micro_batch_size"),
        (["train", "--resume", str(tmp_path)], "holds no config.yaml"),
        (["export", str(tmp_path), "--out", str(tmp_path / "x")], "not a training run folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_a_run_goes_on_under_a_changed_config_only_when_resumed(collection, tmp_path):
    from ssmttm.config import ConfigError

    data = train_config(collection)
    Trainer(resolve(data, ["schedule.max_steps=3"]), tmp_path / "run").fit()
    longer = resolve(data, ["schedule.max_steps=5"])
    with pytest.raises(ConfigError, match="holds a run with another config"):
        Trainer(longer, tmp_path / "run").fit()
    assert Trainer(longer, tmp_path / "run", config_may_change=True).fit().step == 5
    assert [s for s, _ in metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_a_resumed_run_takes_the_optimizer_settings_of_its_overrides(collection, tmp_path):
    """A checkpoint's optimizer and scheduler carry their own rate: the override must win."""
    data = train_config(collection)
    Trainer(resolve(data, ["schedule.max_steps=3"]), tmp_path / "run").fit()
    config = resolve(data, ["schedule.max_steps=6", "optim.lr=0.5", "optim.weight_decay=0.25"])
    trainer = Trainer(config, tmp_path / "run", config_may_change=True)
    trainer.fit()
    sched = config.schedule
    with (tmp_path / "run" / "metrics.csv").open() as f:
        logged = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r["kind"] == "train"}
    for step in (4, 5):
        assert logged[step] == pytest.approx(0.5 * lr_factor(step, sched.warmup_steps, 6, sched.final_lr_fraction))
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.25, 0.0]


def test_a_run_shorter_than_its_warmup_and_checkpoint_interval_scales_them():
    from ssmttm.presets import PRESET_DIR
    from ssmttm.training.config import fit_to_run, load_train_config

    tiny = PRESET_DIR / "train" / "tiny-simba.yaml"  # warm-up 50, a checkpoint every 100 steps
    fitted = fit_to_run(load_train_config(tiny, ["--schedule.max_steps=50"]))
    assert (fitted.warmup_steps, fitted.checkpoint_every) == (5, 5)
    assert fitted.note == (
        "max_steps 50 < checkpoint_every 100: checkpointing every 5 steps; "
        "warmup_steps 50 >= max_steps 50: warm-up 50 -> 5 steps"
    )
    assert fit_to_run(load_train_config(tiny, ["--schedule.max_steps=2000"])).note == ""  # the README's runs
    as_written = fit_to_run(load_train_config(tiny, ["--schedule.max_steps=100"]))  # 100 is not > 100
    assert (as_written.warmup_steps, as_written.checkpoint_every, as_written.note) == (50, 100, "")
    tiniest = fit_to_run(load_train_config(tiny, ["--schedule.max_steps=5"]))
    assert (tiniest.warmup_steps, tiniest.checkpoint_every) == (0, 1)  # no warm-up; every step


@pytest.mark.slow  # 20 steps, 10 checkpoints, about 17 s; fit_to_run's arithmetic is tested above
def test_a_short_run_warms_up_and_checkpoints_within_it_and_says_so_once(collection, tmp_path, monkeypatch, caplog):
    config = resolve(
        train_config(collection, checkpoint_every=100, checkpoint_minutes=0),
        ["schedule.max_steps=20", "schedule.warmup_steps=50"],
    )
    saved = []
    real = Trainer._checkpoint
    monkeypatch.setattr(Trainer, "_checkpoint", lambda self: (saved.append(self.counters.step), real(self)))
    with caplog.at_level("INFO", logger="ssmttm.training.trainer"):
        Trainer(config, tmp_path / "run").fit()
    notes = [r.getMessage() for r in caplog.records if "max_steps 20" in r.getMessage()]
    assert notes == [
        "max_steps 20 < checkpoint_every 100: checkpointing every 2 steps; "
        "warmup_steps 50 >= max_steps 20: warm-up 50 -> 2 steps"
    ]
    assert saved == list(range(2, 21, 2))
    with (tmp_path / "run" / "metrics.csv").open() as f:
        lr = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r["kind"] == "train"}
    final = config.schedule.final_lr_fraction
    for step in (1, 2, 10):  # the rate for the step after it: the peak after 2 steps, then decaying
        assert lr[step] == pytest.approx(config.optim.lr * lr_factor(step, 2, 20, final))
    assert lr[2] > lr[10]
    assert config.schedule.warmup_steps == 50  # the saved config keeps what was asked for


@pytest.mark.slow  # three runs, about 30 s
def test_a_timed_checkpoint_is_written_and_resumed_from(collection, tmp_path, monkeypatch, caplog):
    """Each step takes 40 s by the injected clock, so a 1-minute interval checkpoints every second
    step; the step interval (8 of 8) only at the end. A kill in step 5 resumes from the timed one."""
    config = resolve(train_config(collection, checkpoint_every=8, checkpoint_minutes=1.0), ["schedule.max_steps=8"])
    whole = Trainer(config, tmp_path / "whole", clock=lambda: 0.0)  # never due: the end only
    whole.fit()

    killed = Trainer(config, tmp_path / "killed")
    killed.clock = lambda: 40.0 * killed.counters.step
    real, calls = MusicLM.compute_loss, []

    def dies_in_step_5(self, *args, **kwargs):
        if self.training:
            calls.append(1)
            if len(calls) == 9:  # two micro-batches a step: step 5's first
                raise KeyboardInterrupt  # stands for kill -9: nothing after this point runs
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MusicLM, "compute_loss", dies_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert torch.load(last_checkpoint(tmp_path / "killed"), weights_only=True)["counters"]["step"] == 4
    monkeypatch.setattr(MusicLM, "compute_loss", real)
    with caplog.at_level("INFO", logger="ssmttm.training.trainer"):
        assert Trainer(config, tmp_path / "killed").fit().step == 8
    assert any("at step 4" in r.getMessage() for r in caplog.records)
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")  # steps 1-8 once, the same losses
    expected, got = model_state(tmp_path / "whole"), model_state(tmp_path / "killed")
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_a_start_without_prepared_data_says_what_to_run_and_leaves_no_run_folder(collection, tmp_path, capsys):
    from ssmttm.cli import main

    empty, run_dir = tmp_path / "data" / "synth-embedded", tmp_path / "runs" / "tiny"
    data = train_config(empty)
    config = write_config(tmp_path / "train.yaml", data)
    assert main(["train", "--config", str(config), "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no prepared data in {empty}: run `ssmttm data prepare --source AUDIO_DIR --out {empty}` first" in err
    assert "`ssmttm data synth" in err and f"`ssmttm data merge --out {empty}` if it was prepared in shares" in err
    assert not run_dir.exists() and not run_dir.parent.exists()

    (empty / "plan.json").parent.mkdir(parents=True)
    (empty / "plan.json").write_text("{}")  # prepare began here and did not finish
    assert main(["train", "--config", str(config), "--out", str(run_dir)]) == 2
    assert "is prepared only in part (no manifest.json)" in capsys.readouterr().err
    assert not run_dir.exists()

    # the model is built before the folder too: an init_from that cannot be read leaves none either
    config = write_config(tmp_path / "train.yaml", train_config(collection, init_from=str(tmp_path / "data")))
    assert main(["train", "--config", str(config), "--out", str(run_dir)]) == 2
    assert "run.init_from" in capsys.readouterr().err
    assert not run_dir.exists()


def test_checkpoint_minutes_must_be_a_number_of_minutes_or_0(collection):
    from ssmttm.config import ConfigError

    assert resolve(train_config(collection)).run.checkpoint_minutes == 10.0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match=r"run\.checkpoint_minutes must be 0"):
            resolve(train_config(collection), [f"run.checkpoint_minutes={bad}"])
