"""Tempo as one more conditioning position: a caption that states its BPM gets a vector for it.

A sentence encoder hears "96 BPM" and "128 BPM" as nearly the same words, so a model conditioned
on its embeddings learns the tempo only loosely. `TempoConditioned` wraps any text encoder: it
reads the number a caption states ("120 BPM", "120 bpm", "120 beats per minute"), and appends to
the caption's positions one vector that encodes it, sinusoids of log2(BPM) at geometric
frequencies, so that nearby tempos get nearby vectors and 1 BPM apart is still told apart. A
caption that states no tempo gets nothing appended: its embedding is the inner encoder's, so a
model trained without the wrapper starts from where it was.

The vector goes last, after the caption's tokens. In our left-padded layout the last position is
never dropped by token dropout, so the tempo is dropped only with the whole caption (the null
condition of classifier-free guidance). Load it as "<encoder>+tempo", e.g. "minilm+tempo"; its id
differs from the inner encoder's, so the embedding cache keeps both apart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmttm.text.base import TextEncoder, TextEncoderError, Tokens, pad_left
from ssmttm.text.stated_tempo import stated_bpm

SUFFIX = "+tempo"
REFERENCE_BPM = 120.0
# Frequencies in cycles per octave of tempo: the slowest turns once over 16 octaves, so the
# whole range is unambiguous; the fastest (32 per octave) turns 1.4 radians per 0.5% of tempo.
LOWEST_FREQUENCY, HIGHEST_FREQUENCY = 1 / 16, 32.0


def tempo_vector(bpm: Tensor, dim: int) -> Tensor:
    """bpm (B,) -> (B, dim): cos then sin of 2 pi f log2(bpm / 120) for dim // 2 geometric frequencies f
    (zeros fill an odd last column). Each row has norm sqrt(dim // 2)."""
    half = dim // 2
    freqs = torch.logspace(math.log10(LOWEST_FREQUENCY), math.log10(HIGHEST_FREQUENCY), half, dtype=torch.float64)
    phase = 2 * math.pi * torch.log2(bpm.double() / REFERENCE_BPM)[:, None] * freqs  # (B, half)
    out = torch.cat([phase.cos(), phase.sin()], dim=-1).float()
    return torch.nn.functional.pad(out, (0, dim - 2 * half))


class TempoConditioned(TextEncoder):
    """`inner`'s embeddings, plus one position holding `tempo_vector` for captions that state a BPM."""

    def __init__(self, inner: TextEncoder) -> None:
        if inner.padding != "left":
            raise TextEncoderError(f"tempo conditioning needs left padding; {inner.id} pads as {inner.padding!r}")
        self.inner = inner
        self.id = inner.id + SUFFIX
        self.name = inner.name + SUFFIX
        self.dim = inner.dim
        self.max_length = inner.max_length + 1  # the tempo position comes on top of the caption's tokens
        self.padding = "left"

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.inner.device

    def to(self, device: str | torch.device) -> TempoConditioned:
        self.inner.to(device)
        return self

    def tokenize(self, texts: list[str]) -> Tokens:
        tokens = self.inner.tokenize(texts)
        bpm = [stated_bpm(text) for text in texts]
        tokens.tempo = torch.tensor([math.nan if b is None else b for b in bpm], dtype=torch.float32)
        return tokens

    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.inner._forward(ids, mask)

    def encode(self, tokens: Tokens) -> tuple[Tensor, Tensor]:
        """The inner encoding, with the tempo vector after the last real position of each caption
        that states one. An empty caption stays empty (the null condition), whatever it states."""
        if tokens.tempo is None:
            raise TextEncoderError("these tokens carry no tempo: tokenize them with this encoder, not its inner one")
        emb, mask = self.inner.encode(tokens)  # (B, L, D) left-padded, (B, L)
        stated = ~torch.isnan(tokens.tempo) & mask.any(dim=-1).cpu()  # (B,)
        if not bool(stated.any()):
            return emb, mask
        vectors = tempo_vector(tokens.tempo.nan_to_num(REFERENCE_BPM), self.dim).to(emb.device)  # (B, D)
        rows = [
            torch.cat([e[m], vectors[i : i + 1]]) if stated[i] else e[m]
            for i, (e, m) in enumerate(zip(emb, mask, strict=True))
        ]
        return pad_left(rows, self.dim, emb.device)
