"""DAC 44.1 kHz, the paper's codec, through `transformers.DacModel` (not descript-audio-codec,
whose package pulls torchaudio). 86.13 frames/s, 9 codebooks of 1024; the LM uses the first K."""

from __future__ import annotations

import torch
from torch import Tensor

from ssmttm.codecs.base import Codec, CodecError

DAC_44KHZ = "descript/dac_44khz"


class DacCodec(Codec):
    def __init__(self, model, name: str, num_codebooks: int | None = None, device: str | torch.device = "cpu"):
        config = model.config
        self.model = model.eval().to(device)
        self.name = name
        self.sample_rate = int(config.sampling_rate)
        self.hop_length = int(config.hop_length)
        self.cardinality = int(config.codebook_size)
        available = int(config.n_codebooks)
        self.num_codebooks = available if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= available:
            raise CodecError(f"{name} has {available} codebooks; cannot use {self.num_codebooks}")
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, name: str = DAC_44KHZ, num_codebooks: int | None = None, device: str = "cpu"):
        """A local folder saved with `save_pretrained`, or a hub id when the hub is reachable."""
        from transformers import DacModel

        try:
            model = DacModel.from_pretrained(name)
        except OSError as err:
            raise CodecError(
                f"cannot load DAC from {name!r}: not a local model folder, and the hub could not provide it "
                f"({str(err).splitlines()[0][:120]})"
            ) from None
        return cls(model, name, num_codebooks, device)

    def _encode(self, wav: Tensor) -> Tensor:
        return self.model.encode(wav.to(self.device), n_quantizers=self.num_codebooks).audio_codes

    def _decode(self, codes: Tensor) -> Tensor:
        return self.model.decode(audio_codes=codes.to(self.device)).audio_values[:, None]
