"""`ssmttm plot RUN [RUN ...] --out fig.png`: validation loss against steps and against training FLOPs.

It reads a run folder's `config.yaml` (its `model` mapping names the backbone) and `metrics.csv`
(training/layout.py).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import yaml

from ssmttm.config import ConfigError, from_dict
from ssmttm.files import atomic_write, read_text
from ssmttm.lm import LMConfig
from ssmttm.training.layout import CONFIG, METRICS
from ssmttm.training.layout import METRIC_FIELDS as COLUMNS

INTEGER_COLUMNS = ("step", "tokens")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The rows of RUN/metrics.csv, numbers parsed (an empty cell is None), in file order."""
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"no run folder at {run}")
    path = run / METRICS
    if not path.is_file():
        raise ValueError(f"{run} has no {METRICS}: not a training run folder, or the run has not logged yet")
    reader = csv.DictReader(read_text(path).splitlines())
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return [_parse(row, path, line) for line, row in enumerate(reader, start=2)]


def validation_curve(run: Path) -> list[dict[str, Any]]:
    """The `val` rows of a run, by step; a step logged twice (a resumed run) keeps its later row."""
    by_step = {row["step"]: row for row in read_metrics(run) if row["kind"] == "val" and row["loss"] is not None}
    if not by_step:
        raise ValueError(f"{Path(run) / METRICS} has no validation rows yet: wait for the first validation")
    return [by_step[step] for step in sorted(by_step)]


def run_label(run: Path, name: str | None = None) -> str:
    """`name` (default: the folder's), plus backbone and parameter count when config.yaml describes the model."""
    run = Path(run)
    name = name or run.name
    model = _model_config(run)
    if model is None:
        return name
    from ssmttm.lm import count_parameters

    return f"{name} ({model.backbone.kind}, {_millions(count_parameters(model))})"


def plot_runs(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Two panels, one line per run: validation loss against step, and against training FLOPs (log scale)."""
    runs = [Path(run) for run in runs]
    if not runs:
        raise ValueError("no runs to plot")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs: give one label per run")
    curves = [validation_curve(run) for run in runs]  # reads everything first: a bad run fails before drawing
    names = [run.name for run in runs]
    # Folders that share a name (runs/a/last, runs/b/last) are told apart by their whole path.
    labels = labels or [run_label(run, str(run) if names.count(run.name) > 1 else None) for run in runs]

    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state to touch

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    by_step, by_flops = fig.subplots(1, 2, sharey=True)
    for curve, label in zip(curves, labels, strict=True):
        marker = "o" if len(curve) < 30 else None
        line = by_step.plot([r["step"] for r in curve], [r["loss"] for r in curve], marker=marker, label=label)[0]
        # A log axis cannot show the validation before the first step (zero FLOPs).
        counted = [r for r in curve if r["flops"] is not None and r["flops"] > 0]
        by_flops.plot(
            [r["flops"] for r in counted], [r["loss"] for r in counted], marker=marker, color=line.get_color()
        )
    by_step.set(xlabel="optimizer step", ylabel="validation loss", title="validation loss by step")
    by_flops.set(xlabel="training FLOPs", xscale="log", title="validation loss by compute")
    for ax in (by_step, by_flops):
        ax.grid(True, which="major", alpha=0.3)
    by_step.legend(fontsize="small")
    out = Path(out)
    atomic_write(out, lambda f: fig.savefig(f, format=out.suffix.lstrip(".").lower() or "png", dpi=120))
    return out


def add_plot_command(commands: argparse._SubParsersAction) -> None:
    plot = commands.add_parser("plot", help="validation loss of training runs against steps and FLOPs")
    plot.add_argument("runs", nargs="+", help="run folders (each holds metrics.csv and config.yaml)")
    plot.add_argument("--out", required=True, help="image to write (png, svg, pdf); the format follows the extension")
    plot.add_argument("--labels", nargs="+", help="one legend label per run (default: folder, backbone, size)")
    plot.set_defaults(run=_plot)


def _plot(args: argparse.Namespace) -> None:
    out = plot_runs([Path(run) for run in args.runs], Path(args.out), args.labels)
    print(f"{out}: validation loss of {len(args.runs)} run{'s' if len(args.runs) > 1 else ''}")


def _parse(row: dict[str, str | None], path: Path, line: int) -> dict[str, Any]:
    parsed: dict[str, Any] = {"kind": (row["kind"] or "").strip()}
    for column in COLUMNS[1:]:
        text = (row[column] or "").strip()
        try:
            parsed[column] = None if not text else int(float(text)) if column in INTEGER_COLUMNS else float(text)
        except ValueError:
            raise ValueError(f"{path}, line {line}: {column} {text!r} is not a number") from None
    return parsed


def _model_config(run: Path) -> LMConfig | None:
    """The run's model config, or None when config.yaml is absent or does not hold a valid one."""
    path = run / CONFIG
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(read_text(path))
        return from_dict(LMConfig, data["model"]) if isinstance(data, dict) and "model" in data else None
    except (yaml.YAMLError, ConfigError):
        return None


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count / 1e3:.1f}k"
