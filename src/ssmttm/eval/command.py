"""`ssmttm evaluate GENERATED --reference REF`: FD and KL of generated clips against a reference set."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("evaluate", help="FD and KL of generated clips against a reference set")
    ev.add_argument(
        "generated", nargs="?", help="folder of generated audio with generate's sidecars, or a CSV of file,prompt"
    )
    ev.add_argument("--reference", required=True, help="folder of reference audio")
    ev.add_argument("--captions", help="the reference folder's captions file (default: its metadata.jsonl)")
    ev.add_argument("--musiccaps", help="MusicCaps CSV naming the clips of --reference")
    ev.add_argument("--song-describer", help="Song Describer Dataset CSV naming the tracks of --reference")
    ev.add_argument("--pattern", default="{ytid}.wav", help="a MusicCaps clip's file name in --reference")
    ev.add_argument("--embedding", default="musicnn", help="the model whose embeddings FD compares")
    ev.add_argument("--tagger", default="musicnn", help="the model whose label distributions KL compares")
    ev.add_argument("--clap", help="also score each clip against its prompt with this CLAP (a folder or hub id)")
    ev.add_argument("--cache", help="folder of cached reference statistics (default: ~/.cache/ssmttm)")
    ev.add_argument("--out", help="also write the JSON report here (default: none)")
    ev.add_argument(
        "--per-clip", action="store_true", help="add a row per generated clip: its pair, KL, CLAP and adherence"
    )
    ev.add_argument(
        "--fad-inf", type=int, default=0, metavar="STEPS", help="also fadtk's FAD-inf, from STEPS subset sizes"
    )
    ev.add_argument(
        "--prompts-out",
        help="write the reference captions here, one a line, for `ssmttm generate --prompts-file` (default: none)",
    )
    ev.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> None:
    from ssmttm.eval.cache import StatsCache
    from ssmttm.eval.clips import generated_clips, reference_clips
    from ssmttm.eval.evaluate import evaluate
    from ssmttm.eval.models import load_model
    from ssmttm.files import write_json, write_text

    reference, missing = reference_clips(
        Path(args.reference),
        captions=None if args.captions is None else Path(args.captions),
        musiccaps=None if args.musiccaps is None else Path(args.musiccaps),
        song_describer=None if args.song_describer is None else Path(args.song_describer),
        pattern=args.pattern,
    )
    for line in missing[:5]:
        print(f"skipped: {line}")
    if len(missing) > 5:
        print(f"skipped: {len(missing) - 5} more reference clips")
    if args.prompts_out:
        prompts = list(dict.fromkeys(" ".join(clip.caption.split()) for clip in reference))  # one line each
        write_text(Path(args.prompts_out), "".join(f"{p}\n" for p in prompts))
        print(f"{args.prompts_out}: {len(prompts)} prompts, for `ssmttm generate --prompts-file`")
    if args.generated is None:
        if not args.prompts_out:
            raise ValueError("nothing to evaluate: give the generated clips (or --prompts-out to write prompts)")
        return
    generated = generated_clips(Path(args.generated))
    embedding = load_model(args.embedding)
    tagger = embedding if args.tagger == args.embedding else load_model(args.tagger)
    cache = StatsCache(None if args.cache is None else Path(args.cache))
    clap = None
    if args.clap:
        from ssmttm.eval.clap import ClapModelAudio

        clap = ClapModelAudio(args.clap)
    report = evaluate(
        generated,
        reference,
        embedding,
        tagger,
        cache,
        per_clip=args.per_clip,
        progress=True,
        clap=clap,
        fad_inf_steps=args.fad_inf,
    )
    report.missing = missing
    print(report.markdown())
    if args.out:
        write_json(Path(args.out), report.to_dict())
        print(f"{args.out}: the JSON report")
