"""`ssmttm generate "PROMPT" -o out.wav`: text to an audio file, with a JSON sidecar of what made it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ssmttm import DEMO_MODEL
from ssmttm.files import read_json, write_json

if TYPE_CHECKING:
    import numpy as np

# Precision.NAMES, spelled out so that --help imports no torch (test_front_end checks they agree).
PRECISIONS = ["fp32", "bf16", "int8", "int4"]


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    demo = _demo_defaults()
    gen = commands.add_parser("generate", help="generate music from text prompts")
    gen.add_argument("prompt", nargs="?", help='what to generate, in quotes: "calm piano with soft strings"')
    # Words past the first are an unquoted prompt: taken here only to refuse them with a hint.
    gen.add_argument("unquoted", nargs="*", help=argparse.SUPPRESS)
    gen.add_argument("--prompts-file", help="one prompt per line (blank lines skipped), after the quoted prompt if any")
    gen.add_argument(
        "--model", help="exported model folder, shipped model name or hub id (default: the shipped demo model)"
    )
    gen.add_argument(
        "--stage2", help="a stage-2 folder to render a stage-1 model's codes with: two-stage generation (default: none)"
    )
    gen.add_argument("-o", "--out", required=True, help="output file (.wav, .flac, .mp3, .ogg); numbered per prompt")
    gen.add_argument("--duration", type=float, default=10.0, help="seconds of audio (default: %(default)g)")
    gen.add_argument(
        "--cfg", type=float, help=f"classifier-free guidance scale; 1 = off (default: {demo['cfg_scale']})"
    )
    gen.add_argument(
        "--temperature", type=float, help=f"sampling temperature; 0 = greedy (default: {demo['temperature']})"
    )
    gen.add_argument(
        "--top-k", type=int, help=f"sample from the k most likely tokens; 0 = off (default: {demo['top_k']})"
    )
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]; 0 = off (default: 0)")
    gen.add_argument(
        "--diffusion-steps", type=int, help="a two-stage model's stage-2 sampling steps (default: the model's)"
    )
    gen.add_argument(
        "--diffusion-cfg",
        type=float,
        help="a two-stage model's stage-2 guidance on the text; 1 = off (default: the model's)",
    )
    gen.add_argument(
        "--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i (default: %(default)s)"
    )
    gen.add_argument("--continue-from", help="an audio clip to continue; it counts towards --duration (default: none)")
    gen.add_argument(
        "--stream", action="store_true", help="write audio as it is generated, playable while it grows (default: off)"
    )
    gen.add_argument(
        "--device",
        default="cpu",
        help="where the model runs: cpu, cuda, cuda:N, or auto (cuda if present) (default: %(default)s)",
    )
    gen.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: decode with the Linear weights and the SSM state stored in bf16, fewer bytes a step "
        "(faster; the logits move by a few hundredths, so the samples part from fp32's, sooner or later); "
        "int8 or int4: the Linear weights quantized at load time (a quarter or an eighth of fp32's bytes; "
        "docs/quantization.md says what each costs), the SSM state in bf16 (default: %(default)s)",
    )
    gen.add_argument(
        "--spectrogram", help="also draw the outputs' spectrograms into this image, png or svg (default: none)"
    )
    gen.set_defaults(run=_generate)


def _demo_defaults() -> dict[str, str]:
    """The sampling defaults as --help states them: the model's, with the demo model's values."""
    try:
        saved = read_json(DEMO_MODEL / "config.json")["generation"]
    except (OSError, ValueError, KeyError):  # an install without the demo model: its help still works
        saved = {}
    return {
        name: f"the model's; the demo's is {saved[name]:g}" if name in saved else "the model's"
        for name in ("cfg_scale", "temperature", "top_k")
    }


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.unquoted:
        words = " ".join([args.prompt, *args.unquoted])
        raise ValueError(
            f"one prompt at most on the command line, got {len(args.unquoted) + 1} words: quote a prompt of "
            f'several words, "{words}", or put several prompts one a line in --prompts-file'
        )
    prompts = [] if args.prompt is None else [args.prompt]
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"no such prompts file: {path}")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompt: give one in quotes, or --prompts-file")
    for prompt in prompts:
        if not prompt.strip():
            raise ValueError("empty prompt: describe the music to generate")
    return prompts


FLAGS = {"cfg_scale": "--cfg", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"}


def _check_sampling(settings: dict[str, float | None]) -> None:
    """The first setting given out of range, named by its flag: before the model loads, so its
    defaults are not known yet and only the values given are checked."""
    from ssmttm.config import sampling_range_problem

    for name, value in settings.items():
        problem = None if value is None else sampling_range_problem(name, value)
        if problem:
            raise ValueError(f"{FLAGS[name]} {value:g}: {problem}")


def _check_clip(path: str, wav: np.ndarray, rate: int, duration: float) -> None:
    """A clip as long as --duration or longer leaves nothing to generate, since the duration counts it."""
    seconds = wav.shape[-1] / rate  # samples, not codec frames: a frame rounds the length up
    if seconds < duration:
        return
    what = "as long as" if seconds == duration else "longer than"
    raise ValueError(
        f"--continue-from {path} is {seconds:g} s, {what} --duration {duration:g}, which counts the clip: "
        f"for {duration:g} s more, use --duration {seconds + duration:g}"
    )


def output_paths(out: Path, count: int) -> list[Path]:
    """out.wav for one prompt; out_0.wav, out_1.wav, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def _check_writable(path: Path) -> None:
    from ssmttm.audio import audio_format

    audio_format(path)  # the extension names a format we write
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {path}: permission denied")


@dataclass
class _Written:
    """What a run has finished so far, for the line an interruption prints."""

    files: list[Path] = field(default_factory=list)
    partial: Path | None = None  # the --stream file growing now

    def summary(self) -> str:
        parts = [f"{', '.join(map(str, self.files))} written"] if self.files else []
        if self.partial is not None and self.partial.is_file():
            from ssmttm.audio import audio_info

            parts.append(f"{self.partial} holds the first {audio_info(self.partial)[0]:.1f} s")
        return "; ".join(parts) or "nothing written"


def _generate(args: argparse.Namespace) -> None:
    """Ctrl-C ends the run with one line saying what it leaves, and exit status 130 (128 + SIGINT)."""
    written = _Written()
    try:
        _run(args, written)
    except KeyboardInterrupt:
        print(f"interrupted: {written.summary()}", file=sys.stderr)
        raise SystemExit(130) from None


def _run(args: argparse.Namespace, written: _Written) -> None:

    from ssmttm.audio import load_audio, partial_path, save_audio
    from ssmttm.generation.pipeline import TextToMusic, check_duration
    from ssmttm.generation.record import generation_record

    prompts = _prompts(args)
    outs = output_paths(Path(args.out), len(prompts))
    for path in outs:
        _check_writable(path)
    settings = {"cfg_scale": args.cfg, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    check_duration(args.duration)
    _check_sampling(settings)  # before loading anything
    clip = None
    if args.continue_from:
        if not Path(args.continue_from).is_file():
            raise FileNotFoundError(f"no such audio file to continue: {args.continue_from}")
        clip = load_audio(args.continue_from)  # AudioError (one line) when unreadable
        _check_clip(args.continue_from, *clip, args.duration)
    source = args.model or str(DEMO_MODEL)
    if args.model is None and not DEMO_MODEL.is_dir():
        raise FileNotFoundError(f"the demo model is not in this install ({DEMO_MODEL}); pass --model DIR")
    if args.diffusion_steps is not None and args.diffusion_steps < 1:
        raise ValueError(f"--diffusion-steps {args.diffusion_steps}: must be at least 1")
    if args.stage2 is not None and not Path(args.stage2).is_dir():
        raise FileNotFoundError(f"no stage-2 folder at {args.stage2}")
    model = TextToMusic.from_pretrained(source, device=args.device, precision=args.precision, stage2=args.stage2)
    diffusion = {"diffusion_steps": args.diffusion_steps, "diffusion_cfg": args.diffusion_cfg}
    model.check_diffusion(args.diffusion_steps, args.diffusion_cfg)  # a single-stage model given them: refused
    sampling = model.sampling(**settings)  # the model's defaults where a setting was left out
    if model.device == "cpu":
        from ssmttm.ops import cpu_kernels

        cpu_kernels.available()  # builds the C++ kernels on first use (30-70 s): not generation time
    continuation = {} if clip is None else {"continuation": clip[0], "continuation_rate": clip[1]}
    for i, (prompt, path) in enumerate(zip(prompts, outs, strict=True)):
        seed = args.seed + i
        _announce(path, args.duration, args.stream)
        start = time.perf_counter()
        if args.stream:
            written.partial = partial_path(path)
            model.generate_to_file(
                prompt, path, args.duration, seed=seed, progress=True, **settings, **diffusion, **continuation
            )
            written.partial = None
        else:
            wav = model.generate(
                [prompt], args.duration, seed=seed, progress=True, **settings, **diffusion, **continuation
            )
            save_audio(path, wav[0].numpy(), model.sample_rate)
        written.files.append(path)
        elapsed = time.perf_counter() - start
        record = generation_record(
            model,
            prompt=prompt,
            seed=seed,
            duration=args.duration,
            sampling=sampling,
            elapsed=elapsed,
            continue_from=args.continue_from,
            diffusion_steps=args.diffusion_steps,
            diffusion_cfg=args.diffusion_cfg,
        )
        write_json(path.with_name(path.name + ".json"), record)
        print(f"{path}: {args.duration:g} s generated in {elapsed:.1f} s ({args.duration / elapsed:.2f}x real time)")
    if args.spectrogram:
        from ssmttm.plots import save_spectrograms

        seeds = range(args.seed, args.seed + len(prompts))
        panels = [(f'"{p}" (seed {seed})', *_mono(path)) for p, seed, path in zip(prompts, seeds, outs, strict=True)]
        save_spectrograms(args.spectrogram, panels, fmax=model.sample_rate / 2)
        print(f"{args.spectrogram}: spectrograms of the outputs")


def _announce(path: Path, duration: float, stream: bool) -> None:
    """Where the audio goes, said before it is generated: the file to open while a long run goes on."""
    from ssmttm.audio import partial_path

    if not stream:
        print(f"generating {duration:g} s -> {path}")
    elif path.suffix.lower() == ".wav":
        print(f"writing {partial_path(path)} (playable while it grows; renamed to {path} when done)")
    else:
        print(f"writing {partial_path(path)} (a WAV, playable while it grows; {path} when done)")


def _mono(path: Path):
    from ssmttm.audio import load_audio

    wav, rate = load_audio(path)
    return wav.mean(axis=0), rate
