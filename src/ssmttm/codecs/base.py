"""The codec interface: audio <-> K parallel streams of discrete tokens.

Every codec takes audio at any rate and channel count (it resamples and downmixes itself) and
decodes to mono at its own rate. `frame_rate` is exact: sample_rate / hop as a float, so that
durations and frame counts never drift.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from ssmttm.data.audio import resample


class CodecError(ValueError):
    """A codec that cannot be loaded or used as asked, with a one-line reason."""


class Codec(ABC):
    """Audio codec contract: encode (B, C, N) at any rate -> codes (B, K, T); decode -> (B, 1, N)."""

    name: str  # what `load_codec` accepts to rebuild it: a registry name, a hub id or a local path
    sample_rate: int
    hop_length: int
    num_codebooks: int
    cardinality: int  # entries per codebook; token ids are 0 .. cardinality - 1

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames for `num_samples` samples at the codec's rate: ceil(N / hop)."""
        return math.ceil(num_samples / self.hop_length)

    def encode(self, wav: Tensor, sample_rate: int) -> Tensor:
        """wav (B, C, N) float at `sample_rate` -> codes (B, K, T) int64, T = ceil(N' / hop)
        where N' is the length at the codec's rate. The end is padded with silence up to a frame."""
        if wav.dim() != 3:
            raise CodecError(f"encode expects audio of shape (batch, channels, samples), got {tuple(wav.shape)}")
        mono = self._to_codec_rate(wav.float().mean(dim=1, keepdim=True), sample_rate)  # (B, 1, N')
        frames = self.num_frames(mono.shape[-1])
        if frames == 0:
            raise CodecError("cannot encode empty audio")
        padded = torch.nn.functional.pad(mono, (0, frames * self.hop_length - mono.shape[-1]))
        with torch.inference_mode():
            codes = self._encode(padded)
        return codes[:, : self.num_codebooks, :frames].long()

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, K, T) -> wav (B, 1, T * hop) float32 at `sample_rate`."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise CodecError(f"decode expects codes (batch, {self.num_codebooks}, frames), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cardinality):
            raise CodecError(f"codes must lie in 0..{self.cardinality - 1}")
        with torch.inference_mode():
            return self._decode(codes.long()).float()

    def _to_codec_rate(self, wav: Tensor, sample_rate: int) -> Tensor:
        if sample_rate == self.sample_rate:
            return wav
        flat = wav.reshape(-1, wav.shape[-1]).cpu().numpy()
        out = resample(flat.astype(np.float32), sample_rate, self.sample_rate)
        return torch.from_numpy(out).reshape(*wav.shape[:-1], -1).to(wav.device)

    @abstractmethod
    def _encode(self, wav: Tensor) -> Tensor:
        """wav (B, 1, N) at the codec rate, N a multiple of hop -> codes (B, >= K, N / hop)."""

    @abstractmethod
    def _decode(self, codes: Tensor) -> Tensor:
        """codes (B, K, T) -> wav (B, 1, T * hop)."""
