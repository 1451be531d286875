"""The embedded codec: semitone-partial features, residual k-means codebooks, additive synthesis.

It ships inside the package (`embedded.safetensors`, fitted on the synthetic corpus by
`ssmttm codec fit`), so that tokenizing, training and generation all work offline on a fresh
machine. 22.05 kHz mono, 43.07 frames/s, 4 codebooks of 1024.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from ssmttm.codecs.base import Codec, CodecError
from ssmttm.codecs.spectral.features import SpectralConfig, SpectralModel
from ssmttm.codecs.spectral.rvq import dequantize, nearest, quantize
from ssmttm.files import atomic_write

EMBEDDED_WEIGHTS = Path(__file__).with_name("embedded.safetensors")


class SpectralCodec(Codec):
    chunk_frames = 1024  # 24 s; features are 4 numbers per frame, so memory is the audio itself
    # Residual k-means: every codebook's entries live in the feature space and sum, so a latent is
    # a feature frame, and synthesis takes one directly: no snapping by default, since the point of
    # an unquantized residual is the precision the codebooks lack (snap=True quantizes as encode does).
    latent_layout = "additive"

    def __init__(self, model: SpectralModel, codebooks: Tensor, name: str, num_codebooks: int | None = None):
        cfg = model.config
        self.model = model
        self.codebooks = codebooks.float()  # (K, C, dim)
        self.name = name
        self.sample_rate = cfg.sample_rate
        self.hop_length = cfg.hop_length
        self.cardinality = codebooks.shape[1]
        self.codebook_latent_dim = codebooks.shape[2]  # the feature dim: 89 for the shipped codec
        available = codebooks.shape[0]
        self.num_codebooks = available if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= available:
            raise CodecError(f"{name} has {available} codebooks; cannot use {self.num_codebooks}")
        # Encoding: the longest CQT filter (C1, twice the usual length) spans about 22 frames each
        # side of its centre. Decoding: a sample is covered by the synthesis windows of the frames
        # up to synthesis_fft / (2 * hop) = 1 away on each side, and nothing else.
        longest_filter = cfg.filter_scale / (2 ** (1 / 12) - 1) * cfg.sample_rate / model.frequencies[0]
        self.encode_context_frames = math.ceil(longest_filter / 2 / cfg.hop_length) + 2
        self.decode_context_frames = math.ceil(cfg.synthesis_fft / 2 / cfg.hop_length)

    @classmethod
    def load(cls, path: str | Path = EMBEDDED_WEIGHTS, num_codebooks: int | None = None, name: str | None = None):
        """A codec from a weights file written by `save` (by default the one shipped in the package)."""
        path = Path(path)
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
            config = SpectralConfig(**json.loads(meta["config"]))
            model = SpectralModel(config, tensors["partial_gain"].numpy(), tensors["noise_gain"].numpy())
            codebooks = tensors["codebooks"]
        except FileNotFoundError:
            raise CodecError(f"no codec weights at {path}") from None
        except (SafetensorError, KeyError, TypeError, ValueError, OSError) as err:
            raise CodecError(f"{path} is not a spectral codec weights file ({err})") from None
        return cls(model, codebooks, name or str(path), num_codebooks)

    def save(self, path: str | Path) -> None:
        """Codebooks, calibration and config in one safetensors file, written atomically."""
        tensors = {
            "codebooks": self.codebooks.contiguous(),
            "partial_gain": torch.from_numpy(self.model.partial_gain).float(),
            "noise_gain": torch.from_numpy(self.model.noise_gain).float(),
        }
        data = save_safetensors(tensors, metadata={"config": json.dumps(self.model.config.to_dict())})
        atomic_write(Path(path), lambda f: f.write(data))

    def features(self, wav: Tensor) -> Tensor:
        """wav (B, 1, N) at the codec rate, N a multiple of hop -> compressed features (B, T, dim)."""
        rows = [self.model.analyze(row[0].cpu().numpy().astype(np.float32)) for row in wav]
        return torch.from_numpy(np.stack(rows))

    def _encode(self, wav: Tensor) -> Tensor:
        feats = self.features(wav)  # (B, T, dim)
        codes = quantize(feats.reshape(-1, feats.shape[-1]), self.codebooks[: self.num_codebooks])  # (B * T, K)
        return codes.reshape(feats.shape[0], feats.shape[1], -1).transpose(1, 2)  # (B, K, T)

    def _decode(self, codes: Tensor, start_frame: int = 0) -> Tensor:
        batch, _, frames = codes.shape
        feats = dequantize(codes.transpose(1, 2).reshape(-1, codes.shape[1]).cpu(), self.codebooks)
        return self._synthesize(feats.reshape(batch, frames, -1), start_frame)  # (B, 1, T * hop)

    def _synthesize(self, feats: Tensor, start_frame: int) -> Tensor:
        """feats (B, T, dim) -> wav (B, 1, T * hop), row by row."""
        return torch.stack([self.model.synthesize(row, start_frame) for row in feats])[:, None]

    # ---- the continuous side: latents are feature frames ----

    def _entry(self, k: int, codes: Tensor) -> Tensor:
        return self.codebooks[k][codes.cpu()].transpose(1, 2)  # (B, T) -> (B, dim, T)

    def _two_stage(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Codebook 0's code of each frame, and the unquantized features minus its entry: stage 2
        then learns what 4 codebooks would have rounded away too."""
        feats = self.features(wav)  # (B, T, dim)
        flat = feats.reshape(-1, feats.shape[-1])  # (B * T, dim)
        coarse = nearest(flat, self.codebooks[0])  # (B * T,): quantize's first stage, so encode's codebook 0
        residual = (flat - self.codebooks[0][coarse]).reshape(feats.shape)  # (B, T, dim)
        return coarse.reshape(feats.shape[0], 1, -1), residual.transpose(1, 2)  # (B, 1, T), (B, dim, T)

    def _snap(self, z: Tensor) -> Tensor:
        batch, dim, frames = z.shape
        codes = quantize(z.transpose(1, 2).reshape(-1, dim).cpu(), self.codebooks[: self.num_codebooks])  # (B * T, K)
        return codes.reshape(batch, frames, -1).transpose(1, 2)  # (B, K, T)

    def _decode_continuous(self, z: Tensor, start_frame: int = 0) -> Tensor:
        # Contiguous, as decode's features are: synthesis' matmuls round differently on other layouts.
        return self._synthesize(z.cpu().transpose(1, 2).contiguous(), start_frame)  # (B, dim, T) -> (B, 1, T * hop)


def load_embedded(num_codebooks: int | None = None, device: str = "cpu") -> SpectralCodec:
    """The codec shipped in the package; `load_codec("embedded")` comes here. CPU only: its
    analysis runs in librosa, and its synthesis costs milliseconds per second of audio."""
    if torch.device(device).type != "cpu":
        raise CodecError(f"the embedded codec runs on the CPU only, not {device}")
    return SpectralCodec.load(EMBEDDED_WEIGHTS, num_codebooks, name="embedded")
