"""DAC 44.1 kHz, the paper's codec, through `transformers.DacModel` (not descript-audio-codec,
whose package pulls torchaudio). 86.13 frames/s, 9 codebooks of 1024; the LM uses the first K."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmttm.codecs.base import Codec, CodecError, CodecFacts, load_hf_codec_model

DAC_44KHZ = "descript/dac_44khz"
RESIDUAL_RADIUS = 3 * (1 + 3 + 9)  # a residual unit stack: kernel-7 convs dilated 1, 3 and 9, each reaching 3 * d


class DacCodec(Codec):
    chunk_frames = 256  # about 3 s at 44.1 kHz; the decoder holds about 2 MB of activations per frame
    # Factorized codes: each codebook looks up in its own `codebook_dim`-d space (8 for the 44.1 kHz
    # model) and projects to the decoder's space through its own out_proj, so latents concatenate.
    latent_layout = "stacked"
    # decode_latents' default. Snapping gives back codes that DAC's decoder was trained on; not
    # snapping keeps whatever a stage 2 model generated between entries. Which sounds better must
    # be chosen by listening measurements on the real weights, which cannot be downloaded here.
    snap_latents = True

    def __init__(self, model, name: str, num_codebooks: int | None = None, device: str | torch.device = "cpu"):
        facts = self.facts_from_config(model.config, name)
        self.model = model.eval().to(device)
        self.name = name
        self.sample_rate, self.hop_length, self.cardinality = facts.sample_rate, facts.hop_length, facts.cardinality
        available = facts.num_codebooks
        self.num_codebooks = available if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= available:
            raise CodecError(f"{name} has {available} codebooks; cannot use {self.num_codebooks}")
        self.device = torch.device(device)
        self.encode_context_frames, self.decode_context_frames = facts.encode_context, facts.decode_context
        self.codebook_latent_dim = int(model.config.codebook_dim)

    @classmethod
    def facts_from_config(cls, config, name: str) -> CodecFacts:
        """Rates, codebooks and context from a DacConfig: what the codec is, without its weights."""
        encode, decode = dac_context_frames(config)
        return CodecFacts(
            name=name,
            kind=cls.__name__,
            sample_rate=int(config.sampling_rate),
            hop_length=int(config.hop_length),
            num_codebooks=int(config.n_codebooks),
            cardinality=int(config.codebook_size),
            encode_context=(encode, encode),
            decode_context=(decode, decode),
        )

    @classmethod
    def from_pretrained(cls, name: str = DAC_44KHZ, num_codebooks: int | None = None, device: str = "cpu"):
        """A local folder saved with `save_pretrained`, or a hub id when the hub is reachable."""
        from transformers import DacModel

        return cls(load_hf_codec_model(DacModel, name, "DAC", DAC_44KHZ), name, num_codebooks, device)

    def _encode(self, wav: Tensor) -> Tensor:
        return self.model.encode(wav.to(self.device), n_quantizers=self.num_codebooks).audio_codes

    def _decode(self, codes: Tensor, start_frame: int = 0) -> Tensor:
        wav = self.model.decode(audio_codes=codes.to(self.device)).audio_values[:, None]  # (B, 1, ~T * hop)
        return self._pad(wav, codes.shape[-1])

    def _pad(self, wav: Tensor, frames: int) -> Tensor:
        # An odd upsampling ratio makes the transposed convolutions one sample short at the end.
        return torch.nn.functional.pad(wav, (0, frames * self.hop_length - wav.shape[-1]))

    # ---- the continuous side: each codebook's entry, before its out_proj ----

    def _entry(self, k: int, codes: Tensor) -> Tensor:
        return self.model.quantizer.quantizers[k].codebook(codes.to(self.device)).transpose(1, 2)  # (B, d, T)

    def _two_stage(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Codebook 0's codes, and the quantized latents of the others (as Discodiff trains on):
        DAC's encoder output is only ever decoded through its codebooks."""
        codes = self._encode(wav)[:, : self.num_codebooks]  # (B, K, T)
        return codes[:, :1], self.latents(codes[:, 1:], 1, self.num_codebooks)  # (B, 1, T), (B, d * (K - 1), T)

    def _split(self, z: Tensor) -> list[Tensor]:
        """z (B, d * K, T) -> K latents (B, d, T), one per codebook."""
        return list(z.to(self.device).split(self.codebook_latent_dim, dim=1))

    def _snap(self, z: Tensor) -> Tensor:
        """Each codebook's nearest entry by DAC's own lookup (DacVectorQuantize.decode_latents:
        cosine similarity, as it L2-normalises latents and codebook), as codes (B, K, T)."""
        quantizers = self.model.quantizer.quantizers
        return torch.stack([quantizers[k].decode_latents(part)[1] for k, part in enumerate(self._split(z))], dim=1)

    def _decode_continuous(self, z: Tensor, start_frame: int = 0) -> Tensor:
        """Each codebook's latent through its out_proj, summed as DacResidualVectorQuantize.from_codes
        sums them, then the decoder: what `decode` does, with the entries replaced by z."""
        quantizers = self.model.quantizer.quantizers
        hidden = 0.0
        for k, part in enumerate(self._split(z)):
            hidden = hidden + quantizers[k].out_proj(part)  # (B, hidden, T)
        wav = self.model.decoder(hidden)  # (B, 1, ~T * hop)
        return self._pad(wav, z.shape[-1])


def dac_context_frames(config) -> tuple[int, int]:
    """(encode, decode) frames of context each side: DAC is fully convolutional with symmetric
    padding, so this is the receptive field's reach beyond a frame's own samples, rounded up.

    Counted in samples at the audio rate: a conv of reach r at a level that is `rate` samples per
    step reaches r * rate; a strided conv (kernel 2s, padding ceil(s/2)) reaches ceil(s/2) samples
    of its input left and s - ceil(s/2) right; a transposed one at most one input step each side.
    For the 44.1 kHz model: encode 8 frames, decode 10, equal to the field measured with gradients.
    """
    hop = int(config.hop_length)
    reach, rate = 3, 1  # first conv, kernel 7
    for stride in config.downsampling_ratios:
        reach += RESIDUAL_RADIUS * rate + math.ceil(stride / 2) * rate
        rate *= stride
    encode = math.ceil((reach + 1 * hop) / hop)  # last conv: kernel 3 at the frame rate
    reach, rate = 3 * hop, hop  # first conv, kernel 7 at the frame rate
    for stride in config.upsampling_ratios:
        reach += 1 * rate  # transposed conv: one input step
        rate //= stride
        reach += RESIDUAL_RADIUS * rate
    decode = math.ceil((reach + 3) / hop)  # last conv: kernel 7 at the audio rate
    return encode, decode


def dac_44khz_config():
    """The architecture of descript/dac_44khz (DacConfig's defaults, at 44.1 kHz), for random weights."""
    from transformers import DacConfig

    return DacConfig(sampling_rate=44100)
