"""EnCodec through `transformers.EncodecModel`; facebook/encodec_32khz is MusicGen's codec:
32 kHz, hop 640, 50 frames/s, 4 codebooks of 2048. The LM uses the first K codebooks.

Only mono models without normalization or chunking are accepted (the 24 and 32 kHz ones): a
normalized model returns a scale per chunk beside the codes, which a stream of tokens cannot carry.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmttm.codecs.base import Codec, CodecError, CodecFacts, load_hf_codec_model

ENCODEC_32KHZ = "facebook/encodec_32khz"
# Both the encoder and the decoder end in a unidirectional LSTM, so a frame depends on all the
# frames before it; a window starts its LSTM this many frames early. With random weights the
# influence of earlier frames falls below float noise within about 20 frames (see the tests and
# benchmarks/README.md); trained gates may remember longer, so this keeps a generous margin.
LSTM_WARMUP_FRAMES = 50


class EncodecCodec(Codec):
    chunk_frames = 500  # 10 s at 50 frames/s; the decoder holds about 1.5 MB of activations per frame
    # Residual VQ in the model's space: every codebook's entries have the encoder's dim and sum
    # (EncodecResidualVectorQuantizer.decode), so a latent is an encoder frame. decode_latents then
    # runs the decoder on it directly; whether snapping to codes first sounds better would need
    # listening measurements on the real weights, which cannot be downloaded here.
    latent_layout = "additive"

    def __init__(self, model, name: str, num_codebooks: int | None = None, device: str | torch.device = "cpu"):
        config = model.config
        facts = self.facts_from_config(config, name)
        self.model = model.eval().to(device)
        self.name = name
        self.sample_rate, self.hop_length, self.cardinality = facts.sample_rate, facts.hop_length, facts.cardinality
        available = facts.num_codebooks
        self.num_codebooks = available if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= available:
            raise CodecError(f"{name} has {available} codebooks; cannot use {self.num_codebooks}")
        # The smallest bandwidth that gives K codebooks: residual quantization makes its codes the
        # first K of the full encode, and it skips the codebooks we would drop.
        by_bandwidth = codebooks_by_bandwidth(config)
        self.bandwidth = min(bw for bw, n in by_bandwidth.items() if n >= self.num_codebooks)
        self.device = torch.device(device)
        self.encode_context_frames, self.decode_context_frames = facts.encode_context, facts.decode_context
        self.codebook_latent_dim = int(config.codebook_dim)

    @classmethod
    def facts_from_config(cls, config, name: str) -> CodecFacts:
        """Rates, codebooks and context from an EncodecConfig: what the codec is, without its weights.
        A config we cannot stream is a CodecError here already."""
        _check_supported(config, name)
        (enc_left, enc_right), (dec_left, dec_right) = seanet_context_frames(config)
        return CodecFacts(
            name=name,
            kind=cls.__name__,
            sample_rate=int(config.sampling_rate),
            hop_length=int(config.hop_length),
            num_codebooks=min(max(codebooks_by_bandwidth(config).values()), int(config.num_quantizers)),
            cardinality=int(config.codebook_size),
            encode_context=(enc_left + LSTM_WARMUP_FRAMES, enc_right),
            decode_context=(dec_left + LSTM_WARMUP_FRAMES, dec_right),
        )

    @classmethod
    def from_pretrained(cls, name: str = ENCODEC_32KHZ, num_codebooks: int | None = None, device: str = "cpu"):
        """A local folder saved with `save_pretrained`, or a hub id when the hub is reachable."""
        from transformers import EncodecModel

        return cls(load_hf_codec_model(EncodecModel, name, "EnCodec", ENCODEC_32KHZ), name, num_codebooks, device)

    def _encode(self, wav: Tensor) -> Tensor:
        out = self.model.encode(wav.to(self.device), bandwidth=self.bandwidth, return_dict=True)
        return out.audio_codes[0]  # (1, B, K, T) -> (B, K, T): one chunk, as chunking is refused

    def _decode(self, codes: Tensor, start_frame: int = 0) -> Tensor:
        out = self.model.decode(codes.to(self.device)[None], [None], return_dict=True)
        return out.audio_values  # (B, 1, T * hop)

    # ---- the continuous side: latents are encoder frames ----

    def _entry(self, k: int, codes: Tensor) -> Tensor:
        return self.model.quantizer.layers[k].decode(codes.to(self.device))  # (B, T) -> (B, dim, T)

    def _two_stage(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Codebook 0's codes, and the unquantized encoder output minus its entry: the same split as
        the embedded codec's, so stage 2 is not bound by the codebooks' precision. (EncodecModel's
        encode multiplies the audio by an all-true padding mask first, which changes nothing.)"""
        embeddings = self.model.encoder(wav.to(self.device))  # (B, dim, T)
        coarse = self.model.quantizer.layers[0].encode(embeddings)  # (B, T)
        return coarse[:, None], embeddings - self._entry(0, coarse)  # (B, 1, T), (B, dim, T)

    def _snap(self, z: Tensor) -> Tensor:
        codes = self.model.quantizer.encode(z.to(self.device), self.bandwidth)  # (K', B, T), K' >= K
        return codes[: self.num_codebooks].transpose(0, 1)  # (B, K, T)

    def _decode_continuous(self, z: Tensor, start_frame: int = 0) -> Tensor:
        return self.model.decoder(z.to(self.device))  # (B, dim, T) -> (B, 1, T * hop), as _decode_frame does


def codebooks_by_bandwidth(config) -> dict[float, int]:
    """Codebooks that each of the config's target bandwidths (kbps) encodes with, counted as
    EncodecResidualVectorQuantizer.get_num_quantizers_for_bandwidth counts them, without building it."""
    bits_per_codebook = math.log2(config.codebook_size) * config.frame_rate
    return {bw: max(1, math.floor(bw * 1000 / bits_per_codebook)) for bw in config.target_bandwidths}


def _check_supported(config, name: str) -> None:
    refused = {
        "normalize=True": config.normalize,
        f"chunk_length_s={config.chunk_length_s}": config.chunk_length_s is not None,
        f"audio_channels={config.audio_channels}": config.audio_channels != 1,
    }
    reasons = [what for what, bad in refused.items() if bad]
    if reasons:
        raise CodecError(
            f"{name}: EnCodec with {', '.join(reasons)} is not supported; use a mono model without "
            "normalization or chunking, such as facebook/encodec_32khz"
        )


def _conv_reach(kernel: int, dilation: int, causal: bool) -> tuple[int, int]:
    """(left, right) input steps a stride-1 EncodecConv1d reaches beyond the output's own step."""
    padding = (kernel - 1) * dilation
    return (padding, 0) if causal else (padding - padding // 2, padding // 2)


def seanet_context_frames(config) -> tuple[tuple[int, int], tuple[int, int]]:
    """((left, right) to encode, (left, right) to decode): frames of context that the convolutions
    of EnCodec's SEANet need, counted in audio samples and rounded up to frames. The LSTMs add
    nothing to the right and are left out on the left (see LSTM_WARMUP_FRAMES).

    A strided conv (kernel 2r, padding r) reaches r - r // 2 steps of its input left and r // 2
    right (r and 0 when causal); a transposed one at most one input step each side (none to the
    right when causal). For facebook/encodec_32khz: encode (4, 4), decode (5, 5) before the warm-up
    (measured with gradients: right 4 and 4).
    """
    causal = config.use_causal_conv
    blocks = [
        _conv_reach(config.residual_kernel_size, config.dilation_growth_rate**j, causal)
        for j in range(config.num_residual_layers)
    ]
    block_left, block_right = sum(b[0] for b in blocks), sum(b[1] for b in blocks)
    hop = int(config.hop_length)

    left, right = _conv_reach(config.kernel_size, 1, causal)
    rate = 1
    for ratio in reversed(config.upsampling_ratios):
        stride_left, stride_right = (ratio, 0) if causal else (ratio - ratio // 2, ratio // 2)
        left, right = left + (block_left + stride_left) * rate, right + (block_right + stride_right) * rate
        rate *= ratio
    last_left, last_right = _conv_reach(config.last_kernel_size, 1, causal)
    encode = (math.ceil((left + last_left * hop) / hop), math.ceil((right + last_right * hop) / hop))

    first_left, first_right = _conv_reach(config.kernel_size, 1, causal)
    left, right, rate = first_left * hop, first_right * hop, hop
    for ratio in config.upsampling_ratios:
        left, right = left + rate, right + (0 if causal else rate)
        rate //= ratio
        left, right = left + block_left * rate, right + block_right * rate
    last_left, last_right = _conv_reach(config.last_kernel_size, 1, causal)
    decode = (math.ceil((left + last_left) / hop), math.ceil((right + last_right) / hop))
    return encode, decode


def encodec_32khz_config():
    """The architecture of facebook/encodec_32khz, as transformers' conversion script builds it
    (convert_encodec_checkpoint_to_pytorch.py), for random weights."""
    from transformers import EncodecConfig

    return EncodecConfig(
        sampling_rate=32_000,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[2.2],
        num_filters=64,
        codebook_size=2048,
        use_causal_conv=False,
        normalize=False,
        use_conv_shortcut=False,
    )
