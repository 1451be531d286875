"""The paper's main figure in miniature: FD, KL and synthetic adherence against training steps for
SiMBA/Diffusion and Transformer/Diffusion: one shared stage 2, and tiny-simba against
tiny-transformer as stage 1 (K=1), each trained from scratch on the same collection, 2 seeds.

    python benchmarks/two_stage_study.py --collection data/demo-bpm-latents --stage2 models/stage2 \\
        [--steps 2000] [--eval-every 250] [--seeds 0,1] [--out runs/two-stage-study]

Every `--eval-every` steps (at the validation) the stage-1 weights so far generate `--prompts` held-out
captions (evaluate_demo.py's prompts, references and scorer; generation seed 0), stage 2 renders
them, and the clips are scored: FD-musicnn per style, KL-musicnn (paired), and adherence (style and
lead accuracy, tempo within 8 BPM). Rows go to `results.jsonl` in each run folder, so an
interrupted study resumes: a finished run is reused, an interrupted one resumes from its checkpoint
and evaluates only the steps it has not. Prints a table and draws `--figure`. `--systems` runs some
of the systems only, so two processes can share the work on two cores (one thread each); a last
call with all of them reuses every finished run and draws the whole figure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from evaluate_demo import Scorer, corpus, metrics

from ssmttm import tune_allocator
from ssmttm.audio import load_audio
from ssmttm.codecs import load_codec
from ssmttm.diffusion.pretrained import load_stage2
from ssmttm.eval.adherence import LABELS, audio_codes, clip_features, fit_classifiers
from ssmttm.files import read_jsonl, write_jsonl
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.generation.stage2_renderer import Stage2Renderer
from ssmttm.lm import MusicLM
from ssmttm.presets import PRESET_DIR
from ssmttm.pretrained import PretrainedConfig
from ssmttm.text import load_text_encoder
from ssmttm.training.config import load_train_config
from ssmttm.training.trainer import Trainer

tune_allocator()
BACKBONES = {"SiMBA/Diffusion": "tiny-simba", "Transformer/Diffusion": "tiny-transformer"}
MEASURES = ("fd_style", "kl", "adherence", "tempo_within")


class Evaluation:
    """The held-out prompts, their reference clips and scores, and the shared stage 2: built once."""

    def __init__(self, stage2: Path, prompts: int, work: Path, duration: float) -> None:
        self.stage2, self.config = load_stage2(stage2)
        self.codec = load_codec(self.config.codec)
        self.text_encoder = load_text_encoder(self.config.text_encoder)
        self.duration = duration
        fit = corpus(work / "classifier-corpus", 400, 11, False, duration)
        features = np.stack([clip_features(self.codec, audio_codes(self.codec, *load_audio(r["path"]))) for r in fit])
        classifiers, _ = fit_classifiers(features, {n: [r[n] for r in fit] for n in LABELS})
        self.reference = corpus(work / "held-out-prompts", prompts, 12, True, duration)
        self.captions = [r["caption"] for r in self.reference]
        self.scorer = None
        self.classifiers = classifiers
        self.ref_scored = None

    def __call__(self, lm: MusicLM, text_encoder_name: str) -> dict[str, float]:
        config = PretrainedConfig(model=lm.cfg, codec=self.config.codec, text_encoder=text_encoder_name)
        renderer = Stage2Renderer(self.codec, self.stage2, self.config)
        model = TextToMusic(lm.eval(), self.codec, self.text_encoder, config, renderer=renderer)
        if self.scorer is None:
            self.scorer = Scorer(model, self.classifiers)
            self.ref_scored = [self.scorer.clip(*load_audio(r["path"])) for r in self.reference]
        wavs = model.generate(self.captions, self.duration, seed=0).numpy()  # (B, 1, N)
        scored = [self.scorer.clip(w, model.sample_rate) for w in wavs]
        return metrics(scored, self.reference, self.ref_scored, self.captions)


class EvaluatingTrainer(Trainer):
    """The loop, evaluating the stage-1 weights at every validation it has not evaluated before."""

    def __init__(self, config, run_dir: Path, evaluation: Evaluation) -> None:
        super().__init__(config, run_dir)
        self.evaluation = evaluation

    def validate(self) -> float:
        loss = super().validate()
        results = self.run_dir / "results.jsonl"
        rows = read_jsonl(results) if results.is_file() else []
        step = self.counters.step
        if step not in {r["step"] for r in rows}:
            lm = MusicLM(self.config.model)
            lm.load_state_dict(self.module.state_dict())
            with torch.random.fork_rng():
                scores = self.evaluation(lm, self.config.data.text_encoder)
            write_jsonl(results, [*rows, {"step": step, "val_loss": loss, **scores}])
        return loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", required=True, help="prepared with the stage 2's codec (embedded)")
    parser.add_argument("--stage2", required=True, help="the shared stage-2 folder")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, help="stage 1's batch (default: the preset's)")
    parser.add_argument("--work", default="benchmarks/.cache/evaluate-demo/10s", help="evaluate_demo.py's corpora")
    parser.add_argument("--out", default="runs/two-stage-study")
    parser.add_argument("--figure", default="docs/two_stage_study.png")
    parser.add_argument("--systems", default=",".join(BACKBONES.values()), help="the stage-1 presets to run")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(BACKBONES.values()))
    if unknown or not systems:
        parser.error(f"--systems: choose from {', '.join(BACKBONES.values())} (got {args.systems!r})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    evaluation = Evaluation(Path(args.stage2), args.prompts, Path(args.work), args.duration)
    text_encoder = evaluation.config.text_encoder
    curves: dict[str, list[list[dict]]] = {}
    for label, preset in BACKBONES.items():
        if preset not in systems:
            continue
        for seed in [int(s) for s in args.seeds.split(",")]:
            run_dir = Path(args.out) / f"{preset}-seed{seed}"
            overrides = [
                f"data.collection={args.collection}", f"data.text_encoder={text_encoder}",
                "model.num_codebooks=1", f"schedule.max_steps={args.steps}", f"run.val_every={args.eval_every}",
                f"run.checkpoint_every={args.eval_every}", f"run.seed={seed}", f"data.window_seconds={args.duration}",
            ]  # fmt: skip
            if args.batch_size:
                overrides += [f"run.batch_size={args.batch_size}", f"run.micro_batch_size={args.batch_size}"]
            config = load_train_config(PRESET_DIR / "train" / f"{preset}.yaml", overrides)
            EvaluatingTrainer(config, run_dir, evaluation).fit()
            curves.setdefault(label, []).append(read_jsonl(run_dir / "results.jsonl"))
    print(
        f"stage 2 {args.stage2}; stage 1 K=1 from scratch, {args.steps} steps of batch {config.run.batch_size}, "
        f"seeds {args.seeds}; "
        f"{args.prompts} held-out prompts; mean over seeds"
    )
    print("| system | step | " + " | ".join(MEASURES) + " |")
    print("|---|---|" + "---|" * len(MEASURES))
    for label, runs in curves.items():
        for i, row in enumerate(runs[0]):
            cells = [np.mean([run[i][m] for run in runs]) for m in MEASURES]
            print(f"| {label} | {row['step']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    draw(curves, Path(args.figure))
    print(f"{args.figure}: the curves")
    return 0


def draw(curves: dict[str, list[list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {
        "fd_style": "FD-musicnn per style",
        "kl": "KL-musicnn",
        "adherence": "adherence",
        "tempo_within": "tempo within 8 BPM",
    }
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.2))
    for ax, measure in zip(axes, MEASURES, strict=True):
        for label, runs in curves.items():
            steps = [r["step"] for r in runs[0]]
            values = np.array([[r[measure] for r in run] for run in runs])  # (seeds, points)
            ax.plot(steps, values.mean(axis=0), label=label)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.2)
        ax.set_title(names[measure])
        ax.set_xlabel("training steps (stage 1)")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
