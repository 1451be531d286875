"""The text-encoder interface: captions -> per-token embeddings (B, L, D) and a mask (B, L).

`tokenize` stays apart from `encode` so that data loaders can tokenize in worker processes and the
encoder runs once per batch on its device. Encoders are frozen and are plain objects, not
`nn.Module`s, so they never become children of a model and never enter an LM checkpoint.

Output layout (`padding = "left"`), the one our models train on: rows are left-padded, so a
caption's last token sits in the last column. A caption with no tokens (the empty string) has an
all-False row; a batch of only empty captions has L == 0. Special tokens (BERT's [CLS]/[SEP], T5's
</s>) count as tokens of a non-empty caption, since the encoder was trained with them, but an empty
caption has none. The authors' checkpoints were trained on another layout, `padding = "release"`
(text/release.py): right-padded, every position kept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


class TextEncoderError(ValueError):
    """A text encoder that cannot be loaded or used as asked, with a one-line reason."""


@dataclass
class Tokens:
    """Token ids of a batch of captions, right-padded (absolute positions stay those of the caption alone)."""

    ids: Tensor  # (B, S) int64
    mask: Tensor  # (B, S) bool: real tokens; all False for an empty caption
    tempo: Tensor | None = None  # (B,) float32 BPM each caption states, NaN for none; set by text/tempo.py

    def to(self, device: str | torch.device) -> Tokens:
        return Tokens(self.ids.to(device), self.mask.to(device), self.tempo)

    def __len__(self) -> int:
        return self.ids.shape[0]


def pad_left(rows: list[Tensor], dim: int, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Per-caption embeddings, each (L_i, dim) -> (B, L, dim) float32 left-padded with zeros, mask (B, L)."""
    length = max((row.shape[0] for row in rows), default=0)
    emb = torch.zeros(len(rows), length, dim, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        if row.shape[0]:
            emb[i, length - row.shape[0] :] = row.to(device=device, dtype=torch.float32)
            mask[i, length - row.shape[0] :] = True
    return emb, mask


class TextEncoder(ABC):
    """Frozen caption encoder: tokenize(texts) -> Tokens; encode(Tokens) -> (emb (B, L, dim), mask (B, L))."""

    id: str  # stable cache key: kind, weights source and truncation length; changes when outputs could
    name: str  # what `load_text_encoder` accepts to load it again
    dim: int
    max_length: int  # tokens per caption, special tokens included; longer captions are truncated
    device: torch.device
    padding: str = "left"  # the output layout (see the module docstring): "left" or "release"

    @abstractmethod
    def tokenize(self, texts: list[str]) -> Tokens:
        """Captions -> Tokens (B, S) on the CPU, S <= max_length; warns when a caption is truncated."""

    @abstractmethod
    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (B', S) of non-empty captions on `device` -> hidden states (B', S, dim)."""

    @abstractmethod
    def to(self, device: str | torch.device) -> TextEncoder:
        """Move the weights to `device`; returns self."""

    def encode(self, tokens: Tokens) -> tuple[Tensor, Tensor]:
        """Tokens (B, S) -> embeddings (B, L, dim) float32 on `device`, left-padded, and mask (B, L) bool."""
        tokens = tokens.to(self.device)
        nonempty = tokens.mask.any(dim=-1)  # (B,)
        rows = [torch.zeros(0, self.dim, device=self.device)] * len(tokens)
        if bool(nonempty.any()):
            # no_grad rather than inference_mode: inference tensors cannot be saved for backward, and
            # the LM's text projection trains on these embeddings.
            with torch.no_grad():
                hidden = self._forward(tokens.ids[nonempty], tokens.mask[nonempty]).float()  # (B', S, dim)
            # Empty captions never reach the encoder: an all-masked row is undefined attention.
            for i, h, m in zip(nonempty.nonzero()[:, 0].tolist(), hidden, tokens.mask[nonempty], strict=True):
                rows[i] = h[m]  # (L_i, dim)
        return pad_left(rows, self.dim, self.device)

    def embed(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Captions -> (embeddings (B, L, dim), mask (B, L)): tokenize then encode."""
        return self.encode(self.tokenize(texts))

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.embed(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, dim={self.dim}, device={self.device})"
