"""`ssmttm generate "PROMPT" -o out.wav`: text to an audio file, with a JSON sidecar of what made it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ssmttm.files import write_json

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("generate", help="generate music from text prompts")
    gen.add_argument("prompt", nargs="*", help='what to generate, e.g. "calm piano with soft strings"')
    gen.add_argument("--prompts-file", help="one prompt per line (blank lines skipped)")
    gen.add_argument("--model", help="exported model folder or hub id (default: the shipped demo model)")
    gen.add_argument("-o", "--out", required=True, help="output file (.wav, .flac, .mp3, .ogg); numbered per prompt")
    gen.add_argument("--duration", type=float, default=10.0, help="seconds of audio (default 10)")
    gen.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the model's, e.g. 3)")
    gen.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy (default: the model's)")
    gen.add_argument("--top-k", type=int, help="sample from the k most likely tokens; 0 = off (default: the model's)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]; 0 = off (default 0)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the first prompt; prompt i uses seed + i")
    gen.add_argument("--continue-from", help="an audio clip to continue; it counts towards --duration")
    gen.add_argument("--stream", action="store_true", help="write audio as it is generated, chunk by chunk")
    gen.add_argument(
        "--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N, or auto (cuda if present)"
    )
    gen.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: decode with the Linear weights and the SSM state stored in bf16, fewer bytes a step "
        "(faster on CPUs with AVX512-BF16 or AMX; the samples differ from fp32's). Default fp32",
    )
    gen.add_argument("--spectrogram", help="also draw the outputs' spectrograms into this image (png, svg)")
    gen.set_defaults(run=_generate)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
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


def choose_device(name: str) -> str:
    """--device as a torch device string; a ValueError (one line) when it names none this machine has."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device name (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine's torch {torch.__version__} sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return str(device)


def output_paths(out: Path, count: int) -> list[Path]:
    """out.wav for one prompt; out_0.wav, out_1.wav, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def _check_writable(path: Path) -> None:
    from ssmttm.data.audio import audio_format

    audio_format(path)  # the extension names a format we write
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {path}: permission denied")


def _generate(args: argparse.Namespace) -> None:
    import torch

    from ssmttm.data.audio import load_audio, save_audio
    from ssmttm.generation.pipeline import TextToMusic, check_duration
    from ssmttm.generation.sampling import SamplingConfig
    from ssmttm.pretrained import read_config, resolve

    prompts = _prompts(args)
    outs = output_paths(Path(args.out), len(prompts))
    for path in outs:
        _check_writable(path)
    clip = None
    if args.continue_from:
        if not Path(args.continue_from).is_file():
            raise FileNotFoundError(f"no such audio file to continue: {args.continue_from}")
        clip = load_audio(args.continue_from)  # AudioError (one line) when unreadable
    settings = {"cfg_scale": args.cfg, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    check_duration(args.duration)
    SamplingConfig(**{k: v for k, v in settings.items() if v is not None})  # ranges, before loading anything
    source = args.model or str(DEMO_MODEL)
    if args.model is None and not DEMO_MODEL.is_dir():
        raise FileNotFoundError(f"the demo model is not in this install ({DEMO_MODEL}); pass --model DIR")
    device = choose_device(args.device)
    precision = torch.bfloat16 if args.precision == "bf16" else None
    # A Transformer's KV cache is not a recurrent state: with it, bf16 applies to the weights only.
    recurrent = precision is not None and read_config(resolve(source)).model.backbone.kind != "transformer"
    model = TextToMusic.from_pretrained(
        source, device=device, weight_dtype=precision, state_dtype=precision if recurrent else None
    )
    sampling = model.sampling(**settings)  # the model's defaults where a setting was left out
    continuation = {} if clip is None else {"continuation": clip[0], "continuation_rate": clip[1]}
    for i, (prompt, path) in enumerate(zip(prompts, outs, strict=True)):
        seed = args.seed + i
        start = time.perf_counter()
        if args.stream:
            model.generate_to_file(prompt, path, args.duration, seed=seed, progress=True, **settings, **continuation)
        else:
            wav = model.generate([prompt], args.duration, seed=seed, progress=True, **settings, **continuation)
            save_audio(path, wav[0].numpy(), model.sample_rate)
        elapsed = time.perf_counter() - start
        sidecar = {
            "prompt": prompt,
            "seed": seed,
            "duration_s": args.duration,
            "sampling": {
                "cfg_scale": sampling.cfg_scale,
                "temperature": sampling.temperature,
                "top_k": sampling.top_k,
                "top_p": sampling.top_p,
            },
            "model": source,
            "codec": model.config.codec,
            "text_encoder": model.config.text_encoder,
            "text_padding": model.config.text_padding,
            "continue_from": args.continue_from,
            "sample_rate": model.sample_rate,
            "generation_s": round(elapsed, 3),
            "device": device,
            "precision": args.precision,
            "torch_threads": torch.get_num_threads(),
        }
        write_json(path.with_name(path.name + ".json"), sidecar)
        print(f"{path}: {args.duration:g} s generated in {elapsed:.1f} s ({args.duration / elapsed:.2f}x real time)")
    if args.spectrogram:
        from ssmttm.plots import save_spectrograms

        seeds = range(args.seed, args.seed + len(prompts))
        panels = [(f'"{p}" (seed {seed})', *_mono(path)) for p, seed, path in zip(prompts, seeds, outs, strict=True)]
        save_spectrograms(args.spectrogram, panels, fmax=model.sample_rate / 2)
        print(f"{args.spectrogram}: spectrograms of the outputs")


def _mono(path: Path):
    from ssmttm.data.audio import load_audio

    wav, rate = load_audio(path)
    return wav.mean(axis=0), rate
