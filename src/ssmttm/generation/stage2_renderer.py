"""Two-stage rendering: stage 2 (diffusion/) turns stage 1's codebook-0 codes into the codec's
continuous latents, and the codec decodes them.

Stage 2 renders overlapping windows (`Stage2Config.window_frames`, `overlap_frames`), each
inpainted from the last one's overlap, so memory is flat in the duration and a stream yields audio
window by window. Latency: a stream's first audio waits for one window of stage-1 frames plus that
window's diffusion, rather than one chunk of frames; later windows arrive every
window - overlap frames. Seeds: one int seeds the batch's noise together (as the LM's sampling);
one seed per prompt renders each prompt on its own, so a prompt and seed give the same audio in
any batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ssmttm.codecs import Codec
from ssmttm.diffusion import Stage2Model, WindowStream
from ssmttm.diffusion.pretrained import Stage2Pretrained
from ssmttm.generation.renderer import RenderRequest, RenderStream


class Stage2Renderer:
    """Reads the LM's first codebook; renders the rest with a stage-2 model and the codec."""

    codebooks = 1

    def __init__(self, codec: Codec, model: Stage2Model, config: Stage2Pretrained) -> None:
        expected = codec.latent_dim(1, codec.num_codebooks)
        if model.cfg.denoiser.latent_dim != expected or model.cfg.denoiser.cardinality != codec.cardinality:
            raise ValueError(
                f"stage 2 generates {model.cfg.denoiser.latent_dim}-d latents for {model.cfg.denoiser.cardinality} "
                f"coarse tokens; codec {codec.name} has {expected}-d residual latents and {codec.cardinality} tokens"
            )
        self.codec, self.model, self.config = codec, model.eval(), config
        self.name = f"stage 2 over codec {codec.name}"
        self.sample_rate = codec.sample_rate
        self.frame_rate = codec.frame_rate
        self.cardinality = codec.cardinality

    @property
    def default_steps(self) -> int:
        return self.model.cfg.steps

    @property
    def default_cfg_scale(self) -> float:
        return self.model.cfg.cfg_scale

    def render(self, codes: Tensor, request: RenderRequest | None = None) -> Tensor:
        """codes (B, 1, T) -> wav (B, 1, T * hop): all of stage 2's windows, then one decode."""
        stream = self.stream(request)
        parts = [stream.push(codes), stream.flush()]
        return torch.cat(parts, dim=-1)

    def stream(self, request: RenderRequest | None = None) -> RenderStream:
        if request is None:
            raise ValueError("stage 2 renders from the prompts' text: give the render a RenderRequest")
        return _Stage2Stream(self, request)


class _Stage2Stream:
    """push(codes (B, 1, t)) -> wav of every window finished; the audio equals `render`'s."""

    def __init__(self, renderer: Stage2Renderer, request: RenderRequest) -> None:
        self.codec = renderer.codec
        self.batch = batch = request.text.shape[0]
        seeds = _seeds(request.seed, batch)
        kwargs = {"steps": request.steps, "cfg_scale": request.cfg_scale}
        model = renderer.model
        if isinstance(request.seed, Sequence):  # each prompt on its own: its audio does not depend on the batch
            mask = [None] * batch if request.mask is None else [request.mask[i : i + 1] for i in range(batch)]
            self.windows = [
                WindowStream(model, request.text[i : i + 1], mask[i], seed=seeds[i], **kwargs) for i in range(batch)
            ]
        else:
            self.windows = [WindowStream(model, request.text, request.mask, seed=seeds[0], **kwargs)]
        self.decoder = self.codec.latent_stream_decoder()
        self.pending: list[Tensor] = []  # coarse codes (B, 1, t) whose latents are still to come
        self.device = next(model.parameters()).device

    def push(self, codes: Tensor) -> Tensor:
        codes = codes[:, :1]
        self.pending.append(codes.cpu())
        coarse = codes[:, 0].to(self.device)  # (B, t)
        return self._decode(
            self._rows([stream.push(row) for stream, row in zip(self.windows, self._split(coarse), strict=True)])
        )

    def flush(self) -> Tensor:
        tail = self._decode(self._rows([stream.flush() for stream in self.windows]))
        return torch.cat([tail, self.decoder.flush()], dim=-1)

    def _split(self, coarse: Tensor) -> list[Tensor]:
        return [coarse] if len(self.windows) == 1 else list(coarse.split(1))

    @staticmethod
    def _rows(per_stream: list[list[Tensor]]) -> list[Tensor]:
        """Each stream's pieces (rows of the batch, in step: every stream renders the same windows)
        -> one (B, D, n) piece per window."""
        return [torch.cat(parts, dim=0) for parts in zip(*per_stream, strict=True)]

    def _decode(self, pieces: list[Tensor]) -> Tensor:
        """Each latent piece (B, D, n) with its n coarse frames, composed and pushed into the codec's
        stream -> the audio finished now (B, 1, m)."""
        audio = [self.decoder.push(self.codec.compose(self._take(p.shape[-1]), p.float().cpu())) for p in pieces]
        return torch.cat(audio, dim=-1) if audio else torch.zeros(self.batch, 1, 0)

    def _take(self, frames: int) -> Tensor:
        """The next `frames` coarse frames (B, 1, frames), in the order they were pushed."""
        held = torch.cat(self.pending, dim=-1)
        self.pending = [held[..., frames:]]
        return held[..., :frames]


def _seeds(seed: int | Sequence[int] | None, batch: int) -> list[int]:
    """The seed of each WindowStream: the one given, each prompt's, or one drawn from torch's RNG."""
    if seed is None:
        return [int(torch.randint(0, 2**31 - 1, ()))]
    if isinstance(seed, Sequence):
        if len(seed) != batch:
            raise ValueError(f"{len(seed)} seeds for {batch} prompts")
        return [int(s) for s in seed]
    return [int(seed)]
