"""A tiny model learns a text-conditioned toy corpus; greedy decoding then follows the caption."""

import pytest
import torch
from conftest import KINDS, tiny_lm

from ssmttm.conditioning import Conditioning
from ssmttm.generation import Generator, SamplingConfig

FRAMES = 12


def motif(period_0, period_1):
    """Codec frames (2, FRAMES): each codebook repeats its own short phrase."""
    row0 = torch.tensor(period_0).repeat(FRAMES)[:FRAMES]
    row1 = torch.tensor(period_1).repeat(FRAMES)[:FRAMES]
    return torch.stack([row0, row1])


MOTIFS = [motif([1, 2, 3, 4], [5, 6]), motif([7, 6, 5], [0, 0, 3])]


def captions():
    """Two captions of different lengths, left-padded: (2, 3, 6) embeddings and mask."""
    gen = torch.Generator().manual_seed(7)
    text = torch.randn(2, 3, 6, generator=gen)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    return text, mask


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_model_learns_caption_specific_motifs(kind):
    lm = tiny_lm(kind, num_codebooks=2, cardinality=8, label_smoothing=0.0).train()
    text, mask = captions()
    codes = torch.stack(MOTIFS)
    repeat = 4  # both captions several times per batch, so CFG dropout leaves conditioned rows
    codes, cond = codes.repeat(repeat, 1, 1), Conditioning(text.repeat(repeat, 1, 1), mask.repeat(repeat, 1))
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(200):
        loss = lm.compute_loss(codes, cond).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1

    generator = Generator(lm)
    greedy = SamplingConfig(temperature=0, cfg_scale=1.0)
    out = generator.generate(Conditioning(text, mask), FRAMES, sampling=greedy)
    assert torch.equal(out[0], MOTIFS[0]) and torch.equal(out[1], MOTIFS[1])
    swapped = generator.generate(Conditioning(text.flip(0), mask.flip(0)), FRAMES, sampling=greedy)
    assert torch.equal(swapped[0], MOTIFS[1]) and torch.equal(swapped[1], MOTIFS[0])
    guided = generator.generate(Conditioning(text, mask), FRAMES, sampling=SamplingConfig(temperature=0, cfg_scale=3.0))
    assert torch.equal(guided, out)
