"""FLOP formulas against torch.utils.flop_counter, for every backbone, forward and backward."""

import pytest
import torch
from conftest import KINDS
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ssmttm.conditioning import Conditioning
from ssmttm.lm import LMConfig, MusicLM
from ssmttm.presets import load_preset
from ssmttm.training.flops import forward_flops, training_flops_per_token

TOLERANCE = 0.02  # the issue asks 10%; 2% also catches causal attention counted at half cost
TEXT_LEN = 8


def preset(kind: str, *overrides: str) -> LMConfig:
    """The tiny preset with two layers: enough to check the per-layer sum, and fast."""
    return load_preset(f"tiny-{kind}", ["backbone.n_layers=2", *overrides])


def counted_flops(cfg: LMConfig, seq_len: int, text_len: int, backward: bool = False) -> int:
    """What the counter sees in one forward (and backward) pass over one sequence."""
    torch.manual_seed(0)
    model = MusicLM(cfg).eval()
    seq = torch.randint(0, cfg.vocab_size, (1, cfg.num_codebooks, seq_len))
    targets = torch.randint(0, cfg.vocab_size, (1, cfg.num_codebooks, seq_len + 1))
    text = torch.randn(1, text_len, cfg.text_dim)
    mask = torch.arange(text_len)[None] >= 2  # left padding: the masked attention path runs too
    # The counter has no formula for the CPU flash-attention kernel, so attention runs on the math
    # backend, where it is the two matrix products the formula counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if backward:
            model.loss(model(seq, Conditioning(text, mask)), targets).loss.backward()
        else:
            with torch.no_grad():
                model(seq, Conditioning(text, mask))
    return counter.get_total_flops()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seq_len", [64, 200])
def test_forward_flops_match_the_counter(kind, seq_len):
    cfg = preset(kind)
    assert forward_flops(cfg, seq_len, TEXT_LEN) == pytest.approx(counted_flops(cfg, seq_len, TEXT_LEN), rel=TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_flops_match_the_counter_with_cross_attention(kind):
    cfg = preset(kind, "conditioning=cross")
    assert forward_flops(cfg, 100, TEXT_LEN) == pytest.approx(counted_flops(cfg, 100, TEXT_LEN), rel=TOLERANCE)


@pytest.mark.parametrize(("kind", "mixer"), [("simba", "mamba2"), ("simba3", "mamba3")])
@pytest.mark.parametrize("chunk_size", [16, 128])
def test_forward_flops_follow_the_ssd_chunk_size(kind, mixer, chunk_size):
    """The SSD's intra-chunk products cost chunk_size per position; the formula must track that."""
    cfg = preset(kind, f"backbone.{mixer}.chunk_size={chunk_size}")
    assert forward_flops(cfg, 200, TEXT_LEN) == pytest.approx(counted_flops(cfg, 200, TEXT_LEN), rel=TOLERANCE)


def test_forward_flops_match_the_counter_for_a_mimo_mamba3():
    """With R ranks every position of the scan stands for R rows (chunk_size 16: MIMO's 64 / R)."""
    cfg = preset("mamba3", "backbone.mamba3.is_mimo=true", "backbone.mamba3.chunk_size=16")
    assert forward_flops(cfg, 100, TEXT_LEN) == pytest.approx(counted_flops(cfg, 100, TEXT_LEN), rel=TOLERANCE)


def test_an_empty_caption_counts_one_null_position():
    cfg = preset("mamba2")
    assert forward_flops(cfg, 64) == pytest.approx(counted_flops(cfg, 64, 0), rel=TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
def test_training_flops_match_forward_plus_backward(kind):
    """The backward pass costs 2x the forward for the scans too: every counted op is a product."""
    cfg, seq_len = preset(kind), 64
    counted = counted_flops(cfg, seq_len, TEXT_LEN, backward=True)
    assert training_flops_per_token(cfg, seq_len, TEXT_LEN) * seq_len == pytest.approx(counted, rel=TOLERANCE)
