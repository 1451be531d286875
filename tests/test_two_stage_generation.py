"""Two-stage generation end to end with tiny random models: stage 1 (a K=1 LM) decodes codebook 0,
stage 2 renders the rest window by window, and the codec decodes the latents. Streams equal whole
renders, seeds behave, folders pair and refuse as they should, and bad settings are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from test_pipeline import LONG_FORM  # the same script, run on a two-stage folder

from ssmttm.cli import main
from ssmttm.diffusion import DenoiserConfig, Stage2Config, Stage2Model
from ssmttm.diffusion.pretrained import save_stage2
from ssmttm.generation.pipeline import GenerationError, TextToMusic
from ssmttm.generation.stage2_renderer import Stage2Renderer
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import save_pretrained

TINY = ["backbone.d_model=32", "backbone.n_layers=2", "backbone.mlp_hidden=64", "backbone.mamba2.headdim=16"]
WINDOW, OVERLAP = 40, 10  # frames: 1 s of audio makes 44 frames, so 2 s is three windows


def stage2_model(seed: int = 0) -> Stage2Model:
    torch.manual_seed(seed)
    cfg = Stage2Config(
        denoiser=DenoiserConfig(latent_dim=89, text_dim=384, d_model=32, n_layers=2, n_heads=2),
        steps=3,
        cfg_scale=2.0,
        window_frames=WINDOW,
        overlap_frames=OVERLAP,
    )
    model = Stage2Model(cfg)
    for name, param in model.named_parameters():  # adaLN-Zero starts at 0: make every path count
        if "modulation" in name or "out_proj" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.set_statistics(torch.full((89,), 0.1), torch.full((89,), 0.05))
    return model.eval()


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-stage")
    torch.manual_seed(0)
    lm = MusicLM(load_preset("tiny-simba", [*TINY, "num_codebooks=1"]))
    save_stage2(stage2_model(), folder / "stage2", codec="embedded", text_encoder="minilm", trained_steps=7)
    save_pretrained(lm, folder, codec="embedded", text_encoder="minilm", stage2="stage2")
    return folder


@pytest.fixture(scope="module")
def model(two_stage) -> TextToMusic:
    return TextToMusic.from_pretrained(two_stage)


def test_a_two_stage_folder_loads_with_its_stage2_and_the_whole_codec(model):
    assert model.two_stage and isinstance(model.renderer, Stage2Renderer)
    assert model.lm.cfg.num_codebooks == 1 and model.codec.num_codebooks == 4  # stage 2 renders all four
    wav = model.generate("calm piano", duration=2.0, seed=0)
    assert wav.shape == (1, 1, 2 * model.sample_rate) and torch.isfinite(wav).all() and wav.abs().max() > 0


def test_a_stream_equals_the_whole_render(model):
    whole = model.generate(["calm piano", "fast drums"], duration=2.0, seed=3)
    chunks = list(model.stream(["calm piano", "fast drums"], duration=2.0, seed=3, chunk_seconds=0.3))
    assert len(chunks) >= 3  # a window at a time, not all at the end
    torch.testing.assert_close(torch.cat(chunks, dim=-1), whole, atol=1e-5, rtol=0)


def test_seeds_per_prompt_give_each_prompt_its_own_audio(model):
    pair = model.generate(["calm piano", "fast drums"], duration=1.0, seed=[5, 6])
    alone = model.generate(["fast drums"], duration=1.0, seed=[6])
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=0)
    assert not torch.equal(model.generate("calm piano", duration=1.0, seed=[7]), pair[:1])


def test_diffusion_settings_change_stage2_only_and_bad_ones_are_refused(model):
    codes = model.generate_codes("calm piano", duration=1.0, seed=1)
    few = model.generate("calm piano", duration=1.0, seed=1, diffusion_steps=1)
    assert torch.equal(model.generate_codes("calm piano", duration=1.0, seed=1), codes)
    assert not torch.equal(few, model.generate("calm piano", duration=1.0, seed=1))
    for bad, message in (({"diffusion_steps": 0}, "positive integer"), ({"diffusion_cfg": -1.0}, "finite and >= 0")):
        with pytest.raises(GenerationError, match=message):
            model.generate("calm piano", duration=1.0, **bad)


def test_it_saves_as_a_two_stage_folder_and_writes_files(model, tmp_path):
    again = TextToMusic.from_pretrained(model.save_pretrained(tmp_path / "copy"))
    assert again.two_stage and (tmp_path / "copy" / "stage2" / "model.safetensors").is_file()
    torch.testing.assert_close(
        again.generate("calm piano", duration=1.0, seed=2), model.generate("calm piano", duration=1.0, seed=2)
    )
    out = model.generate_to_file("calm piano", tmp_path / "out.flac", duration=2.0, seed=0)
    assert sf.info(str(out)).frames == 2 * model.sample_rate


def test_a_stage1_without_its_stage2_and_a_mismatched_stage2_are_refused(two_stage, tmp_path):
    broken = shutil.copytree(two_stage, tmp_path / "broken")
    shutil.rmtree(broken / "stage2")
    with pytest.raises(GenerationError, match="stage 1 of a two-stage model and its stage 2"):
        TextToMusic.from_pretrained(broken)
    TextToMusic.from_pretrained(broken, stage2=two_stage / "stage2")  # given by path, it pairs
    other = save_stage2(stage2_model(), tmp_path / "t5-stage2", codec="embedded", text_encoder="t5-base")
    with pytest.raises(GenerationError, match="trained for text encoder 't5-base'; stage 1 uses 'minilm'"):
        TextToMusic.from_pretrained(broken, stage2=other)
    (two_stage / "stage2").rename(tmp_path / "moved")
    try:
        shutil.copytree(tmp_path / "moved", broken / "stage2")
        (broken / "stage2" / "model.safetensors").write_bytes(b"junk")
        with pytest.raises(GenerationError, match="not a readable safetensors file"):
            TextToMusic.from_pretrained(broken)
    finally:
        (tmp_path / "moved").rename(two_stage / "stage2")


def test_the_cli_generates_two_stage_and_records_both_stages(two_stage, tmp_path, capsys):
    out = tmp_path / "a.wav"
    args = ["generate", "calm piano", "--model", str(two_stage), "--duration", "1", "-o", str(out)]
    assert main([*args, "--diffusion-steps", "2", "--diffusion-cfg", "1.5"]) == 0
    record = json.loads((tmp_path / "a.wav.json").read_text())
    assert record["stage2"]["steps"] == 2 and record["stage2"]["cfg_scale"] == 1.5
    assert record["stage2"]["window_frames"] == WINDOW and record["stage2"]["trained_steps"] == 7


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--diffusion-steps", "0"], "--diffusion-steps 0: must be at least 1"),
        (["--diffusion-cfg", "-2"], "diffusion guidance -2.0 must be finite"),
        (["--stage2", "/nonexistent/stage2"], "no stage-2 folder at /nonexistent/stage2"),
    ],
)
def test_bad_two_stage_options_are_one_line_and_exit_2(two_stage, tmp_path, capsys, extra, message):
    args = ["generate", "calm piano", "--model", str(two_stage), "--duration", "1", "-o", str(tmp_path / "a.wav")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_single_stage_model_given_diffusion_steps_is_a_clear_error(tmp_path, capsys):
    args = ["generate", "calm piano", "--duration", "1", "-o", str(tmp_path / "a.wav"), "--diffusion-steps", "4"]
    assert main(args) == 2  # the shipped demo model is single-stage
    err = capsys.readouterr().err.strip()
    assert "is a single-stage model: diffusion steps and guidance apply to two-stage models only" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow  # 330 s of audio through both stages: about a minute
def test_two_stage_long_form_memory_does_not_grow_with_duration(two_stage, tmp_path):
    peaks = {}
    for seconds in (30, 300):
        out = tmp_path / f"{seconds}.flac"
        done = subprocess.run(
            [sys.executable, "-c", LONG_FORM, str(two_stage), str(out), str(seconds)],
            capture_output=True,
            text=True,
            check=True,
            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        )
        peaks[seconds] = int(done.stdout.split()[-1])  # KiB
        assert sf.info(str(out)).duration == pytest.approx(seconds, abs=0.01)
    # 300 s of latents held would add 300 * 43 * 89 * 4 bytes = 4.6 MB, the audio 26 MB more
    assert abs(peaks[300] - peaks[30]) < 0.05 * peaks[30], peaks


def test_a_two_stage_model_continues_a_clip(model):
    clip = model.generate("calm piano", duration=1.0, seed=4)[0].numpy()  # (1, N)
    wav = model.generate("calm piano", duration=2.0, seed=5, continuation=clip, continuation_rate=model.sample_rate)
    assert wav.shape == (1, 1, 2 * model.sample_rate) and torch.isfinite(wav).all()
    # the continuation's codebook 1 leads the codes that stage 2 renders
    codes = model.generate_codes("calm piano", 2.0, seed=5, continuation=clip, continuation_rate=model.sample_rate)
    encoded = model.codec.encode(torch.from_numpy(clip)[None], model.sample_rate)[:, :1]
    assert torch.equal(codes[..., : encoded.shape[-1]], encoded)
