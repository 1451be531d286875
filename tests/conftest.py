"""Seeded tiny configs for every backbone; tests run offline on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

from ssmttm.config import BackboneConfig, LMConfig, Mamba2Config, MambaConfig
from ssmttm.lm import MusicLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

KINDS = ["simba", "mamba2", "mamba", "transformer"]


def tiny_config(kind: str = "simba", conditioning: str = "prefix", **overrides) -> LMConfig:
    """A few-thousand-parameter LM of the given family. Chunk sizes deliberately do not divide
    the test lengths, so the padded tail of the chunked scans is always exercised."""
    backbone = BackboneConfig(
        kind=kind,
        d_model=32,
        n_layers=2,
        mlp_hidden=64 if kind in ("simba", "transformer") else 0,
        num_heads=4,
        final_norm=kind != "simba",
        mamba2=Mamba2Config(d_state=8, headdim=8, chunk_size=5),
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


@pytest.fixture(scope="session")
def tiny_dac_dir(tmp_path_factory):
    """A DAC with random weights and a tiny config, saved like a downloaded model: 16 kHz, hop 8,
    4 codebooks of 16 entries."""
    from transformers import DacConfig, DacModel

    torch.manual_seed(0)
    config = DacConfig(
        encoder_hidden_size=8,
        downsampling_ratios=[2, 4],
        decoder_hidden_size=16,
        upsampling_ratios=[4, 2],
        n_codebooks=4,
        codebook_size=16,
        codebook_dim=4,
        hidden_size=32,
        sampling_rate=16000,
    )
    path = tmp_path_factory.mktemp("tiny_dac")
    DacModel(config).save_pretrained(path)
    return path
