"""The export format: save then load gives the same model, from plain files, and bad folders are one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_lm
from safetensors.torch import load_file, save_file

from ssmttm.conditioning import Conditioning
from ssmttm.config import SamplingConfig, to_dict
from ssmttm.lm import MusicLM
from ssmttm.presets import load_preset
from ssmttm.pretrained import (
    CONFIG,
    WEIGHTS,
    PretrainedError,
    load_pretrained,
    read_config,
    save_pretrained,
)


def _logits(model: MusicLM, seed: int = 0) -> torch.Tensor:
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, cfg.cardinality, (2, cfg.num_codebooks, 7), generator=gen)
    text = torch.randn(2, 5, cfg.text_dim, generator=gen)
    mask = torch.tensor([[False, True, True, True, True], [True] * 5])
    with torch.no_grad():
        return model(seq, Conditioning(text, mask))


def _save(model: MusicLM, directory, **kwargs):
    return save_pretrained(model, directory, codec="embedded", text_encoder="minilm", **kwargs)


@pytest.fixture
def saved(tmp_path):
    model = tiny_lm("simba")
    _save(model, tmp_path / "export")
    return tmp_path / "export", model


@pytest.mark.parametrize("preset", ["tiny-simba", "tiny-transformer", "tiny-simba3", "tiny-mamba3"])
def test_round_trip_gives_identical_logits(tmp_path, preset):
    torch.manual_seed(0)
    model = MusicLM(load_preset(preset)).eval()
    _save(model, tmp_path / "export")
    loaded, config = load_pretrained(tmp_path / "export")
    assert not loaded.training
    assert config.model == model.cfg
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_bf16_storage_halves_the_file_and_loads_to_nearly_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = MusicLM(load_preset("tiny-simba")).eval()
    full, half = _save(model, tmp_path / "fp32"), _save(model, tmp_path / "bf16", storage="bfloat16")
    stored = load_file(half / WEIGHTS)
    matrices = {k for k, t in model.state_dict().items() if t.ndim >= 2}
    assert matrices and all(stored[k].dtype == torch.bfloat16 for k in matrices)
    assert all(t.dtype == torch.float32 for k, t in stored.items() if k not in matrices)  # A, D, norms, biases
    assert (half / WEIGHTS).stat().st_size < 0.6 * (full / WEIGHTS).stat().st_size
    loaded, _ = load_pretrained(half, dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in loaded.state_dict().values() if t.is_floating_point())
    expected, got = _logits(model), _logits(loaded)
    assert not torch.equal(got, expected)  # the matrices were rounded
    torch.testing.assert_close(got, expected, atol=0.05 * expected.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="not one of float32, bfloat16"):
        _save(model, tmp_path / "bad", storage="float16")


@pytest.mark.parametrize("kind", ["mamba", "mamba2", "simba3", "mamba3"])
def test_round_trip_with_cross_attention(tmp_path, kind):
    model = tiny_lm(kind, conditioning="cross")
    loaded, _ = load_pretrained(_save(model, tmp_path / "export"))
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_folder_holds_two_plain_files(saved):
    directory, model = saved
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG, WEIGHTS]  # no temporary files left behind
    data = json.loads((directory / CONFIG).read_text())
    assert {"format_version", "model", "codec", "text_encoder", "generation"} <= set(data)
    assert data["model"] == to_dict(model.cfg)
    assert (data["codec"], data["text_encoder"]) == ("embedded", "minilm")
    assert data["generation"] == {"cfg_scale": 3.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0}
    weights = load_file(directory / WEIGHTS)
    assert weights.keys() == model.state_dict().keys()


def test_loading_needs_no_pickle(saved, monkeypatch):
    directory, model = saved

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded, _ = load_pretrained(directory)
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_generation_defaults_and_provenance_round_trip(tmp_path):
    generation = SamplingConfig(cfg_scale=5.0, temperature=0.8, top_k=0)
    _save(tiny_lm(), tmp_path, generation=generation, trained_steps=1234, source="runs/simba")
    config = read_config(tmp_path)
    assert config.generation == generation
    assert (config.trained_steps, config.source, config.format_version) == (1234, "runs/simba", 1)


def test_dtype_and_saved_dtype(tmp_path):
    _save(tiny_lm().to(torch.bfloat16), tmp_path)
    model, _ = load_pretrained(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # as saved
    model, _ = load_pretrained(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_saving_again_replaces_the_export(tmp_path):
    _save(tiny_lm(seed=0), tmp_path)
    second = tiny_lm("transformer", seed=1)
    _save(second, tmp_path)
    loaded, config = load_pretrained(tmp_path)
    assert config.model.backbone.kind == "transformer"
    torch.testing.assert_close(_logits(loaded), _logits(second), rtol=0, atol=0)


def _edit_config(directory, edit):
    path = directory / CONFIG
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _swap_weights(directory, **overrides):
    """Replace the weights with those of a model whose config differs by `overrides`."""
    other = tiny_lm("simba", **overrides)
    save_file(other.state_dict(), directory / WEIGHTS)


BROKEN = {
    "no folder": (lambda d: d.rename(d.with_name("gone")), "no model folder"),
    "no config": (lambda d: (d / CONFIG).unlink(), "has no config.json"),
    "no weights": (lambda d: (d / WEIGHTS).unlink(), "has no model.safetensors"),
    "bad json": (lambda d: (d / CONFIG).write_text('{"model": '), "not valid JSON"),
    "not an object": (lambda d: (d / CONFIG).write_text("[1, 2]"), "expected a JSON object"),
    "newer format": (lambda d: _edit_config(d, lambda c: c.update(format_version=2)), "newer than this ssmttm"),
    "no format": (lambda d: _edit_config(d, lambda c: c.pop("format_version")), "format_version None"),
    "unknown key": (lambda d: _edit_config(d, lambda c: c["model"]["backbone"].update(widht=3)), "widht"),
    "bad value": (
        lambda d: _edit_config(d, lambda c: c["model"]["backbone"].update(kind="lstm")),
        "model.backbone: unknown backbone kind 'lstm'; choose one of: simba",
    ),
    "missing key": (lambda d: _edit_config(d, lambda c: c.pop("codec")), "missing key codec"),
    "bad generation": (
        lambda d: _edit_config(d, lambda c: c["generation"].update(top_k=-1)),
        "generation: sampling top_k -1 is out of range: must be >= 0 (0 = off)",
    ),
    "corrupt weights": (lambda d: (d / WEIGHTS).write_bytes(b"not a safetensors file"), "not a readable safetensors"),
    "other layers": (
        lambda d: _swap_weights(d, num_codebooks=4),
        "does not match its config.json: unexpected embeddings.3.weight, heads.3.weight",
    ),
    "other shapes": (
        lambda d: _swap_weights(d, cardinality=12),
        "does not match its config.json: wrong shape: embeddings.0.weight (13, 32) (expected (12, 32))",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_export_is_a_one_line_error(saved, case):
    directory, _ = saved
    breaks, message = BROKEN[case]
    breaks(directory)
    with pytest.raises(PretrainedError) as err:
        load_pretrained(directory)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_keys_are_named(saved):
    directory, model = saved
    state = model.state_dict()
    del state["null_embedding"], state["text_proj.weight"]
    save_file(state, directory / WEIGHTS)
    with pytest.raises(PretrainedError, match=r"missing null_embedding, text_proj\.weight"):
        load_pretrained(directory)


def test_uncached_hub_id_offline_fails_fast_saying_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedError) as err:
        load_pretrained("nobody-here/no-such-ssmttm-model")
    message = str(err.value)
    assert "not in the Hugging Face cache" in message
    assert "hf download nobody-here/no-such-ssmttm-model --local-dir DIR" in message
    assert "\n" not in message


def test_cached_hub_id_loads_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someone--tiny-simba"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    model = tiny_lm()
    _save(model, repo / "snapshots" / "abc123")
    loaded, config = load_pretrained("someone/tiny-simba")
    assert config.codec == "embedded"
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_a_shipped_model_loads_by_name_and_a_local_folder_of_that_name_wins(tmp_path, monkeypatch):
    from ssmttm import DEMO_MODEL
    from ssmttm.pretrained import resolve, shipped_models

    assert "demo" in shipped_models() and resolve("demo") == DEMO_MODEL
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedError, match=r"no model folder at dmeo: .* a shipped model \(demo"):
        resolve("dmeo")
    _save(tiny_lm(), tmp_path / "demo")
    assert resolve("demo") == Path("demo")


def test_a_hub_download_fetches_a_two_stage_models_stage2_too(monkeypatch):
    import huggingface_hub

    asked = {}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("ssmttm.pretrained._cached_snapshot", lambda _: None)
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, allow_patterns: asked.update(p=allow_patterns) or "."
    )
    from ssmttm.pretrained import resolve

    resolve("someone/two-stage")
    assert set(asked["p"]) == {WEIGHTS, CONFIG, "stage2/*"}
