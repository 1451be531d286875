"""The `train` and `export` commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a music LM (resumes when the run folder has a checkpoint)",
        description="Overrides after the options set any config key: --optim.lr=3e-4 --model.backbone.n_layers=8",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="training config YAML (e.g. configs/train/tiny-simba.yaml)")
    source.add_argument(
        "--resume", metavar="RUN", help="go on with the run in this folder, under its own config plus any overrides"
    )
    train.add_argument("--out", help="run folder (default: runs/<config name>)")
    train.set_defaults(run=_train)

    export = commands.add_parser("export", help="write a run's model as model.safetensors + config.json")
    export.add_argument("run_dir", metavar="RUN", help="a training run folder")
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument(
        "--cfg-scale", type=float, help="generation default; for a stage-2 run, its guidance (default: 3.0; 2.0)"
    )
    export.add_argument("--temperature", type=float, help="generation default (default: 1.0)")
    export.add_argument("--top-k", type=int, help="generation default (0 = off; default: 250)")
    export.add_argument(
        "--diffusion-steps", type=int, help="a stage-2 run's default sampling steps (default: its config's)"
    )
    export.add_argument(
        "--stage2", help="a stage-2 folder to pair with this LM run, into OUT/stage2: a two-stage model (default: none)"
    )
    export.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="the dtype of the weight matrices in the files: bfloat16 halves them (vectors stay as trained; "
        "models load in their own precision; default: as trained)",
    )
    export.set_defaults(run=_export)


def _train(args: argparse.Namespace) -> None:
    from ssmttm.training.config import load_train_config
    from ssmttm.training.layout import CONFIG
    from ssmttm.training.trainer import Trainer, TrainingError

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG).is_file():
            raise FileNotFoundError(f"{run_dir} holds no {CONFIG}: not a run folder")
        config = load_train_config(run_dir / CONFIG, args.overrides)
    else:
        config = load_train_config(args.config, args.overrides)
        run_dir = Path(args.out or Path("runs") / Path(args.config).stem)
    try:
        counters = Trainer(config, run_dir, config_may_change=bool(args.resume)).fit()
    except TrainingError as err:
        raise ValueError(str(err)) from None
    print(
        f"{run_dir}: {counters.step} steps, {counters.tokens:,} tokens, {counters.flops:.3g} training FLOPs, "
        f"{counters.wall_s:.0f} s training time, {counters.skipped_steps} steps skipped as non-finite"
    )


def _export(args: argparse.Namespace) -> None:
    from ssmttm.training.export import export_run

    defaults = {"cfg_scale": args.cfg_scale, "temperature": args.temperature, "top_k": args.top_k}
    defaults |= {"diffusion_steps": args.diffusion_steps, "storage": args.dtype}
    if args.stage2 is not None:
        defaults["stage2"] = args.stage2
    out = export_run(args.run_dir, args.out, **defaults)
    stage2 = " and stage2/" if (out / "stage2").is_dir() and args.stage2 else ""
    print(f"{out}: model.safetensors and config.json{stage2}")
