"""`ssmttm plot`: validation curves of run folders drawn to an image, and clear errors for folders that cannot be."""

from __future__ import annotations

import argparse
import math

import matplotlib.image
import pytest
import yaml
from conftest import tiny_config

from ssmttm.config import to_dict
from ssmttm.lm import count_parameters
from ssmttm.training.plot import add_plot_command, plot_runs, read_metrics, run_label, validation_curve

HEADER = "kind,step,loss,tokens,flops,wall_s,lr\n"


def _run(root, name, kind="simba", steps=(0, 100, 200, 300), flops_per_step=1e12, config=True):
    """A run folder as the trainer writes it: train rows every 50 steps, val rows at `steps`."""
    run = root / name
    run.mkdir(parents=True)
    if config:
        (run / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(tiny_config(kind)), "run": {"seed": 0}}))
    rows = []
    for step in range(0, max(steps) + 1, 50):
        loss = 6.0 * math.exp(-step / 200) + 2.0
        rows.append(f"train,{step},{loss + 0.1},{step * 4096},{step * flops_per_step},{step * 0.5},1e-4")
        if step in steps:
            rows.append(f"val,{step},{loss},{step * 4096},{step * flops_per_step},{step * 0.5},")
    (run / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return run


def test_two_runs_make_an_image(tmp_path):
    runs = [_run(tmp_path, "simba"), _run(tmp_path, "transformer", "transformer", flops_per_step=2e12)]
    out = plot_runs(runs, tmp_path / "figs" / "loss.png")
    assert out == tmp_path / "figs" / "loss.png"
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]  # no temporary file left behind


def test_labels_name_folder_backbone_and_size(tmp_path):
    run = _run(tmp_path, "run-a", "transformer")
    size = count_parameters(tiny_config("transformer"))
    assert run_label(run) == f"run-a (transformer, {size / 1e3:.1f}k)"
    assert run_label(_run(tmp_path, "bare", config=False)) == "bare"


def test_given_labels_and_other_formats(tmp_path):
    runs = [_run(tmp_path / "a", "last"), _run(tmp_path / "b", "last")]
    out = plot_runs(runs, tmp_path / "loss.svg", labels=["SiMBA", "Transformer"])
    assert out.read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plot_runs(runs, tmp_path / "loss.png", labels=["one"])


def test_read_metrics_parses_numbers(tmp_path):
    rows = read_metrics(_run(tmp_path, "run"))
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 100, 200, 300]
    assert val[1]["tokens"] == 409600 and val[1]["flops"] == 1e14 and val[1]["lr"] is None
    assert isinstance(val[1]["loss"], float)


def test_resumed_run_keeps_the_later_row_per_step(tmp_path):
    run = _run(tmp_path, "run")
    with (run / "metrics.csv").open("a") as f:
        f.write("val,200,1.5,819200,2e14,100,\n")
    curve = validation_curve(run)
    assert [r["step"] for r in curve] == [0, 100, 200, 300]
    assert curve[2]["loss"] == 1.5


def _no_metrics(run):
    (run / "metrics.csv").unlink()


def _train_only(run):
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text("".join(line for line in lines if not line.startswith("val,")))


ERRORS = {
    "no folder": (lambda run: run.rename(run.with_name("moved")), "no run folder at"),
    "no metrics": (_no_metrics, "has no metrics.csv"),
    "no val rows": (_train_only, "has no validation rows yet"),
    "header only": (lambda run: (run / "metrics.csv").write_text(HEADER), "has no validation rows yet"),
    "other columns": (lambda run: (run / "metrics.csv").write_text("step,loss\n1,2\n"), "lacks the columns kind"),
    "not a number": (
        lambda run: (run / "metrics.csv").write_text(HEADER + "val,10,nan?,1,1,1,\n"),
        "line 2: loss 'nan?' is not a number",
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_line(tmp_path, case):
    good = _run(tmp_path, "good")
    bad = _run(tmp_path, "bad")
    breaks, message = ERRORS[case]
    breaks(bad)
    with pytest.raises(ValueError) as err:
        plot_runs([good, bad], tmp_path / "loss.png")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "loss.png").exists()


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ssmttm")
    add_plot_command(parser.add_subparsers(dest="command", required=True))
    runs = [_run(tmp_path, "a"), _run(tmp_path, "b", "mamba")]
    out = tmp_path / "fig.png"
    args = parser.parse_args(["plot", *map(str, runs), "--out", str(out), "--labels", "A", "B"])
    assert args.labels == ["A", "B"]
    args.run(args)
    assert out.is_file()
    assert capsys.readouterr().out.strip() == f"{out}: validation loss of 2 runs"
    with pytest.raises(SystemExit):
        parser.parse_args(["plot", str(runs[0])])  # --out is required
