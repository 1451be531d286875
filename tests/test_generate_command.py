"""`ssmttm generate` as a new user meets it: one-line errors that name the flag, a refused unquoted
prompt, Ctrl-C, the line saying where the audio goes, --help's defaults, and timing without the
kernel build. A tiny random model, loaded once and handed to every run."""

from __future__ import annotations

import json
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssmttm.cli import main
from ssmttm.generation.pipeline import TextToMusic
from ssmttm.lm import MusicLM
from ssmttm.ops import cpu_kernels
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained

TINY = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", [*TINY, "backbone.mamba2.d_state=16"]))
    return save_pretrained(lm, tmp_path_factory.mktemp("model"), codec="embedded", text_encoder="minilm")


@pytest.fixture(scope="module")
def model(model_dir) -> TextToMusic:
    return TextToMusic.from_pretrained(model_dir)


@pytest.fixture
def loads() -> list[str]:
    """The sources `loaded` runs loaded a model from."""
    return []


@pytest.fixture
def loaded(model, model_dir, loads, monkeypatch) -> list[str]:
    """`--model DIR` arguments whose loading returns the module's model, counted in `loads`."""

    def reuse(cls, source, **kwargs):
        loads.append(source)
        return model

    monkeypatch.setattr(TextToMusic, "from_pretrained", classmethod(reuse))
    return ["--model", str(model_dir)]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- bad input, refused before the model loads -----------------------------------------------------


def test_an_out_of_range_setting_names_its_flag_and_value(loaded, loads, tmp_path, capsys):
    out = ["-o", str(tmp_path / "x.wav")]
    cases = [
        (["--cfg", "-1"], "ssmttm: error: --cfg -1: must be >= 0 (1 = no guidance)"),
        (["--temperature", "-0.5"], "ssmttm: error: --temperature -0.5: must be >= 0 (0 = greedy)"),
        (["--top-k", "-3"], "ssmttm: error: --top-k -3: must be >= 0 (0 = off)"),
        (["--top-p", "1.5"], "ssmttm: error: --top-p 1.5: must be in [0, 1] (0 = off)"),
        (["--top-p", "nan"], "ssmttm: error: --top-p nan: must be in [0, 1] (0 = off)"),
        (["--cfg", "2", "--top-k", "-3"], "ssmttm: error: --top-k -3: must be >= 0 (0 = off)"),
    ]
    for flags, message in cases:
        assert one_line_error(capsys, ["generate", "piano", *loaded, *flags, *out]) == message
    assert loads == []  # checked before loading anything
    assert list(tmp_path.iterdir()) == []


def test_several_positional_prompts_are_refused_with_how_to_quote(loaded, loads, tmp_path, capsys):
    argv = ["generate", "calm", "piano", "with", "strings", *loaded, "-o", str(tmp_path / "x.wav")]
    err = one_line_error(capsys, argv)
    assert '"calm piano with strings"' in err and "quote" in err and "--prompts-file" in err
    assert loads == [] and list(tmp_path.iterdir()) == []


def test_a_clip_as_long_as_the_duration_is_told_so_with_its_real_length(loaded, loads, model, tmp_path, capsys):
    rate = model.sample_rate
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.full(2 * rate, 0.1, np.float32), rate)  # exactly 2 s: 2.02 s in whole codec frames
    out = ["-o", str(tmp_path / "x.wav")]
    err = one_line_error(capsys, ["generate", "more", *loaded, "--continue-from", str(clip), "--duration", "2", *out])
    assert err == (
        f"ssmttm: error: --continue-from {clip} is 2 s, as long as --duration 2, which counts the clip: "
        "for 2 s more, use --duration 4"
    )
    err = one_line_error(capsys, ["generate", "more", *loaded, "--continue-from", str(clip), "--duration", "1.5", *out])
    assert f"{clip} is 2 s, longer than --duration 1.5" in err
    assert loads == []


# -- what a run says and leaves ------------------------------------------------------------------


def test_ctrl_c_keeps_the_finished_prompts_and_exits_130(loaded, model, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("second\nthird\n")
    real = TextToMusic.generate
    calls: list[str] = []

    def interrupted_at_the_second(self, prompts, *args, **kwargs):
        calls.append(prompts[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, prompts, *args, **kwargs)

    monkeypatch.setattr(TextToMusic, "generate", interrupted_at_the_second)
    out = tmp_path / "out.wav"
    argv = ["generate", "first", "--prompts-file", str(prompts), *loaded, "--duration", "1", "-o", str(out)]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 130
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == f"interrupted: {tmp_path / 'out_0.wav'} written"
    assert "Traceback" not in captured.err
    assert f"generating 1 s -> {tmp_path / 'out_1.wav'}" in captured.out  # said before it began
    assert calls == ["first", "second"]  # the quoted prompt first, then the file's
    assert json.loads((tmp_path / "out_0.wav.json").read_text())["prompt"] == "first"
    assert sf.info(str(tmp_path / "out_0.wav")).frames == model.sample_rate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_0.wav", "out_0.wav.json", "prompts.txt"]


def test_ctrl_c_while_streaming_leaves_a_playable_partial(loaded, model, tmp_path, capsys, monkeypatch):
    real = TextToMusic.stream
    written = []

    def two_chunks_then_ctrl_c(self, *args, **kwargs):
        for chunk in real(self, *args, **{**kwargs, "chunk_seconds": 0.5}):
            written.append(chunk.shape[-1])
            yield chunk
            if len(written) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(TextToMusic, "stream", two_chunks_then_ctrl_c)
    out = tmp_path / "out.wav"
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "piano", *loaded, "--duration", "2", "--stream", "-o", str(out)])
    assert exit_.value.code == 130
    partial = tmp_path / "out.wav.partial"
    captured = capsys.readouterr()
    assert f"writing {partial} (playable while it grows; renamed to {out} when done)" in captured.out
    seconds = sum(written) / model.sample_rate
    assert captured.err.splitlines()[-1] == f"interrupted: {partial} holds the first {seconds:.1f} s"
    with wave.open(str(partial)) as wav:  # the standard library's reader trusts the header alone
        assert wav.getnframes() == sum(written)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.wav.partial"]


def test_the_reported_time_leaves_out_the_kernel_build(loaded, tmp_path, capsys, monkeypatch):
    real = cpu_kernels.available
    calls = []

    build_s = 4.0  # as a first build would, shortened; generating 1 s takes well under it, even under load

    def slow_first_build() -> bool:
        if not calls:
            time.sleep(build_s)
        calls.append(1)
        return real()

    monkeypatch.setattr(cpu_kernels, "available", slow_first_build)
    out = tmp_path / "out.wav"
    assert main(["generate", "piano", *loaded, "--duration", "1", "-o", str(out)]) == 0
    assert calls  # the build was asked for
    assert json.loads((tmp_path / "out.wav.json").read_text())["generation_s"] < build_s


# -- --help ----------------------------------------------------------------------------------------


def test_help_shows_every_options_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = text[text.index("options:") :]
    # one block per option: its flags, then its help, until the next flag at the start of a line
    blocks = {m[1]: " ".join(m[2].split()) for m in re.finditer(r"^  (-[\w-]+)(.*?)(?=^  -|\Z)", options, re.M | re.S)}
    for flag in ["--prompts-file", "-o", "-h"]:  # nothing to default to: a file given, or the output
        blocks.pop(flag)
    assert {flag for flag, block in blocks.items() if "default" not in block} == set()
    assert "(default: 10)" in blocks["--duration"] and "(default: 0)" in blocks["--seed"]
    assert "the demo's is 3" in blocks["--cfg"] and "the demo's is 250" in blocks["--top-k"]
