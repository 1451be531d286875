"""Stage 2's exported folder: it round-trips, statistics included, and a broken one is one line."""

from __future__ import annotations

import json

import pytest
import torch
from test_diffusion_denoiser import DIM, inputs, randomised, tiny

from ssmttm.diffusion import Stage2Config, Stage2Model
from ssmttm.diffusion.pretrained import Stage2Error, load_stage2, read_stage2_config, save_stage2


@pytest.fixture
def saved(tmp_path):
    model = Stage2Model(Stage2Config(denoiser=tiny(), steps=7))
    model.denoiser = randomised(tiny())
    model.set_statistics(torch.arange(DIM, dtype=torch.float32), torch.full((DIM,), 2.0))
    folder = save_stage2(model, tmp_path / "stage2", codec="embedded", text_encoder="minilm", trained_steps=5)
    return model, folder


def test_a_saved_stage2_loads_as_it_was(saved):
    model, folder = saved
    loaded, config = load_stage2(folder)
    assert (config.codec, config.text_encoder, config.trained_steps, config.model.steps) == ("embedded", "minilm", 5, 7)
    x, t, coarse, text, mask = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, coarse, text, mask), model.eval()(x, t, coarse, text, mask))
    assert torch.equal(loaded.latent_mean, model.latent_mean) and not loaded.training


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda f: (f / "config.json").unlink(), "has no config.json"),
        (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda f: (f / "model.safetensors").write_bytes(b"junk"), "not a readable safetensors file"),
        (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
        (lambda f: (f / "config.json").write_text(json.dumps({"kind": "lm"})), "not a stage-2 config"),
        (lambda f: _edit(f, lambda c: c["model"]["denoiser"].update(d_model=64)), "does not match its config.json"),
        (lambda f: _edit(f, lambda c: c.pop("codec")), "missing codec"),
    ],
)
def test_a_broken_folder_is_one_line(saved, break_it, message):
    _, folder = saved
    break_it(folder)
    with pytest.raises(Stage2Error) as err:
        load_stage2(folder)
    assert message in str(err.value) and "\n" not in str(err.value)


def _edit(folder, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_the_config_alone_reads_without_the_weights(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    assert read_stage2_config(folder).model.denoiser == tiny()


def test_weights_stored_in_bf16_load_in_float32(saved):
    from safetensors.torch import load_file, save_file

    model, folder = saved
    path = folder / "model.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(path).items()}, path)  # half the bytes
    loaded, _ = load_stage2(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.testing.assert_close(loaded.latent_mean, model.latent_mean)
