"""The `ssmttm` command line: arguments -> config -> library call. Errors are one line, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from ssmttm._allocator import tune_allocator
from ssmttm.backbones import mixer_spec
from ssmttm.codecs.command import add_codec_commands, codec_names
from ssmttm.conditioning import Conditioning
from ssmttm.config import ConfigError
from ssmttm.data.synth.command import add_synth_command
from ssmttm.eval.command import add_evaluate_command
from ssmttm.generation.command import add_generate_command
from ssmttm.lm import count_parameters
from ssmttm.presets import load_preset, preset_names
from ssmttm.provenance import version
from ssmttm.release.command import add_import_command
from ssmttm.training.command import add_training_commands
from ssmttm.training.plot import add_plot_command

COMMAND = "COMMAND"  # the metavar of every level's subcommands, in usage and in errors


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, unless its help already speaks of it or there is none to show:
    argparse.ArgumentDefaultsHelpFormatter would also print "(default: None)" for every unset option
    and repeat the defaults that help texts explain in their own words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS:
            return action.help
        if "default" in text.lower() or not (action.option_strings or action.nargs in ("?", "*")):
            return action.help
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """The parser of `ssmttm` and of every subcommand (add_subparsers passes its own class on):
    defaults in the help, and errors in one line like the commands' own."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> NoReturn:
        # A subcommand's prog is "ssmttm data prepare": name the command, as the usage block would have.
        command = self.prog.removeprefix("ssmttm").strip()
        if message.endswith(f"required: {COMMAND}"):  # the usage block that listed them is not shown
            message += f" (one of {', '.join(self._commands())})"
        self.exit(2, f"ssmttm: error: {command + ': ' if command else ''}{message}\n")

    def _commands(self) -> list[str]:
        return [
            name
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        ]


def _presets(args: argparse.Namespace) -> None:
    reference = count_parameters(load_preset("simba-300m"))
    print(f"{'preset':<18} {'backbone':<12} {'layers':>6} {'d_model':>7} {'parameters':>13} {'/ simba-300m':>12}")
    for name in preset_names():
        cfg = load_preset(name)
        n = count_parameters(cfg)
        bb = cfg.backbone
        print(f"{name:<18} {bb.kind:<12} {bb.n_layers:>6} {bb.d_model:>7} {n:>13,} {n / reference:>12.3f}")


def _summary(args: argparse.Namespace) -> None:
    import torch

    cfg = load_preset(args.preset, args.override)
    bb = cfg.backbone
    n = count_parameters(cfg)
    spec = mixer_spec(bb.kind)
    print(f"{args.preset}: {n:,} trainable parameters (text encoder excluded)")
    print(f"  backbone      {bb.kind}: {bb.n_layers} x [{spec.description}], d_model {bb.d_model}")
    if spec.fixed_state:
        state = bb.n_layers * spec.state_bytes(bb, 0, torch.float32)
        print(f"  decoding state {state / 2**20:.1f} MiB per row, the same at every length")
    else:
        per_step = bb.n_layers * (spec.state_bytes(bb, 1, torch.float32) - spec.state_bytes(bb, 0, torch.float32))
        print(f"  KV cache      grows by {per_step / 2**10:.0f} KiB per row and step")
    print(f"  tokens        {cfg.num_codebooks} codebooks of {cfg.cardinality} (+1 special), {cfg.pattern} pattern")
    print(f"  text          {cfg.text_dim}-d embeddings, {cfg.conditioning} conditioning, mask {cfg.text_mask}")
    print(f"  positions     {cfg.positions}")
    if args.decode_steps:
        _decode_demo(cfg, args.decode_steps)


def _decode_demo(cfg, steps: int) -> None:
    """Decode with random weights: shows the prefill-then-step loop and its speed, not music."""
    import time

    import torch

    from ssmttm.generation import Generator, SamplingConfig
    from ssmttm.lm import MusicLM

    torch.manual_seed(0)
    generator = Generator(MusicLM(cfg))
    text = torch.randn(1, 8, cfg.text_dim)
    start = time.perf_counter()
    codes = generator.generate(Conditioning(text), steps, sampling=SamplingConfig(), seed=0, progress=True)
    elapsed = time.perf_counter() - start
    print(
        f"  decoded       {tuple(codes.shape)} codes (random weights) in {elapsed:.1f} s, with CFG: "
        f"{(steps + cfg.num_codebooks) / elapsed:.0f} steps/s"
    )


def _prepare(args: argparse.Namespace) -> None:
    from ssmttm.data.prepare import PrepareConfig, PrepareError, prepare

    try:
        index, count = (int(part) for part in args.shard.split("/"))
    except ValueError:
        raise PrepareError(f"--shard {args.shard!r}: expected i/n, e.g. 0/4") from None
    config = PrepareConfig(
        source=args.source,
        out=args.out,
        codec=args.codec,
        captions=args.captions,
        num_codebooks=args.num_codebooks,
        segment_s=args.segment_seconds,
        validation_fraction=args.validation_fraction,
        exclude=args.exclude,
        remove_vocals=args.remove_vocals,
        items_per_unit=args.items_per_unit,
        latents=args.latents,
    )
    result = prepare(config, workers=args.workers, share=(index, count), progress=True)
    print(
        f"encoded {result.items_encoded} items in {result.units_encoded} units "
        f"({result.units_done_before} units were already done, {result.units_total} in all)"
    )
    _report_merge(args.out, result.merge)


def _merge(args: argparse.Namespace) -> None:
    from ssmttm.data.shards import PLAN, merge

    if not (Path(args.out) / PLAN).is_file():
        raise FileNotFoundError(f"{args.out} holds no {PLAN}: not a folder that `ssmttm data prepare` wrote")
    _report_merge(args.out, merge(Path(args.out)))


def _report_merge(out: str, merged) -> None:
    if merged is None or merged.missing_units:
        missing = "other shares" if merged is None else f"{len(merged.missing_units)} units"
        print(f"{out}: waiting for {missing}; run `ssmttm data merge --out {out}` once every share is done")
        return
    print(f"{out}: {merged.clips} clips indexed; {merged.failures} inputs skipped, with reasons in failures.jsonl")


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="make and prepare training data")
    data = data.add_subparsers(metavar=COMMAND, required=True)
    add_synth_command(data)
    prep = data.add_parser("prepare", help="encode a captioned audio collection into token shards")
    prep.add_argument("--source", required=True, help="folder of audio (a captions file, Jamendo, or our corpus)")
    prep.add_argument("--captions", help="captions: JSON, JSONL or CSV (file, caption); Jamendo: the release's JSON")
    prep.add_argument("--codec", default="embedded", help=f"{codec_names()}, a hub id or a local model folder")
    prep.add_argument("--out", required=True, help="output folder; an interrupted run resumes there")
    prep.add_argument("--num-codebooks", type=int, help="keep the first K codebooks (default: all)")
    prep.add_argument("--segment-seconds", type=float, default=30.0, help="clip length in seconds")
    prep.add_argument("--validation-fraction", type=float, default=0.05, help="share of songs held out")
    prep.add_argument("--exclude", help="file of ids to leave out (item ids, song ids or file paths), one per line")
    prep.add_argument("--remove-vocals", action="store_true", help="keep Demucs htdemucs's no-vocals stem")
    prep.add_argument("--workers", type=int, default=1, help="parallel processes on this machine")
    prep.add_argument("--shard", default="0/1", help="i/n: this machine does every n-th unit, starting at i")
    prep.add_argument("--items-per-unit", type=int, default=16, help="source files per shard unit")
    prep.add_argument(
        "--latents",
        action="store_true",
        help="also store each clip's two-stage target (the codec's residual latents, float16) for training a stage 2",
    )
    prep.set_defaults(run=_prepare)
    merge = data.add_parser("merge", help="index the units of all --shard runs in one folder")
    merge.add_argument("--out", required=True, help="the --out folder of the `data prepare --shard i/n` runs")
    merge.set_defaults(run=_merge)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssmttm", description="Text-to-music with state-space language models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", metavar=COMMAND, required=True)
    presets = commands.add_parser("presets", help="list the model presets with their parameter counts")
    presets.set_defaults(run=_presets)
    summary = commands.add_parser("summary", help="describe one model preset")
    summary.add_argument("preset", nargs="?", default="simba-300m", help="preset name or YAML path")
    summary.add_argument("override", nargs="*", help="config overrides, e.g. backbone.n_layers=12")
    summary.add_argument("--decode-steps", type=int, default=0, help="also decode this many frames, random weights")
    summary.set_defaults(run=_summary)
    _add_data_commands(commands)
    add_codec_commands(commands)
    add_evaluate_command(commands)
    add_training_commands(commands)
    add_generate_command(commands)
    add_import_command(commands)
    add_plot_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a failure to show a traceback for
        print("ssmttm: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":  # config overrides: --optim.lr=3e-4 --model.backbone.n_layers=8
        bad = [item for item in extra if not (item.startswith("--") and "=" in item)]
        if bad:
            parser.error(f"train: {bad[0]!r} is not an option or a --key.sub=value override")
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tune_allocator()  # opted in here: a command owns its process, and `import ssmttm` changes nothing of it
    try:
        args.run(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"ssmttm: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`ssmttm presets | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
