"""Seeded tiny configs for every backbone; tests run offline on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

from ssmttm.backbones import MIXERS, BackboneConfig
from ssmttm.backbones.mamba import MambaConfig
from ssmttm.backbones.mamba2 import Mamba2Config
from ssmttm.backbones.mamba3 import Mamba3Config
from ssmttm.lm import LMConfig, MusicLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

KINDS = list(MIXERS)  # every registered backbone kind goes through every contract test


def tiny_config(kind: str = "simba", conditioning: str = "prefix", **overrides) -> LMConfig:
    """A few-thousand-parameter LM of the given family. Chunk sizes deliberately do not divide
    the test lengths, so the padded tail of the chunked scans is always exercised."""
    with_mlp = MIXERS[kind].needs_mlp  # simba, simba3: the release's layout, with no final norm
    backbone = BackboneConfig(
        kind=kind,
        d_model=32,
        n_layers=2,
        mlp_hidden=64 if with_mlp or kind == "transformer" else 0,
        num_heads=4,
        final_norm=not with_mlp,
        mamba2=Mamba2Config(d_state=8, headdim=8, chunk_size=5),
        mamba3=Mamba3Config(d_state=8, headdim=8, chunk_size=5),
        mamba=MambaConfig(d_state=4, chunk_size=3),
    )
    fields = dict(
        num_codebooks=3,
        cardinality=11,
        text_dim=6,
        conditioning=conditioning,
        positions="rope" if kind == "transformer" else "none",
        backbone=backbone,
    )
    fields.update(overrides)
    return LMConfig(**fields)


def tiny_lm(kind: str = "simba", conditioning: str = "prefix", seed: int = 0, **overrides) -> MusicLM:
    torch.manual_seed(seed)
    return MusicLM(tiny_config(kind, conditioning, **overrides)).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture
def golden_dir():
    from pathlib import Path

    return Path(__file__).parent / "golden"


def save_tiny_dac(path, codebook_size: int = 16, downsampling: tuple[int, ...] = (2, 4)):
    """A DAC with random weights (seed 0) and a tiny config, saved to `path` like a downloaded model:
    16 kHz, 4 codebooks of `codebook_size` entries, hop = the product of `downsampling`."""
    from transformers import DacConfig, DacModel

    torch.manual_seed(0)
    config = DacConfig(
        encoder_hidden_size=8,
        downsampling_ratios=list(downsampling),
        decoder_hidden_size=16,
        upsampling_ratios=list(reversed(downsampling)),
        n_codebooks=4,
        codebook_size=codebook_size,
        codebook_dim=4,
        hidden_size=32,
        sampling_rate=16000,
    )
    DacModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dac_dir(tmp_path_factory):
    """hop 8, 4 codebooks of 16 entries."""
    return save_tiny_dac(tmp_path_factory.mktemp("tiny_dac"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """A one-layer T5 encoder with random weights and the paper's width (768), and ByT5's tokenizer,
    which needs no vocabulary file; saved like a downloaded model."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = ByT5Tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=768, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    path = tmp_path_factory.mktemp("tiny_t5")
    T5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_release_checkpoint(path, weights: dict, model_config: dict, **extra):
    """A checkpoint in the layout the authors' Lightning trainer writes (save_hyperparameters(config),
    AdamW with a LambdaLR, ModelCheckpoint): `weights` (release names) under `music_model.`, a few
    frozen-T5 tensors under `text_encoder.`, and training state made of tensors and plain containers.
    `extra` entries are added at the top level."""
    state = {f"music_model.{k}": v for k, v in weights.items()}
    state["text_encoder.shared.weight"] = torch.randn(8, 768)
    state["text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.randn(768, 768)
    first = next(iter(weights.values()))
    checkpoint = {
        "epoch": 2,
        "global_step": 1500,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 1500}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 500, 'every_n_epochs': 0, "
            "'train_time_interval': None}": {
                "monitor": None,
                "best_model_score": None,
                "best_model_path": "/ckpts/epoch=2-step=1500.ckpt",
                "dirpath": "/ckpts",
                "best_k_models": {},
                "kth_value": torch.tensor(float("inf")),
                "last_model_path": "",
            }
        },
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(1500.0), "exp_avg": torch.zeros_like(first)}},
                "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-7, "weight_decay": 0.02, "params": [0]}],
            }
        ],
        "lr_schedulers": [{"base_lrs": [1e-4], "last_epoch": 1500, "_step_count": 1501, "lr_lambdas": [None]}],
        "hparams_name": "config",
        "hyper_parameters": {
            "config": {
                "training": {"name": "simba", "batch": 32, "precision": "bf16"},
                "model": model_config,
                "optimizer": {"optim_lr": 1e-4, "weight_decay": 0.02, "betas": (0.9, 0.999)},
            }
        },
        **extra,
    }
    torch.save(checkpoint, path)
    return path
