import subprocess
import sys

from ssmttm.cli import main
from ssmttm.config import load_preset
from ssmttm.lm import count_parameters


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


def test_bad_input_is_one_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "ssmttm.cli", "summary", "tiny-simba", "backbone.d_modle=3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "ssmttm: error: unknown key in backbone: d_modle"
    assert "Traceback" not in result.stderr
