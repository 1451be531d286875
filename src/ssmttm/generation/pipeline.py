"""Text in, music out: `TextToMusic` ties an exported LM to its codec, renderer and text encoder.

    model = TextToMusic.from_pretrained("models/demo")          # a folder or a hub id
    wavs = model.generate(["calm piano with soft strings"], duration=10.0, seed=0)   # (B, 1, N)
    for chunk in model.stream("fast funk", duration=60.0): ...  # audio while it is generated
    model.generate_to_file("slow ambient", "long.flac", duration=600.0)  # memory flat in duration

Settings left out come from the model's saved generation defaults (ssmttm.pretrained). Long
generation carries the SSM state and renders audio chunk by chunk through the renderer's stream
(renderer.py; by default the codec's streaming decoder), so nothing grows with the duration except
the output file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from ssmttm._allocator import tune_allocator
from ssmttm.audio import GrowingWav, audio_format, partial_path
from ssmttm.beat_clock import no_clock, tempo_clock
from ssmttm.codecs import Codec, codec_device, load_codec
from ssmttm.conditioning import Conditioning
from ssmttm.diffusion.pretrained import STAGE2_FOLDER, Stage2Error, load_stage2, save_stage2
from ssmttm.files import replace_durably, staging_path
from ssmttm.generation.generator import Generator
from ssmttm.generation.precision import Precision, resolve_device
from ssmttm.generation.renderer import CodecRenderer, Renderer, RenderRequest
from ssmttm.generation.sampling import SamplingConfig
from ssmttm.generation.stage2_renderer import Stage2Renderer
from ssmttm.lm import MusicLM
from ssmttm.ops.linear import cast_linear_weights
from ssmttm.ops.quantize import quantize_linear_weights
from ssmttm.patterns import StreamingRevert
from ssmttm.pretrained import PretrainedConfig, load_pretrained, read_config, resolve, save_pretrained
from ssmttm.text import TextEncoder, load_text_encoder
from ssmttm.text.stated_tempo import stated_bpm

MAX_DURATION_S = 3600.0  # a guard against typos (600000 s), not a limit of the method


class GenerationError(ValueError):
    """A request that cannot be generated: the message says which argument and why."""


def check_duration(duration: float, maximum: float = MAX_DURATION_S) -> None:
    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise GenerationError(f"duration must be a positive number of seconds, got {duration!r}")
    if duration > maximum:
        raise GenerationError(f"duration {duration:g} s is above the maximum of {maximum:g} s")


class TextToMusic:
    def __init__(
        self,
        lm: MusicLM,
        codec: Codec,
        text_encoder: TextEncoder,
        config: PretrainedConfig,
        *,
        renderer: Renderer | None = None,
        precision: Precision | None = None,
        max_duration: float = MAX_DURATION_S,
    ) -> None:
        """The codec turns continued audio into the LM's codes; the renderer turns codes into audio
        (by default the codec's decoder, `CodecRenderer`) and reads the first `renderer.codebooks`
        of the LM's codebooks.

        The pipeline owns `lm`: a reduced `precision` casts its weights in place rather than keep
        an fp32 copy beside the one it decodes with (`Generator` says what each dtype does). None
        is fp32 throughout."""
        renderer = CodecRenderer(codec) if renderer is None else renderer
        precision = Precision() if precision is None else precision
        _check_parts(lm, codec, renderer, text_encoder)
        try:
            precision.check(lm.cfg.backbone.kind)
        except ValueError as err:
            raise GenerationError(str(err)) from None
        if precision.weight_dtype != torch.float32:
            cast_linear_weights(lm, precision.weight_dtype)
        if precision.quantized is not None:
            quantize_linear_weights(lm, precision.quantized, precision.group)
        self.lm, self.codec, self.renderer = lm.eval(), codec, renderer
        self.text_encoder, self.config, self.precision = text_encoder, config, precision
        self.generator = Generator(lm, state_dtype=precision.state_dtype)
        self.max_duration = max_duration
        self.source = config.source  # what it was loaded from: `from_pretrained` names the folder or hub id

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: str = "cpu",
        precision: str | Precision = "fp32",
        stage2: str | Path | None = None,
    ) -> TextToMusic:
        """An exported model (folder or hub id) with the codec and text encoder its config names.

        A two-stage model's folder holds its stage 2 (`stage2/`), which renders the LM's codes;
        `stage2` names one to pair with a stage 1 that has none (the authors' K=1 checkpoints, once
        imported), and must be for the same codec and text encoder.

        `device`: "cpu", "cuda", "cuda:N" or "auto"; it is the LM's and the text encoder's, and the
        codec's too unless it is a CPU-only one (`codecs.codec_device`). Audio always comes back on
        the CPU. `precision`: "fp32", "bf16", "int8", "int4" (`Precision.named`), or a `Precision`.

        Loading tunes glibc's allocator for the process (ssmttm._allocator: a long forward was
        1.7x slower without it); set SSMTTM_KEEP_MALLOC=1 to keep yours."""
        tune_allocator()
        device = resolve_device(device)
        directory = resolve(source)
        kind = read_config(directory).model.backbone.kind
        precision = Precision.named(precision, kind) if isinstance(precision, str) else precision
        lm, config = load_pretrained(directory, device=device, dtype=torch.float32, linear_dtype=precision.weight_dtype)
        stage2_dir = _stage2_folder(directory, config, stage2)
        # A stage 2 renders all the codec's codebooks from the LM's first; a codec renders what the LM predicts.
        codebooks = None if stage2_dir is not None else lm.cfg.num_codebooks
        codec = load_codec(config.codec, codebooks, device=codec_device(config.codec, device))
        text_encoder = load_text_encoder(config.text_encoder, device, padding=config.text_padding)
        renderer = None if stage2_dir is None else _stage2_renderer(stage2_dir, config, codec, device)
        model = cls(lm, codec, text_encoder, config, precision=precision, renderer=renderer)
        model.source = str(source)
        return model

    @property
    def two_stage(self) -> bool:
        return isinstance(self.renderer, Stage2Renderer)

    def save_pretrained(self, directory: str | Path) -> Path:
        """The LM's folder, with its stage 2 in `stage2/` for a two-stage model."""
        if self.precision.quantized is not None:  # packed weights would not load back as a model's
            raise GenerationError(
                f"a model decoding at precision {self.precision.name} cannot be saved: its weights are packed "
                f"for decoding; load it at fp32 (or bf16) to save it"
            )
        stage2 = ""
        if isinstance(self.renderer, Stage2Renderer):
            stage2 = STAGE2_FOLDER
            s2 = self.renderer.config
            save_stage2(
                self.renderer.model,
                Path(directory) / STAGE2_FOLDER,
                codec=s2.codec,
                text_encoder=s2.text_encoder,
                trained_steps=s2.trained_steps,
                source=s2.source,
            )
        return save_pretrained(
            self.lm,
            directory,
            codec=self.config.codec,
            text_encoder=self.config.text_encoder,
            generation=self.config.generation,
            trained_steps=self.config.trained_steps,
            source=self.config.source,
            text_padding=self.config.text_padding,
            stage2=stage2,
        )

    @property
    def device(self) -> str:
        """Where the LM decodes ("cpu", "cuda:0")."""
        return str(next(self.lm.parameters()).device)

    @property
    def sample_rate(self) -> int:
        return self.renderer.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.renderer.frame_rate

    # -- requests ----------------------------------------------------------------------------------

    def sampling(
        self,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> SamplingConfig:
        """The saved defaults with the given settings on top; out-of-range values are a GenerationError."""
        given = {"cfg_scale": cfg_scale, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        try:
            return dataclasses.replace(self.config.generation, **{k: v for k, v in given.items() if v is not None})
        except ValueError as err:
            raise GenerationError(str(err)) from None

    def num_frames(self, duration: float) -> int:
        """Codec frames for `duration` seconds; a GenerationError when it is not a usable duration."""
        check_duration(duration, self.max_duration)
        return max(1, math.ceil(duration * self.frame_rate))

    def conditioning(self, prompts: str | Sequence[str], sampling: SamplingConfig) -> Conditioning:
        """The prompts' conditions, with CFG's unconditional twins when `sampling` is guided.

        The unconditional rows are the empty caption, encoded in one batch with the prompts, as the
        release does. With our encoders that is the LM's null condition (rows with no real position);
        in the release's layout, T5's </s> padded like the prompts. Models with a beat clock get the
        tempo each prompt states; the piece starts on a downbeat (a continuation's clip is taken to
        start on one too), and the unconditional rows hear no clock.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise GenerationError("no prompt given")
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise GenerationError(f"empty prompt {prompt!r}: describe the music to generate")
        guided = sampling.cfg_scale != 1.0
        # One call, warning once when a prompt is truncated; (2B, L, D) and (2B, L) when guided.
        text, mask = self.text_encoder.embed(prompts + [""] * len(prompts) if guided else prompts)
        clock = None
        if self.lm.cfg.beat_clock:
            clock = torch.tensor([tempo_clock(stated_bpm(p), self.frame_rate) for p in prompts], dtype=torch.float64)
            if guided:
                clock = torch.cat([clock, no_clock(len(prompts))])
        return Conditioning(text, mask, clock, prompts=len(prompts))

    def _continuation(
        self, audio: Tensor | np.ndarray | None, rate: int | None, batch: int, duration: float, frames: int
    ) -> Tensor | None:
        """Codes (B, K, P) of the clip to continue, the same clip for every prompt; a GenerationError
        when it leaves no frame of the `duration` (which counts the clip) to generate."""
        if audio is None:
            return None
        if rate is None:
            raise GenerationError("continuation audio needs its sample rate")
        wav = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        wav = wav.reshape(1, -1, wav.shape[-1]) if wav.dim() <= 2 else wav  # (1, C, N)
        codes = self.codec.encode(wav.mean(dim=1, keepdim=True), rate)[:, : self.lm.cfg.num_codebooks]  # (1, K, P)
        if codes.shape[-1] >= frames:
            # The length in samples: in codec frames it is rounded up to a whole frame.
            seconds = wav.shape[-1] / rate
            what = "longer than" if seconds > duration else "as long as" if seconds == duration else "within a frame of"
            raise GenerationError(
                f"the clip to continue is {seconds:g} s, {what} the duration of {duration:g} s, which counts "
                "the clip: ask for a longer duration"
            )
        return codes.expand(batch, -1, -1)

    # -- generation --------------------------------------------------------------------------------

    def generate_codes(
        self,
        prompts: str | Sequence[str],
        duration: float = 10.0,
        seed: int | Sequence[int] | None = None,
        continuation: Tensor | np.ndarray | None = None,
        continuation_rate: int | None = None,
        progress: bool = False,
        **settings,
    ) -> Tensor:
        """codes (B, K, T) for the prompts; `continuation` (C, N) audio at `continuation_rate` is
        encoded and continued, and the output starts with its frames."""
        codes, _ = self._codes(prompts, duration, seed, continuation, continuation_rate, progress, **settings)
        return codes

    def _codes(self, prompts, duration, seed, continuation, continuation_rate, progress, **settings):
        frames = self.num_frames(duration)
        sampling = self.sampling(**settings)
        cond = self.conditioning(prompts, sampling)
        codes = self._continuation(continuation, continuation_rate, cond.batch, duration, frames)
        out = self.generator.generate(cond, frames, sampling=sampling, seed=seed, continuation=codes, progress=progress)
        return out, cond

    def generate(
        self,
        prompts: str | Sequence[str],
        duration: float = 10.0,
        *,
        seed: int | Sequence[int] | None = None,
        diffusion_steps: int | None = None,
        diffusion_cfg: float | None = None,
        continuation: Tensor | np.ndarray | None = None,
        continuation_rate: int | None = None,
        progress: bool = False,
        **settings,
    ) -> Tensor:
        """wav (B, 1, N) at `sample_rate`, N = duration x sample_rate; keywords as `generate_codes`
        (seed, continuation, continuation_rate, progress, cfg_scale, temperature, top_k, top_p), and
        for a two-stage model stage 2's `diffusion_steps` and `diffusion_cfg` (default: its own)."""
        self.check_diffusion(diffusion_steps, diffusion_cfg)
        codes, cond = self._codes(prompts, duration, seed, continuation, continuation_rate, progress, **settings)
        request = self._request(cond, seed, diffusion_steps, diffusion_cfg)
        wav = self.renderer.render(codes[:, : self.renderer.codebooks], request)  # (B, 1, N)
        return wav[..., : round(duration * self.sample_rate)].cpu()

    def stream(
        self,
        prompts: str | Sequence[str],
        duration: float = 10.0,
        chunk_seconds: float = 1.0,
        seed: int | Sequence[int] | None = None,
        continuation: Tensor | np.ndarray | None = None,
        continuation_rate: int | None = None,
        progress: bool = False,
        diffusion_steps: int | None = None,
        diffusion_cfg: float | None = None,
        **settings,
    ) -> Iterator[Tensor]:
        """Audio chunks (B, 1, n) as they are generated; joined, they equal `generate` (same seed).

        Frames go to the renderer's stream every `chunk_seconds`; only its context and the
        pattern's staircase are held, so memory does not grow with the duration. A two-stage
        model's stream yields a window of stage 2 at a time (stage2_renderer.py says the latency).
        """
        self.check_diffusion(diffusion_steps, diffusion_cfg)
        frames = self.num_frames(duration)
        sampling = self.sampling(**settings)
        cond = self.conditioning(prompts, sampling)
        codes = self._continuation(continuation, continuation_rate, cond.batch, duration, frames)
        chunk = max(1, round(chunk_seconds * self.frame_rate))
        revert = StreamingRevert(self.lm.pattern)
        decoder = self.renderer.stream(self._request(cond, seed, diffusion_steps, diffusion_cfg))
        codebooks = self.renderer.codebooks
        pending: list[Tensor] = []
        remaining = round(duration * self.sample_rate)
        columns = self.generator.columns(
            cond, frames, sampling=sampling, seed=seed, continuation=codes, progress=progress
        )
        for column in columns:
            frame = revert.push(column)
            if frame.shape[-1]:
                pending.append(frame[:, :codebooks])
            if len(pending) == chunk:
                audio = decoder.push(torch.cat(pending, dim=-1))[..., :remaining]
                pending, remaining = [], remaining - audio.shape[-1]
                if audio.shape[-1]:
                    yield audio.cpu()
        tail = decoder.push(torch.cat(pending, dim=-1)) if pending else None
        audio = decoder.flush() if tail is None else torch.cat([tail, decoder.flush()], dim=-1)
        if audio[..., :remaining].shape[-1]:
            yield audio[..., :remaining].cpu()

    def check_diffusion(self, steps: int | None, cfg_scale: float | None) -> None:
        """A GenerationError for stage-2 settings a model cannot take: any, for a single-stage model."""
        if steps is None and cfg_scale is None:
            return
        if not self.two_stage:
            raise GenerationError(
                f"{self.source} is a single-stage model: diffusion steps and guidance apply to two-stage models only"
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise GenerationError(f"diffusion steps {steps!r} must be a positive integer")
        if cfg_scale is not None and not (math.isfinite(cfg_scale) and cfg_scale >= 0):
            raise GenerationError(f"diffusion guidance {cfg_scale!r} must be finite and >= 0 (1 = none)")

    def _request(
        self, cond: Conditioning, seed: int | Sequence[int] | None, steps: int | None, cfg_scale: float | None
    ) -> RenderRequest:
        """The prompts' rows of the conditioning (not CFG's twins), for a renderer that reads text."""
        rows = cond.batch
        mask = None if cond.mask is None else cond.mask[:rows]
        return RenderRequest(cond.text[:rows], mask, seed, steps, cfg_scale)

    def generate_to_file(self, prompt: str, path: str | Path, duration: float = 10.0, **kwargs) -> Path:
        """Generate one prompt straight into an audio file (wav, flac, mp3 or ogg, by extension),
        chunk by chunk, memory flat in the duration; keywords as `stream`.

        The audio grows in `path`.partial, a WAV that players can open while it grows, renamed to
        `path` once complete. A FLAC or Ogg file cannot be read before it is closed, and an MP3
        encoder holds frames back, so those formats are encoded alongside, from the same float
        audio, into a hidden temporary file that replaces `path` at the end; the partial WAV is then
        removed. Interrupted (KeyboardInterrupt), the partial stays, a valid WAV of the audio so
        far; other errors remove it, and a request that cannot be generated creates no file at all.
        """
        path = Path(path)
        fmt = audio_format(path)
        partial = partial_path(path)
        encoded = None if fmt == "WAV" else staging_path(path)
        chunks = self.stream(prompt, duration, **kwargs)
        first = next(chunks, None)  # a bad request raises here, before any file exists
        wav = GrowingWav(partial, self.sample_rate)
        try:
            with wav, _encoder(encoded, fmt, self.sample_rate) as out:
                for audio in itertools.chain([] if first is None else [first], chunks):
                    samples = audio[0, 0].numpy()
                    wav.write(samples)
                    if out is not None:
                        out.write(samples)
            if encoded is None:
                replace_durably(partial, path)
            else:
                replace_durably(encoded, path)
                partial.unlink()
        except KeyboardInterrupt:
            if wav.frames == 0:
                partial.unlink(missing_ok=True)
            raise
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            if encoded is not None:
                encoded.unlink(missing_ok=True)
        return path


@contextlib.contextmanager
def _encoder(path: Path | None, fmt: str, sample_rate: int) -> Iterator[sf.SoundFile | None]:
    """A mono `fmt` file open for writing at `path`; None without a path."""
    if path is None:
        yield None
        return
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, format=fmt) as out:
        yield out


def _check_parts(lm: MusicLM, codec: Codec, renderer: Renderer, text_encoder: TextEncoder) -> None:
    """A GenerationError naming the first part that does not fit the LM."""
    cfg = lm.cfg
    if codec.cardinality != cfg.cardinality or codec.num_codebooks < cfg.num_codebooks:
        raise GenerationError(
            f"codec {codec.name} gives {codec.num_codebooks} x {codec.cardinality} codes; the model reads "
            f"{cfg.num_codebooks} x {cfg.cardinality}"
        )
    if renderer.codebooks > cfg.num_codebooks or renderer.cardinality != cfg.cardinality:
        raise GenerationError(
            f"{renderer.name} renders {renderer.codebooks} x {renderer.cardinality} codes; the model predicts "
            f"{cfg.num_codebooks} x {cfg.cardinality}"
        )
    if renderer.frame_rate != codec.frame_rate:
        raise GenerationError(
            f"{renderer.name} reads {renderer.frame_rate:g} frames/s; codec {codec.name} makes {codec.frame_rate:g}"
        )
    if text_encoder.dim != cfg.text_dim:
        raise GenerationError(f"text encoder gives {text_encoder.dim}-d embeddings; the model reads {cfg.text_dim}")
    if text_encoder.padding == "release" and cfg.text_mask != "ignore":
        raise GenerationError("release text padding feeds padded positions to the LM: it needs text_mask ignore")


def _stage2_folder(directory: Path, config: PretrainedConfig, given: str | Path | None) -> Path | None:
    """The stage-2 folder to render with: the one given, the one the model's config names, or none
    (a single-stage model); a GenerationError when the config names one that is not there."""
    if given is not None:
        return Path(given)
    if not config.stage2:
        return None
    folder = directory / config.stage2
    if not folder.is_dir():
        raise GenerationError(
            f"{directory} is stage 1 of a two-stage model and its stage 2 ({folder}) is missing: "
            "restore it, or pass one with --stage2 PATH"
        )
    return folder


def _stage2_renderer(folder: Path, config: PretrainedConfig, codec: Codec, device: str) -> Stage2Renderer:
    """Stage 2 from `folder`, checked against stage 1: the same codec and text encoder."""
    try:
        model, s2 = load_stage2(folder, device)
    except Stage2Error as err:
        raise GenerationError(str(err)) from None
    for what, mine, theirs in (
        ("codec", s2.codec, config.codec),
        ("text encoder", s2.text_encoder, config.text_encoder),
    ):
        if mine != theirs:
            raise GenerationError(f"stage 2 in {folder} was trained for {what} {mine!r}; stage 1 uses {theirs!r}")
    try:
        return Stage2Renderer(codec, model, s2)
    except ValueError as err:
        raise GenerationError(str(err)) from None
