import argparse
import logging
import subprocess
import sys
from importlib import metadata

import pytest

import ssmttm
from ssmttm import cli
from ssmttm.cli import build_parser, main
from ssmttm.lm import count_parameters
from ssmttm.presets import load_preset


def test_presets_lists_every_preset_with_its_count(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert f"{count_parameters(load_preset('simba-300m')):,}" in out and "tiny-transformer" in out


def test_summary_describes_a_preset(capsys):
    assert main(["summary", "tiny-mamba", "backbone.n_layers=3"]) == 0
    assert "3 x [Mamba-1]" in capsys.readouterr().out


def test_summary_can_decode_with_random_weights(capsys):
    assert main(["summary", "tiny-simba", "backbone.d_model=32", "--decode-steps", "10"]) == 0
    assert "decoded       (1, 4, 10) codes" in capsys.readouterr().out


def test_summary_describes_and_decodes_the_mamba3_kinds(capsys):
    assert main(["summary", "tiny-simba3", "--decode-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "simba3: 6 x [Mamba-3 + MLP], d_model 128" in out and "decoded       (1, 4, 4) codes" in out
    assert main(["summary", "mamba3-300m"]) == 0
    assert "mamba3: 40 x [Mamba-3], d_model 1024" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "ssmttm.cli", "summary", "tiny-simba", "backbone.d_modle=3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "ssmttm: error: unknown key in backbone: d_modle"
    assert "Traceback" not in result.stderr


def test_version_is_the_package_s(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"ssmttm {metadata.version('ssmttm')}\n"
    assert metadata.version("ssmttm") == ssmttm.__version__  # pyproject.toml's version and the module's agree


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "prepare", "--source", "x"], "data prepare: the following arguments are required: --out"),
        (["summary", "--decode-steps", "x"], "summary: argument --decode-steps: invalid int value: 'x'"),
        (["codec"], "codec: the following arguments are required: COMMAND (one of roundtrip, fit, info)"),
        (["nonsense"], "argument COMMAND: invalid choice: 'nonsense' (choose from 'presets', 'summary', "),
        ([], "the following arguments are required: COMMAND (one of presets, summary, data, codec, "),
        (["presets", "--extra"], "unrecognized arguments: --extra"),
    ],
)
def test_argument_errors_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssmttm: error: {message}") and err.count("\n") == 1


def test_help_is_still_the_full_usage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["data", "prepare", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ssmttm data prepare [-h] --source SOURCE")
    assert "--remove-vocals" in out


def _help_texts(parser: argparse.ArgumentParser, prog: str = "ssmttm"):
    """(prog, option, its formatted help) for every option of every command."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _help_texts(sub, f"{prog} {name}")
        elif action.help:
            yield prog, action.dest, formatter._expand_help(action)


def test_help_shows_every_default_once():
    texts = {(prog, dest): text for prog, dest, text in _help_texts(build_parser())}
    assert texts["ssmttm data prepare", "segment_seconds"].endswith("(default: 30.0)")
    assert texts["ssmttm data prepare", "codec"].endswith("(default: embedded)")
    assert texts["ssmttm codec fit", "seed"].endswith("(default: 0)")
    assert texts["ssmttm data synth", "sample_rate"].endswith("(default: 44100)")
    assert texts["ssmttm import-release", "codec"].endswith("(default: descript/dac_44khz)")
    assert texts["ssmttm codec info", "codec"].endswith("(default: embedded)")
    assert "(default" not in texts["ssmttm data prepare", "exclude"]  # no default to tell: no "(default: None)"
    assert texts["ssmttm data merge", "out"]
    doubled = [(prog, dest) for (prog, dest), text in texts.items() if text.count("(default") > 1]
    assert not doubled


def test_prepare_names_every_codec_and_defaults_to_the_offline_one():
    from ssmttm.codecs import BUILTIN, NAMES

    args = build_parser().parse_args(["data", "prepare", "--source", "audio", "--out", "shards"])
    assert args.codec == "embedded"
    texts = {(prog, dest): text for prog, dest, text in _help_texts(build_parser())}
    assert all(name in texts["ssmttm data prepare", "codec"] for name in [*BUILTIN, *NAMES])


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_presets", interrupted)
    assert main(["presets"]) == 130
    assert capsys.readouterr().err == "ssmttm: interrupted\n"


def test_synth_prints_its_summary_once(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO):
        assert main(["data", "synth", "--n", "0", "--out", str(tmp_path), "--seed", "0"]) == 0
    shown = capsys.readouterr().out + caplog.text
    assert shown.count(f"synth: 0 pieces in {tmp_path}") == 1
